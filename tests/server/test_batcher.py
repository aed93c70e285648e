"""server/batcher.py: batching across sessions, priorities, failures, cancellation and interrupts, metrics."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
import pytest

from server.batcher import Batcher, BatcherClosed
from server.metrics import ServerMetrics
from server.models.base import current_interrupt
from streaming.work import AsrKind, AsrRequest, AsrResult, Priority
from tests.fakes import EchoAsr
from tests.fakes import asr_request as asr
from tests.fakes import run_bounded as run


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

@pytest.mark.parametrize("kwargs", [{"max_batch": 0, "max_wait": 0.0}, {"max_batch": 1, "max_wait": -1.0}])
def test_bad_options_are_refused(kwargs: dict[str, Any]) -> None:
    async def main() -> None:
        with ThreadPoolExecutor(1) as ex:
            Batcher(EchoAsr(), ex, **kwargs)

    with pytest.raises(ValueError, match="Batcher max_"):
        run(main())


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
