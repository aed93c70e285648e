"""server/batcher_pool.py: one inference thread per device, the VAD's own thread, finals' and spill lanes, nice."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from typing import Any, Sequence

import numpy as np
import pytest

from server.batcher_pool import PARTIAL_LANE, BatcherPool
from server.metrics import ServerMetrics
from server.models.base import on_spill_lane
from streaming.work import AsrKind, AsrRequest, AsrResult, VadRequest, VadResult
from tests.fakes import CountingVad, EchoAsr
from tests.fakes import asr_request as asr
from tests.fakes import run_bounded as run


def test_models_on_one_device_share_one_inference_thread() -> None:
    shared = {"now": 0, "max": 0}
    emb, seg = CountingVad("embedding", shared), CountingVad("segmentation", shared)

    async def main() -> None:
        pool = BatcherPool({"embedding": emb, "segmentation": seg}, {"embedding": "cpu", "segmentation": "cpu"},
                           max_batch=2, max_wait=0.0)
        assert pool.devices == ("cpu",)
        futures = [pool.batchers[name].submit(VadRequest(f"s{i}", i, 0, 0, np.zeros(512, np.float32)))
                   for i in range(12) for name in ("embedding", "segmentation")]
        await asyncio.gather(*futures)
        await pool.close()

    run(main())
    assert shared["max"] == 1
    assert emb.threads == seg.threads and len(emb.threads) == 1


def test_the_vad_on_the_cpu_has_a_thread_of_its_own() -> None:
    """A VAD request never waits behind a long model call on the CPU's shared thread (finals wait for the VAD)."""
    model = EchoAsr()
    vad = CountingVad("vad", {"now": 0, "max": 0})

    async def main() -> float:
        pool = BatcherPool({"asr": model, "vad": vad}, {"asr": "cpu", "vad": "cpu"}, max_batch=1, max_wait=0.0)
        assert pool.devices == ("cpu",)
        model.gate.clear()  # GigaAM busy on the shared thread
        decoding = pool.submit(asr("s", 1))
        await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 5)
        began = asyncio.get_running_loop().time()
        await pool.submit(VadRequest("s", 2, 0, 0, np.zeros(512, np.float32)))
        took = asyncio.get_running_loop().time() - began
        model.gate.set()
        await decoding
        await pool.close()
        return took

    assert run(main()) < 1.0 and vad.threads.isdisjoint(model.threads)


def test_cpu_threads_let_two_cpu_models_overlap_but_a_gpu_keeps_one_thread() -> None:
    cpu_shared, gpu_shared = {"now": 0, "max": 0}, {"now": 0, "max": 0}
    emb, seg = CountingVad("embedding", cpu_shared), CountingVad("segmentation", cpu_shared)
    vad, asr = CountingVad("vad", gpu_shared), CountingVad("asr", gpu_shared)  # on a GPU the VAD shares its thread
    devices = {"embedding": "cpu", "segmentation": "cpu", "vad": "cuda:0", "asr": "cuda:0"}

    async def main() -> None:
        pool = BatcherPool({"vad": vad, "segmentation": seg, "embedding": emb, "asr": asr}, devices,
                           max_batch=2, max_wait=0.0, cpu_threads=2)
        futures = [pool.batchers[name].submit(VadRequest(f"s{i}", i, 0, 0, np.zeros(512, np.float32)))
                   for i in range(40) for name in devices]
        await asyncio.gather(*futures)
        await pool.close()

    run(main())
    assert cpu_shared["max"] == 2, "the two CPU models ran side by side"
    assert gpu_shared["max"] == 1 and vad.threads == asr.threads and len(asr.threads) == 1


def test_pool_routes_each_request_kind_to_its_model() -> None:
    model = EchoAsr()
    shared = {"now": 0, "max": 0}
    vad = CountingVad("vad", shared)

    async def main() -> tuple[Any, Any]:
        pool = BatcherPool({"asr": model, "vad": vad}, {"asr": "cuda:0", "vad": "cpu"}, max_batch=4, max_wait=0.0)
        assert set(pool.devices) == {"cuda:0", "cpu"}
        out = await asyncio.gather(pool.submit(asr("s", 1)),
                                   pool.submit(VadRequest("s", 2, 0, 0, np.zeros(512, np.float32))))
        await pool.close()
        return out

    a, v = run(main())
    assert isinstance(a, AsrResult) and isinstance(v, VadResult)


class PartialsHeldAsr(EchoAsr):
    """EchoAsr whose ``gate`` holds partial batches only: finals always run."""

    def run_batch(self, requests: Sequence[AsrRequest]) -> list[AsrResult]:
        if any(r.kind == AsrKind.FINAL for r in requests):
            self.threads.add(threading.current_thread().name)
            return [AsrResult(r.session_id, r.seq, f"{r.session_id}/{r.seq}") for r in requests]
        return super().run_batch(requests)


