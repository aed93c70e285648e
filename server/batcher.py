"""Cross-session batching: one :class:`Batcher` per model, one inference thread per device.

Requests from every session go into the batcher of their model. Its single consumer blocks on the queue; once a
request arrives it takes whatever else is queued (lowest ``priority`` first: finals before partials), waits at most
``max_wait`` for more while the batch is short of ``max_batch``, and runs ``model.run_batch`` on the device's inference
thread (a ``ThreadPoolExecutor(max_workers=1)`` shared by every batcher of that device, so a GPU never runs two
batches at once). A batch whose every request is cancelled while it runs has its model call :class:`Interrupt`-ed
(the ONNX engine stops between graph nodes), so a withdrawn speculative final frees the finals lane at once; a
cancelled request still queued is never run. On the CPU, ``cpu_threads`` > 1 lets different models run side by
side (each batcher still runs one batch at a time), so the diarization models do not wait behind a long GigaAM
decode; the VAD has a CPU thread of its own, and so have GigaAM's finals (speculative ones included): partial decodes
go to a second batcher of the same model (:data:`~server.batcher_pool.PARTIAL_LANE`) on the shared threads, so a final
never waits for a partial batch to finish; finals run one at a time, the shortest first
(:data:`~server.batcher_pool.CPU_FINAL_BATCH`), except that with ``final_lanes`` 2 a queued final at most
:data:`SPILL_RATIO` as long as the one decoding starts beside it on a spill thread of its own. Those shared threads
(partials, segmentation, embeddings) run ``background_nice`` steps below the process's priority (Linux), so while a
final or the VAD runs, the cores are theirs first. Each request's future gets its result (with its times:
:class:`TimedFuture`), or the exception. A failed batch of several requests is retried one request at a time, so one
bad request fails only its own session; a batch that ran out of GPU memory (``torch.cuda.OutOfMemoryError``) is split
in halves and each half retried, down to single requests.

The threads are set up by :class:`server.batcher_pool.BatcherPool`. Health (its ``problems``): a batcher whose
consumer task or spill lane died, whose executor can no longer run work, or whose model call has been running longer
than ``hang_limit`` seconds is reported (and logged once) with the model's name; ``/health`` then answers 503 so a
supervisor restarts the process.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional, Sequence

from server.metrics import ServerMetrics
from server.models.base import BatchModel, Interrupt, set_current_interrupt
from streaming.work import Request, Result

log = logging.getLogger("rechka.batcher")

SPILL_RATIO = 0.5  # a final waiting for another's decode starts beside it (spill lane) when at most this long
RUNS_KEPT = 512  # model calls a batcher remembers (session ids and times) for final-latency traces


class BatcherClosed(RuntimeError):
    """The batcher was closed before the request ran."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a CUDA out-of-memory error (without importing torch where it is not loaded)."""
    torch = sys.modules.get("torch")
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch is not None else None
    return oom is not None and isinstance(exc, oom)


class TimedFuture(asyncio.Future):
    """A request's future with its times (``time.monotonic``): queued, model call started and finished (None until
    then), and the size of the batch it ran in, so a caller can tell queueing from compute."""

    queued_at: float = 0.0
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    batch_size: int = 0


@dataclass(order=True)
class _Item:
    priority: int
    size: int  # 0, or the request's samples when its batcher runs the shortest first
    order: int
    request: Request = field(compare=False)
    future: TimedFuture = field(compare=False)


