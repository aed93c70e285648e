"""The shared fakes of ``tests/fakes.py`` and ``tests/fakes_diarization.py`` as :class:`BatchModel` adapters.

:class:`FakeAdapter` wraps one batch function, records every batch's size, can sleep on the inference thread
(so requests from many sessions pile up into batches) and can fail requests chosen by a predicate (the whole
``run_batch`` call raises, like a real model would).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional, Sequence

from streaming.work import Request, Result
from tests.fakes import FakeAsr, FakeVad
from tests.fakes_diarization import FakeEmbedding, FakeSegmentation


class ModelFailure(RuntimeError):
    """What a fake raises for a poisoned request (its text must never reach a client)."""


class FakeAdapter:
    """``BatchModel`` over a batch function ``list[Request] -> list[Result]``."""

    def __init__(self, name: str, function: Callable[[list[Request]], Sequence[Result]], max_batch: int = 64,
                 delay: float = 0.0, fail_if: Optional[Callable[[Request], bool]] = None) -> None:
        self.name = name
        self.function = function
        self.max_batch = max_batch
        self.delay = delay
        self.fail_if = fail_if
        self.batch_sizes: list[int] = []
        self.failed_batches: list[int] = []  # sizes of the batches that raised
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def run_batch(self, requests: Sequence[Request]) -> list[Result]:
        with self._lock:
            self.batch_sizes.append(len(requests))
            self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        if self.fail_if is not None and any(self.fail_if(r) for r in requests):
            self.failed_batches.append(len(requests))
            raise ModelFailure("secret internal detail: CUDA out of memory at /opt/model.py:123")
        return list(self.function(list(requests)))

    def warmup(self) -> None:
        pass

    def modules(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"name": f"fake-{self.name}", "checkpoint": None}


def fake_models(delay: float = 0.0, asr_fail_if: Optional[Callable[[Request], bool]] = None,
                max_batch: int = 64) -> dict[str, FakeAdapter]:
    """The four adapters a server needs, over fresh fakes; ``delay`` seconds per batch for VAD and ASR."""
    return {
        "vad": FakeAdapter("vad", FakeVad(), max_batch, delay),
        "segmentation": FakeAdapter("segmentation", FakeSegmentation(), max_batch),
        "embedding": FakeAdapter("embedding", FakeEmbedding(), max_batch),
        "asr": FakeAdapter("asr", FakeAsr(), max_batch, delay, fail_if=asr_fail_if),
    }


FAKE_PLACEMENT = {name: {"device": "cpu", "dtypes": ["float32"], "parameters": 0}
                  for name in ("vad", "segmentation", "embedding", "asr")}
