"""The plugin package installs with pip, from the repository, alongside the runtime, in a new venv.

A fully clean venv would download torch, onnxruntime, CTranslate2 and the model wheels again (GBs),
so the new venv reuses this checkout's `.venv` packages through a `.pth` path entry (what
`--system-site-packages` does for a system interpreter) and pip installs `agent-runtime` and
`livekit-plugins-agent-runtime` from the repository into the venv itself, non-editable. The test
then imports the plugin from the new venv's own site-packages and checks it is registered. Both
source trees are copied to a temporary folder first, so the build leaves nothing in the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytest.importorskip("livekit.agents", reason="livekit-agents is not installed (deploy/setup.sh installs it)")

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "plugins" / "livekit-plugins-agent-runtime"

pytestmark = pytest.mark.slow


def _copy_sources(dest: Path) -> tuple[Path, Path]:
    """The runtime's and the plugin's package sources (no build outputs) under `dest`."""
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
    runtime = dest / "agent-runtime"
    runtime.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, runtime / name)
    for name in ("agent_runtime", "loadtest"):
        shutil.copytree(REPO / name, runtime / name, ignore=skip)
    plugin = dest / PLUGIN.name
    shutil.copytree(PLUGIN, plugin, ignore=skip)
    return runtime, plugin


def test_plugin_installs_into_a_new_venv(tmp_path: Path) -> None:
    runtime_src, plugin_src = _copy_sources(tmp_path / "src")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )
    (site / "zz_reuse_checkout_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-c", str(REPO / "deploy" / "constraints.txt"), str(runtime_src), str(plugin_src)],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    probe = (
        "import agent_runtime, livekit.plugins.agent_runtime as p; from livekit.agents import Plugin;"
        "print(agent_runtime.__file__); print(p.__file__);"
        "print([x.title for x in Plugin.registered_plugins]); print(p.TTS.__name__, p.STT.__name__, p.LLM.__name__)"
    )
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    runtime_file, plugin_file, registered, classes = out.stdout.strip().splitlines()
    assert runtime_file.startswith(str(site)) and plugin_file.startswith(str(site)), out.stdout
    assert "livekit.plugins.agent_runtime" in registered
    assert classes == "TTS STT LLM"
