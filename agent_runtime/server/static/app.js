// Browser client for agent-runtime serve: microphone -> agent over WebRTC, agent audio back,
// live transcript and per-turn latency from the server's "events" data channel, and voice to voice
// measured here, at the caller's ear (see measureEar).
// window.agentCall exposes the call's state (used by the automated browser test).
"use strict";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const state = {
  status: "idle", sessionId: null, events: [], userTexts: [], agentTexts: [], turns: [], latency: [],
  audio: { peak: 0, audibleMs: 0, packetsReceived: 0, totalAudioEnergy: 0 }, error: null,
  ear: [],  // per reply: { turn_id, client_ms, server_ms } (client_ms measured on this page)
};
window.agentCall = state;
let pc = null;
let meterTimer = null;
let earTimer = null;
let audioCtx = null;
const serverV2V = {};  // turn_id -> the server's voice_to_voice_ms
const clientV2V = {};  // turn_id -> voice to voice measured on this page

// Voice to voice at the caller's ear: from the caller's last audible sound (the microphone's level,
// WebAudio AnalyserNode) to the first audible sample of the agent's received audio track. A reply's
// onset is agent audio after at least AGENT_QUIET_MS of quiet. Resolution: the 10 ms poll.
const CALLER_AUDIBLE_DBFS = -45;   // and at least 10 dB above the microphone's noise floor
const AGENT_AUDIBLE_PEAK = 300 / 32768;  // the load harness's measure.audible_peak
const AGENT_QUIET_MS = 300;
const ear = { mic: null, agent: null, micBuf: null, agentBuf: null, floorDb: -90, lastCaller: null,
  agentLastLoud: null, onsetPending: null };

function rmsDb(buf) {
  let sum = 0;
  for (const x of buf) sum += x * x;
  return 10 * Math.log10(sum / buf.length + 1e-12);
}

function earAnalyser(stream) {
  const a = audioCtx.createAnalyser();
  a.fftSize = 512;  // about 10 ms at 48 kHz: what the poll below sees each time
  audioCtx.createMediaStreamSource(stream).connect(a);
  return a;
}

function measureEar() {
  const now = performance.now();
  if (ear.mic) {
    ear.mic.getFloatTimeDomainData(ear.micBuf);
    const db = rmsDb(ear.micBuf);
    ear.floorDb = db < ear.floorDb ? db : ear.floorDb + 0.01;  // falls at once, creeps up
    if (db >= Math.max(CALLER_AUDIBLE_DBFS, ear.floorDb + 10)) ear.lastCaller = now;
  }
  if (ear.agent) {
    ear.agent.getFloatTimeDomainData(ear.agentBuf);
    let peak = 0;
    for (const x of ear.agentBuf) peak = Math.max(peak, Math.abs(x));
    if (peak > AGENT_AUDIBLE_PEAK) {
      const onset = ear.agentLastLoud === null || now - ear.agentLastLoud >= AGENT_QUIET_MS;
      if (onset && ear.lastCaller !== null && ear.lastCaller < now) {
        recordEar(Math.round(now - ear.lastCaller));
        ear.lastCaller = null;  // one reply per caller utterance
      }
      ear.agentLastLoud = now;
    }
  }
}

function recordEar(ms) {
  // The server's `latency` event for this reply was sent as its first audio left, so it usually came
  // first; if not, the figure waits for it.
  const last = state.latency[state.latency.length - 1];
  if (last && clientV2V[last.turn_id] === undefined) {
    setEar(last.turn_id, ms);
  } else {
    ear.onsetPending = ms;
  }
}

function setEar(turnId, ms) {
  clientV2V[turnId] = ms;
  state.ear.push({ turn_id: turnId, client_ms: ms, server_ms: serverV2V[turnId] ?? null });
  const row = $("latency").querySelector(`tr[data-turn="${turnId}"]`);
  if (row) row.children[1].textContent = ms + " ms";
}

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
  if (t.voice_to_voice_ms !== null && t.voice_to_voice_ms !== undefined) serverV2V[t.turn_id] = t.voice_to_voice_ms;
  for (const v of [t.turn_id, cell(clientV2V[t.turn_id]), cell(t.voice_to_voice_ms), cell(s.asr_final), cell(s.llm_first_token),
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
      if (ear.onsetPending !== null && clientV2V[ev.turn_id] === undefined) {
        setEar(ev.turn_id, ear.onsetPending);
        ear.onsetPending = null;
      }
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
  const ctx = audioContext();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  ctx.createMediaStreamSource(stream).connect(analyser);
  ear.agent = earAnalyser(stream);
  ear.agentBuf = new Float32Array(ear.agent.fftSize);
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

function audioContext() {
  if (!audioCtx) {
    audioCtx = new AudioContext();
    audioCtx.resume().catch(() => {});
  }
  return audioCtx;
}

function startEar(mic) {
  audioContext();
  ear.mic = earAnalyser(mic);
  ear.micBuf = new Float32Array(ear.mic.fftSize);
  earTimer = setInterval(measureEar, 10);
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
    startEar(mic);
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
  if (earTimer) { clearInterval(earTimer); earTimer = null; }
  ear.mic = ear.agent = null;
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
