"""What every model adapter offers the batchers: a stateless batch function plus what the device audit needs.

An adapter is loaded once per process and shared by all sessions. ``run_batch`` takes requests from *many*
sessions (see ``streaming.work``) and returns one result per request, in order; per-stream state travels inside
the requests. It raises on failure, and the batcher hands that error to every request of the batch.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

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
