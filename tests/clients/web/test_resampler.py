"""clients/web/resampler.js, the worklet's resampler, run in headless Chromium and (when installed) node.

The JavaScript only produces samples; every check is computed here with numpy: a 440 Hz tone comes out at 440 Hz
with its amplitude, block-by-block conversion equals one-piece conversion (state is kept), a tone above the new
Nyquist frequency is removed instead of aliasing, and PCM16 packing clips and rounds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

WEB = Path(__file__).resolve().parents[3] / "clients" / "web"

# Runs in either engine: `mod` is the imported module; returns plain arrays.
SCRIPT = """
(mod) => {
  const tone = (rate, freq, seconds, amp) => Float32Array.from({length: Math.round(rate * seconds)},
                                                          (_, i) => amp * Math.sin(2 * Math.PI * freq * i / rate));
  const run = (inRate, x, block) => {
    const r = new mod.StreamingResampler(inRate, 16000);
    const out = [];
    for (let i = 0; i < x.length; i += block) out.push(...r.process(x.subarray(i, i + block)));
    out.push(...r.flush());
    return out;
  };
  const a = tone(44100, 440, 1.0, 0.5);
  return {
    blocks: run(44100, a, 128),
    whole: run(44100, a, a.length),
    odd: run(44100, a, 37),
    high: run(48000, tone(48000, 9000, 0.5, 0.5), 128),
    voice: run(48000, tone(48000, 6500, 0.5, 0.5), 128),
    pcm: Array.from(mod.floatToPcm16(Float32Array.from([0, 0.5, -0.5, 1, -1, 1.7, -3, 0.00001]))),
  };
}
"""


def run_in_node() -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    code = (f"const mod = await import({json.dumps((WEB / 'resampler.js').as_uri())});"
            f"console.log(JSON.stringify(({SCRIPT})(mod)));")
    proc = subprocess.run([node, "--input-type=module", "-e", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def run_in_chromium(launch_chromium, scripted_server) -> dict:
    server = scripted_server(static_dir=WEB)
    page = launch_chromium().new_page()
    page.goto(server.url.replace("ws://", "http://").replace("/v1/stream", "/"))
    return page.evaluate(f"async () => ({SCRIPT})(await import('/static/resampler.js'))")


def peak_hz(x: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=8 * len(x)))
    return float(np.argmax(spectrum) * rate / (8 * len(x)))


_CACHE: dict[str, dict] = {}  # one run per engine serves every test of this module


@pytest.fixture(params=["chromium", "node"])
def results(request, launch_chromium, scripted_server) -> dict:  # type: ignore[no-untyped-def]
    if request.param not in _CACHE:
        _CACHE[request.param] = run_in_node() if request.param == "node" else run_in_chromium(
            launch_chromium, scripted_server)
    return _CACHE[request.param]


def test_tone_keeps_its_frequency_amplitude_and_length(results: dict) -> None:
    out = np.array(results["blocks"])
    assert len(out) == 16000  # 1 s in, 1 s out
    assert abs(peak_hz(out) - 440.0) < 0.5
    steady = out[800:-800]  # away from the kernel's ramp at the edges
    assert abs(np.sqrt(np.mean(steady ** 2)) - 0.5 / np.sqrt(2)) < 0.005


def test_state_is_kept_across_blocks(results: dict) -> None:
    whole = np.array(results["whole"])
    for key in ("blocks", "odd"):
        assert np.max(np.abs(np.array(results[key]) - whole)) < 1e-6


def test_anti_aliasing_removes_what_16k_cannot_hold(results: dict) -> None:
    high = np.array(results["high"])[800:-800]  # 9 kHz would alias to 7 kHz without the low-pass
    voice = np.array(results["voice"])[800:-800]  # 6.5 kHz is speech below 8 kHz and must pass unchanged
    assert np.sqrt(np.mean(high ** 2)) < 0.01 * 0.5 / np.sqrt(2)  # at least 40 dB down
    assert abs(np.sqrt(np.mean(voice ** 2)) - 0.5 / np.sqrt(2)) < 0.01
    assert abs(peak_hz(voice) - 6500) < 2


def test_pcm16_packing_clips_and_rounds(results: dict) -> None:
    assert results["pcm"] == [0, 16384, -16384, 32767, -32768, 32767, -32768, 0]
