"""server/batcher.py: batching across sessions, priorities, failures, one inference thread per device."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
import pytest

from server.batcher import Batcher, BatcherClosed
from server.batcher_pool import PARTIAL_LANE, BatcherPool
from server.metrics import ServerMetrics
from server.models.base import current_interrupt, on_spill_lane
from streaming.work import AsrKind, AsrRequest, AsrResult, Priority, VadRequest, VadResult


def run(coro: Any, timeout: float = 20.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


class EchoAsr:
    """Transcribes a request as its session id and seq; records batches; can be held or made to fail."""

    name = "asr"
    max_batch = 64

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.poison: set[str] = set()
        self.threads: set[str] = set()
        self.short = False

    def run_batch(self, requests: Sequence[AsrRequest]) -> list[AsrResult]:
        self.entered.set()
        self.gate.wait(10)
        self.threads.add(threading.current_thread().name)
        self.batches.append([(r.session_id, r.seq) for r in requests])
        if any(r.session_id in self.poison for r in requests):
            raise RuntimeError("poisoned")
        out = [AsrResult(r.session_id, r.seq, f"{r.session_id}/{r.seq}") for r in requests]
        return out[:-1] if self.short else out

    def warmup(self) -> None: ...
    def modules(self) -> dict[str, Any]: return {}
    def describe(self) -> dict[str, Any]: return {"name": "echo", "checkpoint": None}


def asr(session: str, seq: int, kind: AsrKind = AsrKind.PARTIAL) -> AsrRequest:
    return AsrRequest(session, seq, 0, 0, np.zeros(160, np.float32), utterance_id=0, kind=kind)


def test_requests_from_many_sessions_share_a_batch_and_get_their_own_results() -> None:
    model = EchoAsr()
    metrics = ServerMetrics()

    async def main() -> None:
        with ThreadPoolExecutor(1) as ex:
            b = Batcher(model, ex, max_batch=8, max_wait=0.05, metrics=metrics)
            futures = [b.submit(asr(f"s{i}", i)) for i in range(6)]
            results = await asyncio.gather(*futures)
            await b.close()
        assert [r.text for r in results] == [f"s{i}/{i}" for i in range(6)]

    run(main())
    assert len(model.batches) == 1 and len(model.batches[0]) == 6
    text = metrics.render().decode()
    assert 'rechka_batch_size_count{model="asr"} 1.0' in text
    assert 'rechka_batch_size_sum{model="asr"} 6.0' in text


def test_batches_never_exceed_max_batch_nor_the_models_own_cap() -> None:
    model = EchoAsr()
    model.max_batch = 3

    async def main() -> None:
        with ThreadPoolExecutor(1) as ex:
            b = Batcher(model, ex, max_batch=4, max_wait=0.01)
            await asyncio.gather(*[b.submit(asr("s", i)) for i in range(10)])
            await b.close()

    run(main())
    assert sum(len(batch) for batch in model.batches) == 10
    assert max(len(batch) for batch in model.batches) == 3


def test_a_lone_request_runs_after_max_wait_without_company() -> None:
    model = EchoAsr()

    async def main() -> AsrResult:
        with ThreadPoolExecutor(1) as ex:
            b = Batcher(model, ex, max_batch=16, max_wait=0.005)
            result = await b.submit(asr("alone", 1))
            await b.close()
            return result

    assert run(main()).text == "alone/1"
    assert model.batches == [[("alone", 1)]]


def test_finals_run_before_partials_queued_earlier() -> None:
    model = EchoAsr()

    async def main() -> None:
        with ThreadPoolExecutor(1) as ex:
            b = Batcher(model, ex, max_batch=1, max_wait=0.0)
            model.gate.clear()
            first = b.submit(asr("busy", 0))
            await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 5)
            later = [b.submit(asr("p", 1)), b.submit(asr("p", 2)), b.submit(asr("f", 3, AsrKind.FINAL))]
            model.gate.set()
            await asyncio.gather(first, *later)
            await b.close()

    run(main())
    assert [batch[0] for batch in model.batches] == [("busy", 0), ("f", 3), ("p", 1), ("p", 2)]
    assert asr("f", 3, AsrKind.FINAL).priority == Priority.FINAL


def test_oldest_wait_is_the_age_of_the_oldest_request_still_queued() -> None:
    model = EchoAsr()
    waits: list[float] = []

    async def main() -> None:
        with ThreadPoolExecutor(1) as ex:
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


def test_a_failing_request_fails_only_its_own_future() -> None:
    model = EchoAsr()
    model.poison = {"bad"}

    async def main() -> list[Any]:
        with ThreadPoolExecutor(1) as ex:
            b = Batcher(model, ex, max_batch=8, max_wait=0.05)
            futures = [b.submit(asr(s, i)) for i, s in enumerate(["a", "bad", "c"])]
            out = await asyncio.gather(*futures, return_exceptions=True)
            await b.close()
            return out

    a, bad, c = run(main())
    assert isinstance(bad, RuntimeError) and str(bad) == "poisoned"
    assert (a.text, c.text) == ("a/0", "c/2")


def test_a_wrong_number_of_results_is_an_error_for_every_request() -> None:
    model = EchoAsr()
    model.short = True

    async def main() -> list[Any]:
        with ThreadPoolExecutor(1) as ex:
            b = Batcher(model, ex, max_batch=8, max_wait=0.05)
            out = await asyncio.gather(*[b.submit(asr("s", i)) for i in range(3)], return_exceptions=True)
            await b.close()
            return out

    assert all(isinstance(r, RuntimeError) and "results" in str(r) for r in run(main()))


def test_cancelled_requests_are_not_run() -> None:
    model = EchoAsr()

    async def main() -> None:
        with ThreadPoolExecutor(1) as ex:
            b = Batcher(model, ex, max_batch=1, max_wait=0.0)
            model.gate.clear()
            first = b.submit(asr("busy", 0))
            await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 5)
            gone = b.submit(asr("gone", 1))
            kept = b.submit(asr("kept", 2))
            gone.cancel()
            model.gate.set()
            await asyncio.gather(first, kept)
            await b.close()

    run(main())
    assert ("gone", 1) not in [r for batch in model.batches for r in batch]


def test_close_fails_waiting_requests_and_refuses_new_ones() -> None:
    model = EchoAsr()

    async def main() -> tuple[Any, Any]:
        with ThreadPoolExecutor(1) as ex:
            b = Batcher(model, ex, max_batch=1, max_wait=0.0)
            model.gate.clear()
            b.submit(asr("busy", 0))
            await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 5)
            waiting = b.submit(asr("waiting", 1))
            await b.close()
            model.gate.set()
            late = b.submit(asr("late", 2))
            return waiting, late

    waiting, late = run(main())
    assert isinstance(waiting.exception(), BatcherClosed)
    assert isinstance(late.exception(), BatcherClosed)


class CountingVad:
    """Records overlapping calls: two models on one device must never run at the same time."""

    max_batch = 64

    def __init__(self, name: str, shared: dict[str, int]) -> None:
        self.name = name
        self.shared = shared
        self.lock = threading.Lock()
        self.threads: set[str] = set()

    def run_batch(self, requests: Sequence[VadRequest]) -> list[VadResult]:
        with self.lock:
            self.shared["now"] += 1
            self.shared["max"] = max(self.shared["max"], self.shared["now"])
        threading.Event().wait(0.002)
        self.threads.add(threading.current_thread().name)
        with self.lock:
            self.shared["now"] -= 1
        return [VadResult(r.session_id, r.seq, np.zeros(1, np.float32), None) for r in requests]

    def warmup(self) -> None: ...
    def modules(self) -> dict[str, Any]: return {}
    def describe(self) -> dict[str, Any]: return {"name": self.name, "checkpoint": None}


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


@pytest.mark.parametrize("kwargs", [{"max_batch": 0, "max_wait": 0.0}, {"max_batch": 1, "max_wait": -1.0}])
def test_bad_options_are_refused(kwargs: dict[str, Any]) -> None:
    async def main() -> None:
        with ThreadPoolExecutor(1) as ex:
            Batcher(EchoAsr(), ex, **kwargs)

    with pytest.raises(ValueError, match="Batcher max_"):
        run(main())


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


class StoppableAsr(EchoAsr):
    """Like :class:`EchoAsr`, but a held call binds a stopper to its interrupt (as the ONNX engine does) and ends,
    raising, once the batcher interrupts it."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped = threading.Event()

    def run_batch(self, requests: Sequence[AsrRequest]) -> list[AsrResult]:
        interrupt = current_interrupt()
        if interrupt is None or self.gate.is_set():
            return super().run_batch(requests)
        self.entered.set()
        with interrupt.bound(self.stopped.set):
            if self.stopped.wait(10):
                raise RuntimeError("terminated")
        return super().run_batch(requests)


