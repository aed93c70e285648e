"""Fixtures for the client tests: a scripted protocol v1 server and helpers to write test audio.

The scripted server (:class:`ScriptedServer`) speaks protocol v1 with :mod:`streaming.wire` and "transcribes"
audio whose every second is a constant PCM value: for each full second received it sends a final whose text is that
value (``"1003"`` for the fourth second of a file written by :func:`write_counting_wav`), with session-relative
times. A client that resumes after a drop must therefore reproduce each second's value at the right absolute time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response

from streaming import wire

RATE = wire.SAMPLE_RATE
BASE_VALUE = 1000


def write_counting_wav(path: Path, seconds: int, channels: int = 1) -> Path:
    """A 16 kHz s16 WAV whose second ``k`` holds the constant value ``BASE_VALUE + k`` (channel ``c`` adds
    ``100 * c``)."""
    frames = np.repeat(np.arange(seconds, dtype=np.int16) + BASE_VALUE, RATE)
    data = np.stack([frames + 100 * c for c in range(channels)], axis=1).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(data.tobytes())
    return path


@dataclass
class Script:
    """What the scripted server does. Connections are numbered from 0 in arrival order.

    http_status: per connection, an HTTP status to refuse the handshake with (plus ``retry_after``).
    drop_after: per connection, close after this many seconds of audio with ``drop_code`` (None: abort TCP).
    close_on_start: per connection, answer ``start`` with an error event and this close code.
    token: required bearer token (header or ``?token=``), if set.
    static_dir: serve ``/`` and ``/static/<file>`` from here (as the real server serves ``clients/web``).
    revise: on ``stop``, before ``end``, send a ``speaker_revision`` for every final sent (single channel): its
        word's speaker swapped (``S1`` ↔ ``S2``), as diarization settling late would.
    merge: on ``stop``, before ``end`` (after the revisions), send a ``speaker_merge`` of ``S1`` into ``S2``, as
        diarization finding that one voice had two labels would (the label kept is the one with more speech).
    """

    http_status: dict[int, int] = field(default_factory=dict)
    retry_after: Optional[str] = None
    drop_after: dict[int, float] = field(default_factory=dict)
    drop_code: Optional[int] = 1011
    close_on_start: dict[int, int] = field(default_factory=dict)
    token: Optional[str] = None
    static_dir: Optional[Path] = None
    tls: Optional[tuple[Path, Path]] = None  # (certificate, key): serve wss://
    revise: bool = False
    merge: bool = False


class ScriptedServer:
    """A protocol v1 server in a background thread; ``url`` is its stream URL; ``starts`` the start messages.

    Audio is read as the ``start`` says (s16 or μ-law bytes, any rate); a "second" is ``sample_rate`` frames and
    its value is its first frame's sample (the raw byte for μ-law). Times sent are samples at 16 kHz.
    """

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.starts: list[dict] = []
        self.audio_bytes: dict[int, int] = {}  # connection index → audio bytes received
        self.audio: dict[int, bytes] = {}  # connection index → the audio itself
        self.headers: list[Headers] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: Optional[asyncio.Future] = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("scripted server did not start")
        self.url = f"{'wss' if script.tls else 'ws'}://127.0.0.1:{self.port}/v1/stream"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop = self._loop.create_future()
        context = None
        if self.script.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*map(str, self.script.tls))
        async with serve(self._handle, "127.0.0.1", 0, process_request=self._process_request,
                         ssl=context) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop

    def close(self) -> None:
        self._loop.call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))  # type: ignore
        self._thread.join(10)

    def _process_request(self, connection: ServerConnection, request) -> Optional[Response]:  # type: ignore
        path, _, query = request.path.partition("?")
        if path != "/v1/stream":
            return self._static(path)
        index = self.connections
        self.connections += 1
        connection.index = index  # type: ignore[attr-defined]
        self.headers.append(request.headers)
        status = self.script.http_status.get(index)
        if status is None and self.script.token is not None \
                and request.headers.get("Authorization") != f"Bearer {self.script.token}" \
                and f"token={self.script.token}" not in query.split("&"):
            status = 401
        if status is None:
            return None
        headers = Headers([("Content-Type", "text/plain")])
        if self.script.retry_after is not None:
            headers["Retry-After"] = self.script.retry_after
        return Response(status, "refused", headers, b"scripted refusal\n")

    def _static(self, path: str) -> Response:
        types = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
        root = self.script.static_dir
        name = "index.html" if path == "/" else path.removeprefix("/static/")
        file = (root / name) if root is not None and "/" not in name else None
        if file is None or not file.is_file():
            return Response(404, "Not Found", Headers([("Content-Length", "0")]), b"")
        body = file.read_bytes()
        return Response(200, "OK", Headers([("Content-Type", types.get(file.suffix, "text/plain")),
                                            ("Content-Length", str(len(body)))]), body)

    async def _handle(self, ws: ServerConnection) -> None:
        index = ws.index  # type: ignore[attr-defined]
        start = json.loads(await ws.recv())
        self.starts.append(start)
        if index in self.script.close_on_start:
            await ws.send(wire.dump_event(wire.Error("unsupported_format", "scripted: bad format")))
            await ws.close(self.script.close_on_start[index], "scripted: bad format")
            return
        channels = int(start.get("channels", 1))
        rate = int(start.get("sample_rate", RATE))
        mulaw = start.get("encoding") == "mulaw"
        session = f"s{index}"
        await ws.send(wire.dump_event(wire.Ready(session, start, {"asr": {"name": "scripted"}})))
        pending = bytearray()
        everything = bytearray()
        received = 0  # bytes
        utterance = 0
        second = 0  # session-relative index of the next full second
        drop_at = self.script.drop_after.get(index)
        frame = (1 if mulaw else 2) * channels
        block_bytes = rate * frame
        sent: list[wire.Final] = []
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    pending += message
                    everything += message
                    received += len(message)
                    while len(pending) >= block_bytes:
                        raw = bytes(pending[:block_bytes])
                        block = np.frombuffer(raw, np.uint8 if mulaw else "<i2").reshape(-1, channels)
                        del pending[:block_bytes]
                        for c in range(channels):
                            await ws.send(wire.dump_event(wire.Partial(utterance, c, second * RATE,
                                                                       second * RATE + RATE // 2, "…")))
                            speaker = f"ch{c}" if channels > 1 else f"S{1 + int(block[0, c]) % 2}"
                            final = wire.Final(
                                utterance, c, second * RATE, (second + 1) * RATE, str(int(block[0, c])),
                                (wire.WordTiming(str(int(block[0, c])), second * RATE, (second + 1) * RATE,
                                                 speaker),), speaker)
                            sent.append(final)
                            await ws.send(wire.dump_event(final))
                            utterance += 1
                        second += 1
                    if drop_at is not None and received >= drop_at * block_bytes:
                        if self.script.drop_code is None:
                            ws.transport.abort()
                            return
                        # close, but keep reading (as a real server does) so the client's close reply is seen
                        closing = asyncio.ensure_future(ws.close(self.script.drop_code, "scripted drop"))
                        async for _ in ws:
                            pass
                        await closing
                        return
                else:
                    kind = json.loads(message).get("type")
                    if kind == "stop":
                        samples = received // frame * RATE // rate
                        self.audio_bytes[index] = received  # recorded before the client can see the end
                        self.audio[index] = bytes(everything)
                        for final in sent if self.script.revise and channels == 1 else ():
                            other = {"S1": "S2", "S2": "S1"}[final.speaker or "S1"]
                            words = tuple(dataclasses.replace(w, speaker=other) for w in final.words)
                            await ws.send(wire.dump_event(wire.SpeakerRevision(final.utterance_id, 0, words, other)))
                        if self.script.merge:
                            await ws.send(wire.dump_event(wire.SpeakerMerge(0, "S1", "S2", samples)))
                        await ws.send(wire.dump_event(wire.End(samples, utterance, ("S1", "S2"))))
                        await ws.close(1000)
                        return
        except ConnectionClosed:
            pass
        finally:
            self.audio_bytes[index] = received
            self.audio[index] = bytes(everything)


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
