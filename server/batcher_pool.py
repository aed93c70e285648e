"""The server's batchers and inference threads: :class:`BatcherPool` (one :class:`~server.batcher.Batcher` per
model, two for GigaAM on the CPU) routes each request to its model's batcher and reports their health.

Which thread runs what: on a GPU one inference thread per device; on the CPU the VAD and GigaAM's finals have a
thread each (:data:`OWN_CPU_THREAD`), finals one at a time (:data:`CPU_FINAL_BATCH`) with an optional spill thread
(``final_lanes``), and the partial decodes (:data:`PARTIAL_LANE`), segmentation and embeddings share
``cpu_threads`` threads run ``background_nice`` steps lower (Linux). See :mod:`server.batcher` for the batching.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping, Optional

from server.batcher import Batcher, TimedFuture
from server.metrics import ServerMetrics
from server.models.base import BatchModel, set_spill_lane
from streaming.work import AsrKind, AsrRequest, EmbeddingRequest, Request, SegmentationRequest, VadRequest

log = logging.getLogger("rechka.batcher")

MODEL_FOR_REQUEST: dict[type, str] = {
    VadRequest: "vad",
    SegmentationRequest: "segmentation",
    EmbeddingRequest: "embedding",
    AsrRequest: "asr",
}

PARTIAL_LANE = "asr-partials"  # the batcher of GigaAM's partial decodes on the CPU (finals keep "asr")
# on the CPU a batch costs about the sum of its decodes (ONNX int8, 5 s: 4 in one batch 3.5x one alone), so GigaAM's
# finals run one at a time, the shortest first: each is out once its own decode is done, not the whole batch's
CPU_FINAL_BATCH = 1
OWN_CPU_THREAD = {"vad": "cpu-vad", "asr": "cpu-final"}  # batchers with a CPU inference thread of their own


def lower_thread_priority(steps: int) -> None:
    """Make the calling thread ``steps`` nice levels less urgent (Linux: per thread; elsewhere nothing)."""
    if steps <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + steps))
    except OSError as exc:  # a sandbox may refuse; the threads then share the cores evenly
        log.warning("could not lower an inference thread's priority: %s", exc)


class BatcherPool:
    """The batchers of a server (one per model, two for GigaAM on the CPU) and the inference threads."""

    def __init__(self, models: Mapping[str, BatchModel], devices: Mapping[str, str], max_batch: int,
                 max_wait: float, metrics: Optional[ServerMetrics] = None, cpu_threads: int = 1,
                 background_nice: int = 0, final_lanes: int = 1) -> None:
        if cpu_threads < 1:
            raise ValueError("BatcherPool cpu_threads must be >= 1")
        if not 0 <= background_nice <= 19:
            raise ValueError("BatcherPool background_nice must be 0-19 (0: all inference threads equal)")
        self._executors: dict[str, ThreadPoolExecutor] = {}  # "cpu", "cuda:0", …, "cpu-vad" and "cpu-final"
        self._devices = tuple(dict.fromkeys(devices.get(name, "cpu") for name in models))
        self.batchers: dict[str, Batcher] = {}
        self._reported: dict[str, str] = {}
        lanes = [(name, name, model) for name, model in models.items()]
        if devices.get("asr", "cpu") == "cpu" and "asr" in models:
            lanes.append((PARTIAL_LANE, "asr", models["asr"]))
        for name, model_name, model in lanes:
            device = devices.get(model_name, "cpu")
            # on the CPU the VAD (about a millisecond a call) and GigaAM's finals have a thread each: every final
            # waits for the VAD to see its pause, and a shared thread made both wait behind whole decodes
            key = OWN_CPU_THREAD.get(name, device) if device == "cpu" else device
            executor = self._executors.get(key)
            if executor is None:
                shared = key == "cpu"
                executor = ThreadPoolExecutor(
                    max_workers=cpu_threads if shared else 1, thread_name_prefix=f"infer-{key}",
                    initializer=lower_thread_priority, initargs=(background_nice if shared else 0,))
                self._executors[key] = executor
            final_lane = key == "cpu-final"
            spill = None
            if final_lane and final_lanes > 1:  # a final that would wait for another's decode starts beside it
                spill = self._executors["cpu-final-spill"] = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="infer-cpu-final-spill", initializer=set_spill_lane)
            self.batchers[name] = Batcher(model, executor, CPU_FINAL_BATCH if final_lane else max_batch, max_wait,
                                          metrics, name=name, shortest_first=final_lane, spill=spill)

    def problems(self, hang_limit: float) -> dict[str, str]:
        """Model name → why its batcher cannot serve; each new problem is logged once with the model's name."""
        found: dict[str, str] = {}
        for name, b in self.batchers.items():  # GigaAM's partial lane reports as its model
            if (why := b.problem(hang_limit)) is not None:
                found.setdefault("asr" if name == PARTIAL_LANE else name, why)
        for name, why in found.items():
            if self._reported.get(name) != why.split(" for ")[0]:
                self._reported[name] = why.split(" for ")[0]
                label = self.batchers[name].model.describe().get("name", name)
                log.error("model %s (%s) is unhealthy: %s", name, label, why)
        return found

    def oldest_wait(self, model: str) -> float:
        """Seconds the oldest request queued for ``model`` has waited (0 when none is, or no such batcher)."""
        batcher = self.batchers.get(model)
        return batcher.oldest_wait if batcher is not None else 0.0

    def ran_during(self, model: str, session_id: str, start: float, end: float) -> tuple[float, float]:
        """Seconds of ``[start, end]`` (monotonic) during which ``model``'s batcher ran a batch holding a request of
        ``session_id``, and one of other sessions only (what a request queued then waited behind)."""
        own = other = 0.0
        batcher = self.batchers.get(model)
        for sessions, a, b in batcher.runs if batcher is not None else ():
            overlap = min(b, end) - max(a, start)
            if overlap > 0:
                if session_id in sessions:
                    own += overlap
                else:
                    other += overlap
        return own, other

    def busy_during(self, start: float, end: float) -> dict[str, float]:
        """Seconds of ``[start, end]`` (monotonic) each batcher spent in model calls (its lanes summed): what ran on
        the cores beside a model call in that window."""
        return {name: round(sum(max(0.0, min(b, end) - max(a, start)) for _, a, b in batcher.runs), 4)
                for name, batcher in self.batchers.items()}

    def submit(self, request: Request) -> TimedFuture:
        """Route ``request`` to the batcher of its model (a partial decode to :data:`PARTIAL_LANE` if there is one)."""
        if isinstance(request, AsrRequest) and request.kind == AsrKind.PARTIAL and PARTIAL_LANE in self.batchers:
            return self.batchers[PARTIAL_LANE].submit(request)
        return self.batchers[MODEL_FOR_REQUEST[type(request)]].submit(request)

    @property
    def devices(self) -> tuple[str, ...]:
        return self._devices

    async def close(self) -> None:
        for batcher in self.batchers.values():
            await batcher.close()
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