class Batcher:
    """Batches requests for one model. Create it inside the running event loop; ``close()`` when done."""

    def __init__(self, model: BatchModel, executor: ThreadPoolExecutor, max_batch: int, max_wait: float,
                 metrics: Optional[ServerMetrics] = None, name: Optional[str] = None,
                 shortest_first: bool = False, spill: Optional[ThreadPoolExecutor] = None) -> None:
        """``shortest_first``: among requests of one priority, the one with the least audio runs first (else the
        oldest). ``spill``: a second executor that runs a batch at once while ``executor`` is busy (the CPU finals
        lane: a final that would wait for another's decode starts beside it, on one thread)."""
        if max_batch < 1:
            raise ValueError("Batcher max_batch must be >= 1")
        if max_wait < 0:
            raise ValueError("Batcher max_wait must be >= 0 seconds (a few ms is typical)")
        self.model = model
        self.name = name or model.name
        model_cap = getattr(model, "max_batch", max_batch) or max_batch
        self.max_batch = max(1, min(max_batch, model_cap))
        self.max_wait = max_wait
        self.shortest_first = shortest_first
        self._executor = executor
        self._lanes = [executor] + ([spill] if spill is not None else [])
        self._first_size = 0  # samples of the batch on the first lane (0: it is idle)
        self._kick = asyncio.Event()  # something was queued, or the first lane started a batch
        self._metrics = metrics
        self._queue: asyncio.PriorityQueue[_Item] = asyncio.PriorityQueue()
        self._order = itertools.count()
        self._queued_at: OrderedDict[int, float] = OrderedDict()  # order → monotonic submit time, oldest first
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._spill_task: Optional[asyncio.Task[None]] = None  # the spill lane's loop, started by the consumer
        self._task = self._loop.create_task(self._consume(), name=f"batcher-{self.name}")
        self.batches_run = 0
        self._since: dict[int, float] = {}  # lane → monotonic start of its model call in progress
        self.spilled = 0  # batches run on the spill lane
        # the latest model calls: (session ids of the batch, monotonic start, end), oldest first
        self.runs: deque[tuple[frozenset[str], float, float]] = deque(maxlen=RUNS_KEPT)
        self._running: dict[int, tuple[list[_Item], Interrupt]] = {}  # lane → the batch in its model call, its stop
        self.interrupted = 0  # model calls stopped because every request of the batch was cancelled

    # ------------------------------------------------------------------------------------------- public
    def submit(self, request: Request) -> TimedFuture:
        """Queue ``request``; the future resolves to its result (or raises the model's exception)."""
        future = TimedFuture(loop=self._loop)
        future.queued_at = time.monotonic()
        if self._closed:
            future.set_exception(BatcherClosed(f"{self.name} batcher is closed"))
            return future
        order = next(self._order)
        self._queued_at[order] = future.queued_at
        size = len(getattr(request, "audio", ())) if self.shortest_first else 0
        self._queue.put_nowait(_Item(int(request.priority), size, order, request, future))
        future.add_done_callback(self._on_cancelled)
        self._set_depth()
        self._kick.set()
        return future

    def _on_cancelled(self, future: asyncio.Future) -> None:
        """A request's future is done: when it was cancelled and the batch in the model has no one left waiting,
        interrupt the call."""
        if not future.cancelled():
            return
        for batch, interrupt in list(self._running.values()):
            if (not interrupt.triggered and any(i.future is future for i in batch)
                    and all(i.future.done() for i in batch)):
                self.interrupted += 1
                if self._metrics is not None:
                    self._metrics.calls_interrupted.labels(model=self.name).inc()
                interrupt.trigger()

    @property
    def running_since(self) -> Optional[float]:
        """Monotonic start of the oldest model call in progress (None when none runs)."""
        return min(self._since.values()) if self._since else None

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def oldest_wait(self) -> float:
        """Seconds the oldest request still queued has waited (0 when none is)."""
        return time.monotonic() - next(iter(self._queued_at.values())) if self._queued_at else 0.0

    def problem(self, hang_limit: float) -> Optional[str]:
        """Why this batcher cannot serve (its consumer died, its executor is unusable, a call hangs), or None."""
        if self._closed:
            return None
        if self._task.done():
            error = None if self._task.cancelled() else self._task.exception()
            return f"its inference loop stopped ({type(error).__name__ if error else 'cancelled'})"
        if self._spill_task is not None and self._spill_task.done():
            error = None if self._spill_task.cancelled() else self._spill_task.exception()
            return f"its spill lane stopped ({type(error).__name__ if error else 'cancelled'})"
        if any(getattr(lane, "_shutdown", False) or getattr(lane, "_broken", False) for lane in self._lanes):
            return "its inference thread is gone"
        if self.running_since is not None and time.monotonic() - self.running_since > hang_limit:
            return f"a model call has been running for {time.monotonic() - self.running_since:.0f} s"
        return None

    async def close(self) -> None:
        """Stop the consumer; every request not yet run fails with :class:`BatcherClosed`."""
        self._closed = True
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        while not self._queue.empty():
            item = self._queue.get_nowait()
            self._queued_at.pop(item.order, None)
            if not item.future.done():
                item.future.set_exception(BatcherClosed(f"{self.name} batcher is closed"))
        self._set_depth()

    # ------------------------------------------------------------------------------------------- consumer
    async def _consume(self) -> None:
        spill = self._spill_task = (self._loop.create_task(self._spill(), name=f"batcher-{self.name}-spill")
                                    if len(self._lanes) > 1 else None)
        try:
            while True:
                batch = await self._collect()
                batch = [item for item in batch if not item.future.done()]  # cancelled by a closed session
                if batch:
                    self._first_size = sum(item.size for item in batch)
                    self._kick.set()
                    try:
                        await self._run(batch)
                    finally:
                        self._first_size = 0
        finally:
            if spill is not None:
                spill.cancel()

    async def _spill(self) -> None:
        """The spill lane: while the first lane decodes, a queued request at most :data:`SPILL_RATIO` as long as
        that decode starts beside it (so it is out long before, and the first is slowed only briefly)."""
        while True:
            await self._kick.wait()
            self._kick.clear()
            while self._first_size and not self._queue.empty():
                item = self._queue.get_nowait()  # what the first lane would take next
                if item.future.done():
                    self._queued_at.pop(item.order, None)
                    continue
                if item.size > SPILL_RATIO * self._first_size:
                    self._queue.put_nowait(item)  # back in its place: items order by (priority, size, arrival)
                    break
                self._queued_at.pop(item.order, None)
                self._set_depth()
                self.spilled += 1
                await self._run([item], 1)

    async def _collect(self) -> list[_Item]:
        batch = [await self._queue.get()]
        deadline = self._loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        for item in batch:
            self._queued_at.pop(item.order, None)
        self._set_depth()
        batch.sort()
        return batch

    async def _run(self, batch: list[_Item], lane: int = 0) -> None:
        requests = [item.request for item in batch]
        started = time.monotonic()
        for item in batch:
            item.future.started_at, item.future.batch_size = started, len(batch)
            if self._metrics is not None:
                self._metrics.queue_wait.labels(model=self.name, priority=item.request.priority.name.lower()).observe(
                    started - item.future.queued_at)
        interrupt = Interrupt()
        self._running[lane] = (batch, interrupt)
        try:
            results = await self._call(requests, interrupt, lane)
        except asyncio.CancelledError:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(BatcherClosed(f"{self.name} batcher is closed"))
            raise
        except Exception as exc:  # noqa: BLE001 - any model failure goes to the requests
            if interrupt.triggered or len(batch) == 1:  # interrupted: every request was cancelled, nobody waits
                self._resolve(batch[0], exc=exc)
                return
            if is_out_of_memory(exc):  # smaller batches may fit: halve and retry each half
                log.warning("%s: batch of %d ran out of GPU memory; retrying as two of %d and %d", self.name,
                            len(batch), len(batch) // 2, len(batch) - len(batch) // 2)
                half = len(batch) // 2
                await self._run(batch[:half], lane)
                await self._run(batch[half:], lane)
                return
            log.warning("%s: batch of %d failed (%s); retrying one by one", self.name, len(batch), exc)
            for item in batch:
                if item.future.done():
                    continue
                try:
                    (result,) = await self._call([item.request], lane=lane)
                except asyncio.CancelledError:
                    raise
                except Exception as single_exc:  # noqa: BLE001
                    self._resolve(item, exc=single_exc)
                else:
                    self._resolve(item, result=result)
            return
        finally:
            self._running.pop(lane, None)
        for item, result in zip(batch, results):
            self._resolve(item, result=result)

    async def _call(self, requests: list[Request], interrupt: Optional[Interrupt] = None,
                    lane: int = 0) -> list[Result]:
        started = time.perf_counter()
        since = self._since[lane] = time.monotonic()
        try:
            results = await self._loop.run_in_executor(self._lanes[lane], self._run_batch, requests, interrupt)
        except Exception:
            if self._metrics is not None and not (interrupt is not None and interrupt.triggered):
                self._metrics.batch_failures.labels(model=self.name).inc()
            raise
        finally:
            self.runs.append((frozenset(r.session_id for r in requests), since, time.monotonic()))
            self._since.pop(lane, None)
            self.batches_run += 1
            if self._metrics is not None:
                self._metrics.add_busy(self.name, time.perf_counter() - started)
                self._metrics.batch_size.labels(model=self.name).observe(len(requests))
        return results

    def _run_batch(self, requests: Sequence[Request], interrupt: Optional[Interrupt] = None) -> list[Result]:
        """On the inference thread."""
        set_current_interrupt(interrupt)
        cpu = time.thread_time()
        try:
            results = list(self.model.run_batch(requests))
        finally:
            set_current_interrupt(None)
            if self._metrics is not None:
                self._metrics.model_cpu.labels(model=self.name).inc(time.thread_time() - cpu)
        if len(results) != len(requests):
            raise RuntimeError(f"{self.name}.run_batch returned {len(results)} results for {len(requests)} requests")
        return results

    @staticmethod
    def _resolve(item: _Item, result: Optional[Result] = None, exc: Optional[BaseException] = None) -> None:
        if item.future.done():
            return
        item.future.finished_at = time.monotonic()
        if exc is not None:
            item.future.set_exception(exc)
        else:
            item.future.set_result(result)

    def _set_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.labels(model=self.name).set(self._queue.qsize())
