"""Harness for the server tests: an in-process server on port 0 with fake models, a protocol v1 client, raw HTTP.

pytest-asyncio is not installed: each test is a plain function that calls :func:`run` on its coroutine.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping, Optional, Sequence

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from server.app import RechkaServer
from server.config import ServerConfig
from tests.fakes import pcm16, tone_bursts
from tests.server.fake_models import FAKE_PLACEMENT, fake_models

CHUNK_BYTES = 3200  # 100 ms of 16 kHz s16le


def run(coro: Any, timeout: float = 60.0) -> Any:
    """Run ``coro`` to completion in a fresh event loop, failing after ``timeout`` seconds."""
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


@asynccontextmanager
async def serving(models: Optional[Mapping[str, Any]] = None, placement: Optional[Mapping[str, Any]] = None,
                  **overrides: Any) -> AsyncIterator[RechkaServer]:
    """A started server on a free port (``ServerConfig`` fields as keyword overrides), closed afterwards."""
    options: dict[str, Any] = {"port": 0, "static_dir": None, "idle_timeout": 10.0, "max_wait_ms": 5.0}
    options.update(overrides)
    server = RechkaServer(ServerConfig(**options), models or fake_models(), placement or FAKE_PLACEMENT)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@dataclass
class Received:
    """Everything the server sent on one stream, and how it closed."""

    events: list[dict[str, Any]] = field(default_factory=list)
    close_code: Optional[int] = None
    close_reason: str = ""

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    @property
    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    @property
    def final_words(self) -> list[str]:
        return " ".join(e["text"] for e in self.of("final")).split()


async def read_all(ws: ClientConnection, into: Received) -> Received:
    """Collect events until the server closes the stream."""
    try:
        async for message in ws:
            into.events.append(json.loads(message))
    except ConnectionClosed:
        pass
    into.close_code = ws.close_code
    into.close_reason = ws.close_reason or ""
    return into


def tones_audio(freqs: Sequence[float], seconds: float = 0.8, gap: float = 0.9, seed: int = 0) -> bytes:
    """16-bit PCM of tone bursts at ``freqs``; the fake ASR transcribes them as ``w<freq>`` words."""
    return pcm16(tone_bursts([(f, seconds) for f in freqs], gaps=gap, seed=seed).audio)


async def stream(url: str, audio: bytes, start: Optional[dict[str, Any]] = None, chunk: int = CHUNK_BYTES,
                 pace: float = 0.0, stop: bool = True, **connect_kwargs: Any) -> Received:
    """One whole stream: ``start``, ``audio`` in ``chunk``-byte messages (``pace`` seconds apart), ``stop``; then
    read until the server closes."""
    received = Received()
    async with connect(url, **connect_kwargs) as ws:
        reader = asyncio.create_task(read_all(ws, received))
        await ws.send(json.dumps({"type": "start", **(start or {"diarization": False})}))
        try:
            for offset in range(0, len(audio), chunk):
                await ws.send(audio[offset:offset + chunk])
                if pace:
                    await asyncio.sleep(pace)
            if stop:
                await ws.send(json.dumps({"type": "stop"}))
        except ConnectionClosed:
            pass
        await reader
    return received


async def exchange(url: str, messages: Sequence[Any], **connect_kwargs: Any) -> Received:
    """Send ``messages`` (dicts as JSON, bytes as binary, str as is) and read until the server closes."""
    received = Received()
    async with connect(url, **connect_kwargs) as ws:
        reader = asyncio.create_task(read_all(ws, received))
        try:
            for message in messages:
                await ws.send(json.dumps(message) if isinstance(message, dict) else message)
        except ConnectionClosed:
            pass
        await reader
    return received


@dataclass
class HttpReply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def http_get(port: int, path: str, headers: Optional[Mapping[str, str]] = None,
                   tls: Optional[ssl.SSLContext] = None) -> HttpReply:
    """A raw ``GET path`` (sent byte for byte, no normalisation) and the reply, read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls,
                                                   server_hostname="localhost" if tls else None)
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return HttpReply(int(status_line.split()[1]), parsed, body)


def metric_value(text: str, name: str, labels: str = "") -> float:
    """The value of sample ``name{labels}`` in Prometheus text (0 when absent)."""
    key = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return 0.0


def silence(seconds: float) -> bytes:
    return np.zeros(int(seconds * 16000), dtype="<i2").tobytes()


def small_gigaam_cfg(name: str = "v3_ctc") -> Any:
    """The full-size random-weights cfg of a GigaAM architecture (``v2_ctc``, ``v3_rnnt``, …), shrunk to two
    32-wide Conformer layers so it builds and runs in milliseconds."""
    from server.models.gigaam_compat import random_config

    cfg = random_config(name)
    cfg.encoder.n_layers, cfg.encoder.d_model, cfg.encoder.n_heads = 2, 32, 2
    if name.endswith("ctc"):
        cfg.head.feat_in = 32
    else:
        cfg.head.joint.enc_hidden = 32
    return cfg

