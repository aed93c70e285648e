"""Fixtures for the client tests: the scripted protocol v1 server (:mod:`tests.clients.scripted_server`),
test audio, TLS certificates, Chromium, and a real rechka server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pytest

from tests.clients.scripted_server import Script, ScriptedServer, write_counting_wav


@pytest.fixture
def counting_wav(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A factory: ``counting_wav(seconds, channels=1)`` writes a WAV of :func:`write_counting_wav`."""
    def make(seconds: int, channels: int = 1, name: str = "counting.wav") -> Path:
        return write_counting_wav(tmp_path / name, seconds, channels)

    return make


@pytest.fixture(scope="session")
def tls_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (openssl); skips when openssl is absent."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def scripted_server() -> Iterator:
    """A factory: ``scripted_server(**Script fields)`` starts a server that is closed after the test."""
    servers: list[ScriptedServer] = []

    def make(**script: object) -> ScriptedServer:
        server = ScriptedServer(Script(**script))  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


# --------------------------------------------------------------------------------------------- browser
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--use-fake-ui-for-media-stream",
                 "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required"]


def pad_wav(source: Path, target: Path, before: float = 0.3, after: float = 0.5) -> Path:
    """``source`` with silence before and after (Chromium's fake microphone starts and ends abruptly)."""
    with wave.open(str(source)) as w:
        params, data = w.getparams(), w.readframes(w.getnframes())
    frame = params.sampwidth * params.nchannels
    with wave.open(str(target), "wb") as w:
        w.setparams(params)
        w.writeframes(b"\0" * frame * int(before * params.framerate) + data
                      + b"\0" * frame * int(after * params.framerate))
    return target


@pytest.fixture
def launch_chromium(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A factory: ``launch_chromium(wav=None)`` starts headless Chromium whose microphone plays ``wav`` once
    (padded by :func:`pad_wav`) and returns the Browser; everything is closed after the test. Skips when
    ``/usr/bin/chromium`` is absent."""
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (/usr/bin/chromium)")
    from playwright.sync_api import sync_playwright

    started: list = []  # the Playwright instance, started on first use
    browsers = []

    def launch(wav: Optional[Path] = None):  # type: ignore[no-untyped-def]
        if not started:
            started.append(sync_playwright().start())
        args = list(CHROMIUM_ARGS)
        if wav is not None:
            padded = pad_wav(wav, tmp_path / f"mic-{len(browsers)}-{wav.name}")
            args.append(f"--use-file-for-fake-audio-capture={padded}%noloop")
        browser = started[0].chromium.launch(executable_path=str(CHROMIUM), args=args)
        browsers.append(browser)
        return browser

    yield launch
    for browser in browsers:
        browser.close()
    if started:
        started[0].stop()


# --------------------------------------------------------------------------------------------- real server
REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO / "tests" / "assets" / "tiny_gigaam_ctc.ckpt"
SCREENSHOTS = os.environ.get("RECHKA_SCREENSHOTS") == "1"


@dataclass
class RealServer:
    url: str  # ws://…/v1/stream
    http: str  # http://host:port
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def rechka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    """One real server for the session (``python -m server`` with the tiny GigaAM checkpoint on CPU).

    Skips when the checkpoint is absent; fails with the server's log when it does not become ready. Set
    ``RECHKA_TEST_SERVER=http://host:port`` to use a server that is already running instead.
    """
    running = os.environ.get("RECHKA_TEST_SERVER")
    if running:
        base = running.rstrip("/")
        yield RealServer(base.replace("http", "ws", 1) + "/v1/stream", base, Path(os.devnull))
        return
    if not CHECKPOINT.is_file():
        pytest.skip(f"{CHECKPOINT.relative_to(REPO)} is absent (train it with scripts/train_tiny_gigaam.py)")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("rechka-server") / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECHKA_")}  # no tokens/TLS from the shell
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port),
                                 "--asr-model", str(CHECKPOINT), "--device", "cpu"],
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server was not ready in 300 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield RealServer(f"ws://127.0.0.1:{port}/v1/stream", f"http://127.0.0.1:{port}", log_path)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def speech_wav(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A factory: ``speech_wav([(text, voice), …], gap=0.8)`` speaks each text with espeak-ng (22.05 kHz) and
    joins them with ``gap`` seconds of silence; returns ``(path, [(start_s, end_s), …])`` of the spoken parts."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")

    def make(parts: list[tuple[str, str]], gap: float = 0.8, name: str = "speech.wav", speed: int = 150):
        pieces, spans, rate, t = [], [], 22050, 0.0
        for i, (text, voice) in enumerate(parts):
            raw = tmp_path / f"part{i}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text], check=True)
            with wave.open(str(raw)) as w:
                rate = w.getframerate()
                pieces.append(np.frombuffer(w.readframes(w.getnframes()), "<i2"))
            if i:
                pieces.insert(-1, np.zeros(int(gap * rate), "<i2"))
                t += gap
            spans.append((t, t + len(pieces[-1]) / rate))
            t = spans[-1][1]
        path = tmp_path / name
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(np.concatenate(pieces).tobytes())
        return path, spans

    return make


def screenshot_path(name: str, tmp_path: Path) -> Path:
    """``docs/img/<name>`` when ``RECHKA_SCREENSHOTS=1``, else a temporary file."""
    if SCREENSHOTS:
        target = REPO / "docs" / "img" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target
    return tmp_path / name


@pytest.fixture
def screenshot(tmp_path: Path):  # type: ignore[no-untyped-def]
    """``screenshot(name) -> Path`` where a test should save its screenshot (see :func:`screenshot_path`)."""
    return lambda name: screenshot_path(name, tmp_path)