def test_on_the_cpu_a_final_does_not_wait_for_a_running_partial_batch() -> None:
    model = PartialsHeldAsr()

    async def main() -> tuple[list[float], str, bool, set[str]]:
        metrics = ServerMetrics()
        pool = BatcherPool({"asr": model}, {"asr": "cpu"}, max_batch=4, max_wait=0.0, metrics=metrics)
        model.gate.clear()
        running = pool.submit(asr("p", 1))
        await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 5)
        waits = [pool.oldest_wait(PARTIAL_LANE)]  # the running partial is not queued
        queued = pool.submit(asr("p", 2))
        await asyncio.sleep(0.2)
        waits.append(pool.oldest_wait(PARTIAL_LANE))  # a partial queued behind it
        waits.append(pool.oldest_wait("asr"))  # the finals' queue is not behind
        final = await asyncio.wait_for(pool.submit(asr("f", 3, AsrKind.FINAL)), 5)
        held = not running.done()
        final_threads = set(model.threads)
        model.gate.set()
        await asyncio.gather(running, queued)
        assert running.started_at is not None and running.finished_at is not None
        assert running.queued_at <= running.started_at <= running.finished_at and running.batch_size == 1
        text = metrics.render().decode()
        assert 'rechka_queue_wait_seconds_count{model="asr-partials",priority="partial"} 2.0' in text
        await pool.close()
        return waits, final.text, held, final_threads

    waits, text, held, final_threads = run(main())
    assert waits[0] == waits[2] == 0.0 and waits[1] >= 0.2
    assert text == "f/3" and held, "the final ran while the partial batch was still running"
    assert final_threads.isdisjoint(model.threads - final_threads) and model.threads != final_threads


def test_on_a_gpu_finals_and_partials_share_one_batcher() -> None:
    async def main() -> set[str]:
        pool = BatcherPool({"asr": EchoAsr()}, {"asr": "cuda:0"}, max_batch=4, max_wait=0.0)
        names = set(pool.batchers)
        await pool.close()
        return names

    assert run(main()) == {"asr"}


