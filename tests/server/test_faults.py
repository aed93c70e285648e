"""Faults survived (issue #13): CUDA out-of-memory splits a batch, a hung or dead model turns /health 503 (logged
with the model's name), the drain answers 503 + Retry-After and honours its grace even for a frozen client, a long
flush that makes progress is not cut off, overload is warned after stop, killed clients leave no session."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any, Sequence

import numpy as np
import pytest
import torch
from websockets.asyncio.client import connect

from server.batcher_pool import BatcherPool
from streaming.work import Request, VadRequest, VadResult
from tests.server.conftest import Received, exchange, http_get, read_all, run, serving, stream, tones_audio
from tests.server.fake_models import fake_models

START = {"type": "start", "diarization": False}


class OomVad:
    """A VAD that runs out of (CUDA) memory for batches larger than ``fits``."""

    name = "vad"

    def __init__(self, fits: int) -> None:
        self.fits = fits
        self.sizes: list[int] = []

    def run_batch(self, requests: Sequence[Request]) -> list[VadResult]:
        self.sizes.append(len(requests))
        if len(requests) > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [VadResult(r.session_id, r.seq, np.zeros(1, np.float32), None) for r in requests]

    def warmup(self) -> None: ...
    def modules(self) -> dict[str, Any]: return {}
    def describe(self) -> dict[str, Any]: return {"name": "oom-vad", "checkpoint": None}


def test_cuda_out_of_memory_splits_the_batch_and_every_request_succeeds() -> None:
    vad = OomVad(fits=2)

    async def main() -> list[VadResult]:
        pool = BatcherPool({"vad": vad}, {"vad": "cpu"}, max_batch=8, max_wait=0.05)
        futures = [pool.submit(VadRequest(f"s{i}", i, 0, 0, np.zeros(512, np.float32))) for i in range(8)]
        results = await asyncio.gather(*futures)
        await pool.close()
        return results

    results = run(main())
    assert [r.session_id for r in results] == [f"s{i}" for i in range(8)]
    assert vad.sizes[0] == 8 and max(vad.sizes[1:]) <= 4 and sum(s for s in vad.sizes if s <= 2) == 8


def test_a_hung_model_call_turns_health_503_naming_the_model(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    models = fake_models()
    hung = models["asr"]
    original = hung.function
    hung.function = lambda requests: (release.wait(20), original(requests))[1]  # type: ignore[assignment]

    async def main() -> tuple[int, dict, int]:
        async with serving(models, model_timeout=0.3) as server:
            task = asyncio.create_task(stream(server.url, tones_audio([440]), start=START))
            before = await http_get(server.port, "/health")
            for _ in range(100):
                await asyncio.sleep(0.1)
                reply = await http_get(server.port, "/health")
                if reply.status == 503:
                    break
            release.set()
            await task
            after = await http_get(server.port, "/health")
            return reply.status, reply.json(), after.status if before.status == 200 else -1

    with caplog.at_level(logging.ERROR, logger="rechka.batcher"):
        status, body, recovered = run(main())
    assert status == 503 and body["status"] == "unhealthy" and "asr" in body["problems"]
    assert "running for" in body["problems"]["asr"]
    assert recovered == 200  # the call came back: healthy again
    assert "model asr (fake-asr) is unhealthy" in caplog.text


def test_a_dead_inference_thread_turns_health_503() -> None:
    async def main() -> tuple[int, dict]:
        async with serving() as server:
            assert (await http_get(server.port, "/health")).status == 200
            for executor in server.pool._executors.values():  # noqa: SLF001 - the thread pools are gone
                executor.shutdown(wait=False)
            reply = await http_get(server.port, "/health")
            return reply.status, reply.json()

    status, body = run(main())
    assert status == 503 and set(body["problems"]) == {"vad", "segmentation", "embedding", "asr"}


def test_health_and_ready_show_no_file_system_paths(tmp_path) -> None:  # type: ignore[no-untyped-def]
    checkpoint = tmp_path / "secret-dir" / "model.ckpt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"weights")
    models = fake_models()
    models["asr"].describe = lambda: {"name": "tiny", "checkpoint": str(checkpoint)}  # type: ignore[assignment]

    async def main() -> tuple[dict, Received]:
        async with serving(models) as server:
            health = (await http_get(server.port, "/health")).json()
            got = await exchange(server.url, [START, {"type": "stop"}])
            return health, got

    health, got = run(main())
    for info in (health["models"]["asr"], got.events[0]["models"]["asr"]):
        assert info["checkpoint"] == "model.ckpt" and len(info["checkpoint_sha256"]) == 16
    assert "secret-dir" not in json.dumps(health) and "secret-dir" not in json.dumps(got.events)


def test_while_draining_new_connections_and_ready_get_503_with_retry_after() -> None:
    async def main() -> tuple[Any, Any, Received]:
        async with serving(fake_models(delay=0.6), shutdown_grace=5) as server:
            ws = await connect(server.url)
            await ws.send(json.dumps(START))
            await ws.recv()
            await ws.send(tones_audio([440, 660]))
            reader = asyncio.create_task(read_all(ws, Received()))
            await asyncio.sleep(0.5)  # the audio is in: its finals take several slow model calls
            drain = asyncio.create_task(server.drain())
            await asyncio.sleep(0.2)  # the stream is still flushing
            ready = await http_get(server.port, "/ready")
            upgrade = await http_get(server.port, "/v1/stream", {"Upgrade": "websocket", "Connection": "Upgrade",
                                                                 "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                                                 "Sec-WebSocket-Version": "13"})
            await drain
            return ready, upgrade, await reader

    ready, upgrade, got = run(main())
    assert ready.status == 503 and int(ready.headers["retry-after"]) > 0 and ready.json()["draining"]
    assert upgrade.status == 503 and int(upgrade.headers["retry-after"]) > 0
    assert got.types[-1] == "end" and got.close_code == 1001 and got.final_words == ["w440", "w660"]


def test_the_drain_honours_its_grace_even_when_a_client_stopped_reading() -> None:
    async def main() -> float:
        async with serving(fake_models(delay=0.2)) as server:
            ws = await connect(server.url)
            await ws.send(json.dumps(START))
            await ws.recv()
            await ws.send(tones_audio([440, 660]))
            await asyncio.sleep(0.3)
            ws.transport.pause_reading()  # frozen: never reads, never answers the close handshake
            began = time.monotonic()
            await server.drain(grace=1.0)
            took = time.monotonic() - began
            ws.transport.abort()
            return took

    assert run(main()) < 2.0  # not websockets' 10 s close timeout


def test_a_long_flush_that_makes_progress_is_not_cut_off_and_overload_is_warned_after_stop() -> None:
    # every model call takes 0.35 s and the audio goes in at once: after stop the finals take far longer than the
    # 1 s flush limit in total, but a result comes at least every second
    async def main() -> Received:
        async with serving(fake_models(delay=0.35), flush_timeout=1.0, shutdown_grace=0.0,
                           overload_lag=0.5) as server:
            return await stream(server.url, tones_audio([440, 550, 660, 770, 880]), start=START, chunk=64_000)

    got = run(main())
    assert got.close_code == 1000 and got.types[-1] == "end"
    assert got.final_words == ["w440", "w550", "w660", "w770", "w880"]
    assert "overloaded" in [w["code"] for w in got.of("warning")]


def test_clients_killed_mid_stream_leave_no_session_behind() -> None:
    async def main() -> float:
        async with serving() as server:
            for _ in range(5):
                ws = await connect(server.url)
                await ws.send(json.dumps(START))
                await ws.recv()
                await ws.send(tones_audio([440])[:20_000])
                ws.transport.abort()
            for _ in range(100):
                if server.metrics.sessions_active._value.get() == 0:
                    break
                await asyncio.sleep(0.05)
            return server.metrics.sessions_active._value.get()

    assert run(main()) == 0


def test_sessions_that_ended_leave_nothing_alive() -> None:
    """A long-running server must not keep what ended: after streams that stopped, were aborted mid-utterance, or
    ran with diarization, no ``Session`` or ``Connection`` object is still reachable (a soak's RSS slope starts
    here)."""
    import gc

    from server.connection import Connection
    from streaming.session import Session

    def alive() -> tuple[int, int]:
        gc.collect()
        objects = gc.get_objects()
        return sum(type(o) is Session for o in objects), sum(type(o) is Connection for o in objects)

    async def main() -> tuple[tuple[int, int], tuple[int, int]]:
        async with serving(fake_models(delay=0.02)) as server:
            for k in range(3):
                await stream(server.url, tones_audio([440 + 110 * k]), start={"diarization": k % 2 == 0})
            during = None
            for k in range(3):
                ws = await connect(server.url)
                await ws.send(json.dumps({"type": "start", "diarization": k % 2 == 0}))
                await ws.recv()
                await ws.send(tones_audio([440, 660])[:40_000])  # mid-utterance, results in flight
                during = during or alive()
                ws.transport.abort()
            for _ in range(100):
                if server.metrics.sessions_active._value.get() == 0:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # the aborted sessions' model results come back and are dropped
            return during, alive()

    during, after = run(main())
    assert during[0] >= 1 and during[1] >= 1  # the census sees live ones
    assert after == (0, 0), f"{after[0]} sessions and {after[1]} connections still alive after they all ended"
