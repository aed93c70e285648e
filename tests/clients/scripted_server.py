"""A scripted protocol v1 server for the client tests, and the counting WAV it "transcribes".

The scripted server (:class:`ScriptedServer`) speaks protocol v1 with :mod:`streaming.wire` and "transcribes"
audio whose every second is a constant PCM value: for each full second received it sends a final whose text is that
value (``"1003"`` for the fourth second of a file written by :func:`write_counting_wav`), with session-relative
times. A client that resumes after a drop must therefore reproduce each second's value at the right absolute time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
import threading
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
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