def test_a_running_batch_whose_requests_are_all_cancelled_is_interrupted() -> None:
    """A withdrawn speculative final frees the finals' lane at once: the call is stopped, the next request runs,
    and the stop is not counted as a model failure; a batch with someone still waiting runs to its end."""
    model = StoppableAsr()
    metrics = ServerMetrics()

    def final(session: str, seq: int) -> AsrRequest:
        return AsrRequest(session, seq, 0, 0, np.zeros(160, np.float32), utterance_id=seq, kind=AsrKind.FINAL)

    async def main() -> tuple[bool, Any, int]:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1) as ex:
            b = Batcher(model, ex, max_batch=1, max_wait=0.0, metrics=metrics)
            model.gate.clear()
            doomed = b.submit(final("a", 0))
            await loop.run_in_executor(None, model.entered.wait, 5)
            waiting = b.submit(final("b", 1))
            doomed.cancel()
            model.gate.set()  # what runs next is not held
            result = await asyncio.wait_for(waiting, 5)
            stopped = model.stopped.is_set()
            await b.close()
            return stopped, result, b.interrupted

    stopped, result, interrupted = run(main())
    assert stopped and interrupted == 1 and result.text == "b/1"
    assert model.batches == [[("b", 1)]]  # the interrupted call never returned results
    failures = [s for m in metrics.registry.collect() if m.name == "rechka_batch_failures" for s in m.samples
                if s.name.endswith("_total")]
    assert all(s.value == 0 for s in failures)


