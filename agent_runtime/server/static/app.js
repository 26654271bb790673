// Browser client for agent-runtime serve: microphone -> agent over WebRTC, agent audio back,
// live transcript and per-turn latency from the server's "events" data channel.
// window.agentCall exposes the call's state (used by the automated browser test).
"use strict";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const state = {
  status: "idle", sessionId: null, events: [], userTexts: [], agentTexts: [], turns: [], latency: [],
  audio: { peak: 0, audibleMs: 0, packetsReceived: 0, totalAudioEnergy: 0 }, error: null,
};
window.agentCall = state;
let pc = null;
let meterTimer = null;

function setStatus(text, status) {
  $("status").textContent = text;
  if (status) state.status = status;
}

function token() {
  const t = $("token").value || params.get("token") || sessionStorage.getItem("agentToken") || "";
  if (t) sessionStorage.setItem("agentToken", t);
  return t;
}

let pendingCaller = null;  // the caller's line of the turn in progress (updated as ASR revises it)

function addLine(who, text, interrupted) {
  const li = document.createElement("li");
  li.className = who + (interrupted ? " interrupted" : "");
  li.textContent = text;
  $("transcript").appendChild(li);
  li.scrollIntoView({ block: "nearest" });
  return li;
}

function showLatency(t) {
  const s = t.stages_ms || {};
  const cell = (v) => (v === null || v === undefined ? "-" : Math.round(v) + " ms");
  const body = $("latency").querySelector("tbody");
  let row = body.querySelector(`tr[data-turn="${t.turn_id}"]`);
  if (!row) {
    row = document.createElement("tr");
    row.dataset.turn = t.turn_id;
    body.appendChild(row);
  }
  row.replaceChildren();
  for (const v of [t.turn_id, cell(t.voice_to_voice_ms), cell(s.asr_final), cell(s.llm_first_token),
    cell(s.tts_first_audio), cell(s.end_of_turn), cell(s.first_audio_out)]) {
    const td = document.createElement("td");
    td.textContent = v;
    row.appendChild(td);
  }
}

function onEvent(ev) {
  state.events.push(ev);
  switch (ev.kind) {
    case "session": state.sessionId = ev.session_id; break;
    case "user_text":
      state.userTexts.push(ev.text);
      if (pendingCaller) { pendingCaller.textContent = ev.text; } else { pendingCaller = addLine("caller", ev.text, false); }
      break;
    case "premature_reply_dropped":
      break;  // the caller kept talking: the pending line is updated with the whole turn later
    case "latency":  // sent when the agent's first audio leaves: the turn's latency, live
      state.latency.push(ev);
      showLatency(ev);
      break;
    case "turn":
      state.turns.push(ev);
      pendingCaller = null;
      if (ev.agent_text) { addLine("agent", ev.agent_text, ev.interrupted); state.agentTexts.push(ev.agent_text); }
      showLatency(ev);
      break;
    case "state":
      if (ev.state === "speaking") pendingCaller = null;
      if (state.status === "connected") setStatus("In call: " + ev.state.replace("_", " "));
      break;
    case "barge_in":
      if (ev.phase === "interrupt") setStatus("In call: you interrupted the agent");
      break;
  }
}

function startMeter(stream) {
  const ctx = new AudioContext();
  ctx.resume().catch(() => {});
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  ctx.createMediaStreamSource(stream).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  meterTimer = setInterval(async () => {
    analyser.getFloatTimeDomainData(buf);
    let peak = 0;
    for (const x of buf) peak = Math.max(peak, Math.abs(x));
    state.audio.peak = Math.max(state.audio.peak, peak);
    if (peak > 0.02) state.audio.audibleMs += 50;
    $("level").style.width = Math.min(200, Math.round(peak * 400)) + "px";
    if (!pc) return;
    const stats = await pc.getStats();
    stats.forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "audio") {
        state.audio.packetsReceived = r.packetsReceived || 0;
        state.audio.totalAudioEnergy = r.totalAudioEnergy || 0;
      }
    });
  }, 50);
}

async function waitIceGathering(conn) {
  if (conn.iceGatheringState === "complete") return;
  await new Promise((resolve) => {
    const check = () => { if (conn.iceGatheringState === "complete") resolve(); };
    conn.addEventListener("icegatheringstatechange", check);
    setTimeout(resolve, 3000);  // send what we have; host candidates come first
  });
}

// The server's configured STUN/TURN servers (none on loopback).
async function iceServers() {
  const headers = {};
  const t = token();
  if (t) headers.Authorization = "Bearer " + t;
  try {
    const r = await fetch("/ice", { headers });
    if (r.ok) return (await r.json()).iceServers || [];
  } catch (e) { console.warn("no ICE configuration", e); }
  return [];
}

async function call() {
  $("call").disabled = true;
  setStatus("Asking for the microphone...", "starting");
  try {
    const mic = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    pc = new RTCPeerConnection({ iceServers: await iceServers() });
    const channel = pc.createDataChannel("events");
    channel.onmessage = (m) => { try { onEvent(JSON.parse(m.data)); } catch (e) { console.warn(e); } };
    mic.getTracks().forEach((t) => pc.addTrack(t, mic));
    pc.ontrack = (e) => {
      const stream = e.streams[0] || new MediaStream([e.track]);
      $("agent-audio").srcObject = stream;
      $("agent-audio").play().catch(() => {});
      startMeter(stream);
    };
    pc.onconnectionstatechange = () => {
      if (pc && pc.connectionState === "connected") setStatus("In call: speak now", "connected");
      if (pc && ["failed", "closed"].includes(pc.connectionState)) hangUp("Call ended (" + pc.connectionState + ")");
    };
    await pc.setLocalDescription(await pc.createOffer());
    await waitIceGathering(pc);
    setStatus("Connecting...");
    const headers = { "Content-Type": "application/json" };
    const t = token();
    if (t) headers.Authorization = "Bearer " + t;
    const r = await fetch("/offer", { method: "POST", headers,
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }) });
    const body = await r.json().catch(() => ({ error: "bad reply from the server" }));
    if (r.status === 401) $("token-row").hidden = false;
    if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
    state.sessionId = body.session_id;
    await pc.setRemoteDescription({ sdp: body.sdp, type: body.type });
    $("call").textContent = "Hang up";
    $("call").classList.add("active");
    $("call").disabled = false;
  } catch (err) {
    state.error = String(err.message || err);
    hangUp("Could not call: " + state.error, "error");
  }
}

function hangUp(message, status) {
  if (meterTimer) { clearInterval(meterTimer); meterTimer = null; }
  if (pc) {
    pc.getSenders().forEach((s) => s.track && s.track.stop());
    const old = pc;
    pc = null;
    old.close();
  }
  $("call").textContent = "Call";
  $("call").classList.remove("active");
  $("call").disabled = false;
  setStatus(message || "Call ended.", status || "ended");
}

$("call").addEventListener("click", () => (pc ? hangUp() : call()));
if (params.get("token")) $("token").value = params.get("token");
if (params.get("autostart") === "1") call();
