"""Draining: SIGTERM stops accepting, open streams get their finals and ``end``, then close 1001 within the grace."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from typing import Any, Sequence

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from server.__main__ import serve_until_signal
from server.app import RechkaServer
from tests.server.conftest import Received, read_all, run, serving
from tests.server.fake_models import fake_models

START = {"type": "start", "diarization": False}


def open_tone(freq: float) -> bytes:
    """Silence then a tone that is still sounding when the audio stops: its utterance is open."""
    t = np.arange(16000) / 16000
    audio = np.concatenate([np.zeros(4800), 0.3 * np.sin(2 * np.pi * freq * t)])
    return (audio * 32767).astype("<i2").tobytes()


async def open_streams(server: RechkaServer, freqs: Sequence[float]) -> tuple[list[Any], list[asyncio.Task]]:
    """Streams that sent audio but no stop; each has a reader collecting until the close."""
    sockets, readers = [], []
    for freq in freqs:
        ws = await connect(server.url)
        await ws.send(json.dumps(START))
        ready = json.loads(await ws.recv())
        await ws.send(open_tone(freq))
        sockets.append(ws)
        readers.append(asyncio.create_task(read_all(ws, Received(events=[ready]))))
    await asyncio.sleep(0.2)  # the audio is in and through the VAD; the utterances are open
    return sockets, readers


def test_drain_flushes_finals_sends_end_and_closes_1001() -> None:
    freqs = [450, 650, 850]

    async def main() -> tuple[list[Received], type]:
        async with serving() as server:
            _, readers = await open_streams(server, freqs)
            await server.drain(grace=10)
            results = await asyncio.gather(*readers)
            try:
                async with connect(server.url, open_timeout=2):
                    refused: type = type(None)
            except (OSError, InvalidStatus) as exc:
                refused = type(exc)
            return results, refused

    results, refused = run(main())
    for freq, got in zip(freqs, results):
        assert got.final_words == [f"w{freq}"]
        assert got.types[-1] == "end" and got.close_code == 1001 and got.close_reason == "server shutting down"
    assert refused is not type(None), "a draining server accepted a new stream"


def test_sigterm_drains_the_server_even_beside_a_client_that_stopped_reading() -> None:
    """SIGTERM with three streams mid-utterance and a fourth whose client stopped reading (it never answers the
    close handshake): the three get their final, ``end`` and 1001 within the grace; the frozen one costs no more
    than the grace, so the process is done within it; the signal handler is removed afterwards."""
    freqs = [450, 650, 850]
    grace = 2.0

    async def main() -> tuple[list[Received], float, float]:
        async with serving(shutdown_grace=grace) as server:
            frozen = await connect(server.url)
            await frozen.send(json.dumps(START))
            await frozen.recv()
            await frozen.send(open_tone(350))
            _, readers = await open_streams(server, freqs)
            frozen.transport.pause_reading()  # from now on it reads nothing, not even the close
            serving_task = asyncio.create_task(serve_until_signal(server))
            await asyncio.sleep(0.05)  # the handlers are installed
            signalled = time.monotonic()
            os.kill(os.getpid(), signal.SIGTERM)
            results = await asyncio.gather(*readers)
            flushed = time.monotonic() - signalled
            await serving_task
            done = time.monotonic() - signalled
            assert server.draining
            frozen.transport.abort()
            return list(results), flushed, done

    results, flushed, done = run(main())
    for freq, got in zip(freqs, results):
        assert got.final_words == [f"w{freq}"], got.events
        assert got.types[-1] == "end" and got.close_code == 1001
    assert flushed < grace, f"the reading streams closed {flushed:.1f} s after SIGTERM, beyond the {grace} s grace"
    assert done < grace + 1.0, f"the server took {done:.1f} s to stop, beyond its {grace} s grace"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, "the SIGTERM handler was not removed"


def test_streams_still_flushing_when_the_grace_ends_are_closed_1001() -> None:
    gate = threading.Event()
    models = fake_models()
    inner = models["asr"].function

    def stuck(requests: list[Any]) -> Any:
        gate.wait(30)
        return inner(requests)

    models["asr"].function = stuck

    async def main() -> Received:
        try:
            async with serving(models) as server:
                _, readers = await open_streams(server, [750])
                await server.drain(grace=0.3)
                return await readers[0]
        finally:
            gate.set()

    got = run(main())
    assert got.close_code == 1001 and "end" not in got.types and "final" not in got.types


def test_a_stream_that_never_started_is_simply_closed() -> None:
    async def main() -> Received:
        async with serving() as server:
            ws = await connect(server.url)
            reader = asyncio.create_task(read_all(ws, Received()))
            await asyncio.sleep(0.05)
            await server.drain(grace=0.0)
            return await reader

    got = run(main())
    assert got.events == [] and got.close_code == 1001
