"""The model work a :class:`~streaming.session.Session` asks for, and the results it takes back.

Every request carries the id of the session that made it and a sequence number unique within that session, so a
result can be routed back and a stale one (closed session, superseded request) can be dropped. Sample positions
are absolute offsets into the 16 kHz stream of one channel. Audio is float32 mono in [-1, 1] at 16 kHz.

Requests are plain data: a model adapter in ``server/models`` turns a *batch* of requests (from many sessions) into
results, and per-stream model state (the VAD's recurrent state) travels inside the request and the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Optional, Union

import numpy as np


class Priority(IntEnum):
    """Batchers run lower values first: a final never waits behind partials."""

    FINAL = 0
    NORMAL = 1
    PARTIAL = 2


@dataclass(frozen=True, eq=False)
class VadRequest:
    """Speech probabilities for ``len(audio) // 512`` consecutive 512-sample chunks of one stream.

    ``state`` is the opaque recurrent state returned by the previous :class:`VadResult` of the same stream
    (``None`` for a fresh stream). At most one VAD request per stream is in flight, so states chain in order.
    """

    session_id: str
    seq: int
    channel: int
    start: int
    audio: np.ndarray
    state: Any = None
    priority: Priority = Priority.NORMAL


@dataclass(frozen=True, eq=False)
class SegmentationRequest:
    """Frame-level speaker activity for one diarization window ``[start, start + len(audio))``."""

    session_id: str
    seq: int
    channel: int
    start: int
    audio: np.ndarray
    priority: Priority = Priority.NORMAL


@dataclass(frozen=True, eq=False)
class EmbeddingRequest:
    """One speaker embedding for ``audio``: the samples of one local speaker of one window, concatenated.

    ``spans``: the absolute ``[a, b)`` sample ranges of the stream that ``audio`` concatenates, in order (empty when
    the caller did not say); models ignore them, evaluation uses them (``benchmarks/oracle_embeddings.py``);
    ``ResemblyzerEmbedding(reuse_partials=True)`` reads them and ``window_edge``."""

    session_id: str
    seq: int
    channel: int
    start: int
    audio: np.ndarray
    window_seq: int = -1
    local_speaker: int = -1
    priority: Priority = Priority.NORMAL
    spans: tuple[tuple[int, int], ...] = ()
    window_edge: bool = False  # the speech starts at its window's first frame (the window cut it there)


class AsrKind(IntEnum):
    FINAL = 0
    PARTIAL = 1


@dataclass(frozen=True, eq=False)
class AsrRequest:
    """Decode ``audio`` (``start`` is its absolute position) once; a final covers a whole utterance.

    ``cache_lookahead`` (a partial of ``PartialOptions.cached_context``): not ``None`` = continue the encoder cache
    of utterance ``(session_id, channel, utterance_id)`` with this audio (that many provisional frames); the result
    is then the whole utterance so far (words before ``start`` have negative offsets)."""

    session_id: str
    seq: int
    channel: int
    start: int
    audio: np.ndarray
    utterance_id: int
    kind: AsrKind
    priority: Priority = Priority.PARTIAL
    cache_lookahead: Optional[int] = None

    def __post_init__(self) -> None:
        if self.kind == AsrKind.FINAL and self.priority != Priority.FINAL:
            object.__setattr__(self, "priority", Priority.FINAL)


Request = Union[VadRequest, SegmentationRequest, EmbeddingRequest, AsrRequest]


@dataclass(frozen=True)
class Word:
    """A recognised word; ``start``/``end`` are sample offsets *relative to the request's audio*."""

    text: str
    start: int
    end: int


@dataclass(frozen=True, eq=False)
class VadResult:
    session_id: str
    seq: int
    probs: np.ndarray  # float32, one per 512-sample chunk of the request
    state: Any


@dataclass(frozen=True, eq=False)
class SegmentationResult:
    """``scores[f, k]`` in [0, 1]: activity of local speaker ``k`` in frame ``f``.

    Frame ``f`` covers samples ``[offset + f * step, offset + f * step + duration)`` relative to the window start.
    """

    session_id: str
    seq: int
    scores: np.ndarray
    frame_step: float
    frame_duration: float
    frame_offset: float = 0.0


@dataclass(frozen=True, eq=False)
class EmbeddingResult:
    session_id: str
    seq: int
    embedding: np.ndarray  # float32 (D,), not necessarily normalised


@dataclass(frozen=True, eq=False)
class AsrResult:
    session_id: str
    seq: int
    text: str
    words: tuple[Word, ...] = field(default_factory=tuple)
    whole_utterance: bool = False  # a cached partial: ``words`` are the whole utterance so far (AsrRequest.cache_lookahead)


Result = Union[VadResult, SegmentationResult, EmbeddingResult, AsrResult]