def test_a_batch_is_not_interrupted_while_one_of_its_requests_still_waits() -> None:
    model = StoppableAsr()

    async def main() -> tuple[Any, bool, int]:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1) as ex:
            b = Batcher(model, ex, max_batch=4, max_wait=0.05)
            model.gate.clear()
            gone, kept = b.submit(asr("gone", 0)), b.submit(asr("kept", 1))
            await loop.run_in_executor(None, model.entered.wait, 5)
            gone.cancel()
            await asyncio.sleep(0.05)  # the cancel's callbacks have run
            stopped = model.stopped.is_set()
            model.gate.set()
            model.stopped.set()  # let the held call end (it raises; "kept" gets the retry's result)
            result = await asyncio.wait_for(kept, 5)
            await b.close()
            return result, stopped, b.interrupted

    result, stopped, interrupted = run(main())
    assert not stopped and interrupted == 0 and result.text == "kept/1"


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


def test_model_cpu_seconds_count_the_inference_threads_cpu_not_its_waits() -> None:
    """``rechka_model_cpu_seconds_total``: CPU spent computing counts, time the call sleeps or blocks does not."""

    class Burner(EchoAsr):
        def run_batch(self, requests: Sequence[AsrRequest]) -> list[AsrResult]:
            start = time.thread_time()
            while time.thread_time() - start < 0.15:  # compute
                pass
            time.sleep(0.3)  # waiting: wall time, no CPU
            return super().run_batch(requests)

    metrics = ServerMetrics()

    async def main() -> None:
        with ThreadPoolExecutor(1) as ex:
            b = Batcher(Burner(), ex, max_batch=4, max_wait=0.0, metrics=metrics)
            await b.submit(asr("s", 1))
            await b.close()

    run(main())
    values = {s.name: s.value for m in metrics.registry.collect() for s in m.samples if s.labels.get("model") == "asr"}
    assert 0.15 <= values["rechka_model_cpu_seconds_total"] < 0.3 <= values["rechka_model_busy_seconds_total"]


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