class NiceRecorder(EchoAsr):
    """Records the nice value of the thread each batch runs on."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.nice: set[int] = set()

    def run_batch(self, requests: Sequence[Any]) -> list[Any]:
        self.nice.add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        if isinstance(requests[0], VadRequest):
            return [VadResult(r.session_id, r.seq, np.zeros(1, np.float32), None) for r in requests]
        return [AsrResult(r.session_id, r.seq, "") for r in requests]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_shared_cpu_threads_run_below_the_finals_and_the_vad() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    if base + 5 > 19:
        pytest.skip("the tests already run at nice > 14: the shared threads cannot go 5 lower")
    vad, seg, gigaam = NiceRecorder("vad"), NiceRecorder("segmentation"), NiceRecorder("asr")

    async def main() -> None:
        names = ("vad", "segmentation", "asr")
        pool = BatcherPool(dict(zip(names, (vad, seg, gigaam))), dict.fromkeys(names, "cpu"), max_batch=4,
                           max_wait=0.0, cpu_threads=2, background_nice=5)
        await pool.submit(VadRequest("s", 1, 0, 0, np.zeros(512, np.float32)))
        await pool.batchers["segmentation"].submit(VadRequest("s", 2, 0, 0, np.zeros(512, np.float32)))
        await pool.submit(asr("s", 3, AsrKind.FINAL))
        final_nice = set(gigaam.nice)
        await pool.submit(asr("s", 4))
        gigaam.nice -= final_nice
        await pool.close()
        assert final_nice == vad.nice == {base}

    run(main())
    assert seg.nice == gigaam.nice == {base + 5}  # the partial ran on a shared thread


def test_on_the_cpu_finals_run_one_at_a_time_the_shortest_first() -> None:
    model = EchoAsr()

    def final(seq: int, samples: int) -> AsrRequest:
        return AsrRequest("s", seq, 0, 0, np.zeros(samples, np.float32), utterance_id=seq, kind=AsrKind.FINAL)

    async def main() -> None:
        pool = BatcherPool({"asr": model}, {"asr": "cpu"}, max_batch=8, max_wait=0.0)
        model.gate.clear()
        running = pool.submit(final(0, 16000))
        await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 5)
        queued = [pool.submit(final(1, 48000)), pool.submit(final(2, 8000)), pool.submit(final(3, 32000))]
        model.gate.set()
        await asyncio.gather(running, *queued)
        await pool.close()

    run(main())
    assert model.batches == [[("s", 0)], [("s", 2)], [("s", 3)], [("s", 1)]]


def test_a_short_final_starts_beside_a_long_decode_and_a_long_one_waits() -> None:
    """``final_lanes=2``: while the finals lane decodes, a queued final at most half as long runs at once on the spill
    lane (its own thread, the models' ordinary thread count); a longer one waits for the first lane."""
    model = EchoAsr()
    held = threading.Event()

    def final(seq: int, samples: int) -> AsrRequest:
        return AsrRequest("s", seq, 0, 0, np.zeros(samples, np.float32), utterance_id=seq, kind=AsrKind.FINAL)

    def run_batch(requests: Sequence[AsrRequest]) -> list[AsrResult]:
        if len(requests[0].audio) == 80000:
            held.set()
            model.gate.wait(10)
        model.threads.add(f"{threading.current_thread().name}:{requests[0].seq}:{on_spill_lane()}")
        return [AsrResult(r.session_id, r.seq, f"{r.seq}") for r in requests]

    model.run_batch = run_batch  # type: ignore[method-assign]

    async def main() -> tuple[bool, bool]:
        pool = BatcherPool({"asr": model}, {"asr": "cpu"}, max_batch=8, max_wait=0.0, final_lanes=2)
        model.gate.clear()
        long = pool.submit(final(0, 80000))
        await asyncio.get_running_loop().run_in_executor(None, held.wait, 5)
        short, middle = pool.submit(final(1, 40000)), pool.submit(final(2, 60000))
        await asyncio.wait_for(short, 5)
        waiting = not long.done() and not middle.done()
        model.gate.set()
        await asyncio.gather(long, middle)
        await pool.close()
        return waiting, pool.batchers["asr"].spilled == 1

    waiting, spilled_once = run(main())
    assert waiting and spilled_once
    assert any(t.startswith("infer-cpu-final-spill") and t.endswith(":1:True") for t in model.threads)
    assert any(t.startswith("infer-cpu-final_") and t.endswith(":2:False") for t in model.threads)


def test_a_stopped_spill_lane_is_a_problem_the_health_check_reports() -> None:
    """With ``final_lanes=2`` the finals batcher is unhealthy when its spill lane's loop stops while the batcher is
    open (``/health`` reports it); an idle, running spill lane is fine."""
    async def main() -> tuple[dict[str, str], dict[str, str]]:
        pool = BatcherPool({"asr": EchoAsr()}, {"asr": "cpu"}, max_batch=8, max_wait=0.0, final_lanes=2)
        await asyncio.sleep(0.05)
        healthy = pool.problems(hang_limit=60.0)
        spill = pool.batchers["asr"]._spill_task
        assert spill is not None
        spill.cancel()
        await asyncio.sleep(0.05)
        broken = pool.problems(hang_limit=60.0)
        await pool.close()
        return healthy, broken

    healthy, broken = run(main())
    assert healthy == {}
    assert list(broken) == ["asr"] and "spill lane stopped" in broken["asr"]


def test_busy_during_sums_each_batchers_model_calls_inside_a_window() -> None:
    async def main() -> dict[str, float]:
        pool = BatcherPool({"asr": EchoAsr(), "vad": CountingVad("vad", {"now": 0, "max": 0})},
                           {"asr": "cpu", "vad": "cpu"}, max_batch=1, max_wait=0.0)
        pool.batchers["asr"].runs.extend([(frozenset({"a"}), 10.0, 11.0), (frozenset({"b"}), 10.5, 10.8)])
        pool.batchers["vad"].runs.extend([(frozenset({"a"}), 9.0, 10.2), (frozenset({"b"}), 10.9, 12.0),
                                          (frozenset({"c"}), 12.0, 13.0)])
        busy = pool.busy_during(10.0, 11.0)
        await pool.close()
        return busy

    assert run(main()) == {"asr": pytest.approx(1.3), "vad": pytest.approx(0.3), PARTIAL_LANE: 0.0}


def test_oldest_wait_is_the_age_of_the_oldest_request_still_queued() -> None:
    model = EchoAsr()
    waits: list[float] = []

    async def main() -> None:
        pool = BatcherPool({"asr": model}, {"asr": "cpu"}, max_batch=1, max_wait=0.0)
        b = pool.batchers["asr"]
        waits.append(pool.oldest_wait("asr"))  # nothing queued
        model.gate.clear()
        running = b.submit(asr("busy", 0))
        await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 5)
        waits.append(b.oldest_wait)  # the running one is no longer queued
        queued = [b.submit(asr("p", 1)), b.submit(asr("f", 2, AsrKind.FINAL))]
        await asyncio.sleep(0.2)
        waits.append(pool.oldest_wait("asr"))
        model.gate.set()
        await asyncio.gather(running, *queued)
        waits.append(b.oldest_wait)
        waits.append(pool.oldest_wait("segmentation"))  # no such batcher
        await pool.close()

    run(main())
    assert waits[0] == waits[1] == 0.0 and waits[2] >= 0.2 and waits[3] == waits[4] == 0.0
