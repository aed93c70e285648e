"""What every model adapter offers the batchers: a stateless batch function plus what the device audit needs.

An adapter is loaded once per process and shared by all sessions. ``run_batch`` takes requests from *many*
sessions (see ``streaming.work``) and returns one result per request, in order; per-stream state travels inside
the requests. It raises on failure, and the batcher hands that error to every request of the batch.

A call whose every request was cancelled while it ran (a speculative final whose pause ended in speech) is
:class:`Interrupt`-ed: an adapter that can stop mid-call binds a stopper with :func:`current_interrupt` for the call's
duration (the ONNX engine: ``RunOptions.terminate``); the call may then raise, and nobody waits for its results.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence, runtime_checkable

from streaming.work import Request, Result


@runtime_checkable
class BatchModel(Protocol):
    """A model family behind one batcher ("vad", "segmentation", "embedding" or "asr")."""

    name: str
    max_batch: int

    def run_batch(self, requests: Sequence[Request]) -> list[Result]:
        """One result per request, in order. Runs on the device's inference thread."""
        ...

    def warmup(self) -> None:
        """Run once on dummy input so the first real request pays no lazy initialisation."""
        ...

    def modules(self) -> dict[str, Any]:
        """Every ``torch.nn.Module`` (or tensor holder) the adapter computes with, by name, for the device audit."""
        ...

    def describe(self) -> dict[str, Any]:
        """Identity for ``ready``/``/health``: at least ``{"name": ..., "checkpoint": ...}``; placement comes from
        the audit, never from here."""
        ...


class Interrupt:
    """One model call's stop request. The batcher calls :meth:`trigger` from the event loop; the adapter, on the
    inference thread, runs its call under :meth:`bound` with a stopper (called at once if the trigger came first)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.triggered = False
        self._stop: Optional[Callable[[], None]] = None

    def trigger(self) -> None:
        with self._lock:
            self.triggered = True
            stop = self._stop
        if stop is not None:
            stop()

    @contextmanager
    def bound(self, stop: Callable[[], None]) -> Iterator[None]:
        """While the block runs, :meth:`trigger` calls ``stop``."""
        with self._lock:
            self._stop = stop
            triggered = self.triggered
        if triggered:
            stop()
        try:
            yield
        finally:
            with self._lock:
                self._stop = None


_CALL = threading.local()  # the Interrupt of the model call running on this thread


def current_interrupt() -> Optional[Interrupt]:
    """The :class:`Interrupt` of the model call running on this thread (None outside a batcher's call)."""
    return getattr(_CALL, "interrupt", None)


def set_current_interrupt(interrupt: Optional[Interrupt]) -> None:
    """The batcher, on the inference thread, around ``run_batch``."""
    _CALL.interrupt = interrupt


_LANE = threading.local()


def set_spill_lane() -> None:
    """Mark the calling inference thread as the finals' spill lane (server.batcher_pool): finals decoded on it use the
    adapter's ordinary thread count, not its finals' one (the cores are shared with the finals lane's decode)."""
    _LANE.spill = True


def on_spill_lane() -> bool:
    return getattr(_LANE, "spill", False)
