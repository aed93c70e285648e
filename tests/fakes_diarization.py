"""Tiny deterministic stand-ins for the segmentation and embedding models: the speaker is the tone.

Speaker ``i`` "speaks" a sine tone of ``TONES[i]`` Hz, so a test can compose a conversation (with overlaps) whose
reference is known exactly. :class:`FakeSegmentation` measures each tone's amplitude per frame and reports the tones
present in a window as local speakers in a seeded, window-dependent order (so local indices really have to be
mapped), or, with ``merge``, all tones as one local speaker (the model's failure when one voice follows another);
:class:`FakeEmbedding` returns a fixed random unit vector per tone (their mix for several) plus seeded noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from streaming.config import SAMPLE_RATE
from streaming.work import (EmbeddingRequest, EmbeddingResult, Request, Result, SegmentationRequest,
                            SegmentationResult)

SR = SAMPLE_RATE
TONES = (300.0, 500.0, 700.0, 900.0, 1100.0, 1300.0)
FRAME_STEP = 320.0        # 20 ms
FRAME_DURATION = 640.0    # 40 ms
LOCAL_SPEAKERS = 3
AMPLITUDE = 0.3


@dataclass(frozen=True)
class Speech:
    """Speaker ``speaker`` (an index into ``TONES``) is active over samples ``[start, end)``."""

    speaker: int
    start: int
    end: int


def synthesize(turns: Sequence[Speech], total: int) -> np.ndarray:
    """A float32 signal of ``total`` samples: each turn's tone, summed where turns overlap."""
    t = np.arange(total) / SR
    out = np.zeros(total, dtype=np.float64)
    for turn in turns:
        a, b = max(0, turn.start), min(total, turn.end)
        out[a:b] += AMPLITUDE * np.sin(2 * np.pi * TONES[turn.speaker] * t[a:b])
    return out.astype(np.float32)


def tone_amplitudes(frames: np.ndarray) -> np.ndarray:
    """``(n_frames, len(TONES))`` amplitude of each tone in each row of ``frames``."""
    t = np.arange(frames.shape[1]) / SR
    basis = np.exp(-2j * np.pi * np.outer(t, TONES))
    return 2 * np.abs(frames.astype(np.float64) @ basis) / frames.shape[1]


class FakeSegmentation:
    """Frame scores from tone presence; up to ``LOCAL_SPEAKERS`` tones per window, in a seeded order."""

    def __init__(self, seed: int = 0, threshold: float = AMPLITUDE / 3, merge: bool = False) -> None:
        self.seed = seed
        self.threshold = threshold
        self.merge = merge
        self.windows_seen = 0

    def __call__(self, requests: Sequence[SegmentationRequest]) -> list[SegmentationResult]:
        return [self._one(r) for r in requests]

    def _one(self, request: SegmentationRequest) -> SegmentationResult:
        self.windows_seen += 1
        audio = np.asarray(request.audio, dtype=np.float64)
        n_frames = int((len(audio) - FRAME_DURATION) // FRAME_STEP) + 1
        idx = (np.arange(n_frames)[:, None] * int(FRAME_STEP)) + np.arange(int(FRAME_DURATION))[None, :]
        present = tone_amplitudes(audio[idx]) > self.threshold
        tones = [i for i in range(len(TONES)) if present[:, i].any()]
        rng = np.random.default_rng([self.seed, request.start + 10**9])
        order = [tones[i] for i in rng.permutation(len(tones))][:LOCAL_SPEAKERS]
        slots = rng.permutation(LOCAL_SPEAKERS)
        scores = np.full((n_frames, LOCAL_SPEAKERS), 0.03, dtype=np.float32)
        for tone, slot in zip(order, slots):
            scores[present[:, tone], slots[0] if self.merge else slot] = 0.95
        return SegmentationResult(request.session_id, request.seq, scores, FRAME_STEP, FRAME_DURATION, 0.0)


class FakeEmbedding:
    """A fixed unit vector per tone, plus seeded noise of norm about ``noise``; audio holding several tones (overlapped
    speech) gets the amplitude-weighted mix of their vectors, as a real encoder describes a mixture."""

    def __init__(self, dim: int = 32, noise: float = 0.1, seed: int = 0) -> None:
        base = np.random.default_rng(seed).normal(size=(len(TONES), dim))
        self.base = base / np.linalg.norm(base, axis=1, keepdims=True)
        self.noise = noise
        self.rng = np.random.default_rng(seed + 1)
        self.requests: list[EmbeddingRequest] = []

    def __call__(self, requests: Sequence[EmbeddingRequest]) -> list[EmbeddingResult]:
        out = []
        for r in requests:
            self.requests.append(r)
            audio = np.asarray(r.audio, dtype=np.float64)
            amplitudes = tone_amplitudes(audio[None, :])[0]
            weights = np.where(amplitudes > 0.1 * amplitudes.max(), amplitudes, 0.0)
            mix = weights @ self.base
            vector = mix / np.linalg.norm(mix) + self.rng.normal(size=self.base.shape[1]) * self.noise / np.sqrt(
                self.base.shape[1])
            out.append(EmbeddingResult(r.session_id, r.seq, vector.astype(np.float32)))
        return out


def spread_voice(distance: float = 0.4, noise: float = 0.05) -> FakeEmbedding:
    """A :class:`FakeEmbedding` whose tone 1 lies ``distance`` (cosine) from tone 0: with a ``merge_distance`` above
    it and a ``new_speaker_threshold`` below, one widely spread voice that founds a second label, later merged."""
    embedding = FakeEmbedding(noise=noise)
    a, b = embedding.base[0], embedding.base[1]
    across = b - (b @ a) * a
    angle = np.arccos(1.0 - distance)
    embedding.base[1] = np.cos(angle) * a + np.sin(angle) * across / np.linalg.norm(across)
    return embedding


#: One spread voice (tone 0, then tone 1 — founding S2 —, then tone 0 long enough to merge S2 into S1) and the
#: tracker settings that merge it: with :func:`spread_voice`, S2's final turn is out before the merge (at ~17.5 s).
SPREAD_VOICE = (Speech(0, 8_000, 96_000), Speech(1, 112_000, 192_000), Speech(0, 208_000, 384_000))
SPREAD_VOICE_LENGTH = 400_000
SPREAD_MERGE = {"merge_distance": 0.5, "merge_count": 30}


def spread_voice_session_run() -> Callable[[list[Request]], list[Result]]:
    """A ``server.offline`` run function for a whole session: fake VAD and ASR, the fake segmentation and
    :func:`spread_voice`."""
    from server.offline import run_requests_by_kind
    from tests.fakes import FakeAsr, FakeVad  # it imports this module
    from streaming.work import AsrRequest, VadRequest

    return run_requests_by_kind({VadRequest: FakeVad(), AsrRequest: FakeAsr(), SegmentationRequest: FakeSegmentation(),
                                 EmbeddingRequest: spread_voice()})


class ArrayBuffer:
    """The slice of ``streaming.audio.AudioBuffer`` the diarizer uses, over a growing array."""

    def __init__(self) -> None:
        self._data = np.zeros(0, dtype=np.float32)
        self.start = 0

    @property
    def end(self) -> int:
        return self.start + len(self._data)

    def append(self, x: np.ndarray) -> None:
        self._data = np.concatenate([self._data, np.asarray(x, dtype=np.float32)])

    def read(self, a: int, b: int) -> np.ndarray:
        if a < self.start or b > self.end or a > b:
            raise ValueError(f"[{a}, {b}) is not retained (have [{self.start}, {self.end}))")
        return self._data[a - self.start:b - self.start].copy()

    def discard_before(self, n: int) -> None:
        n = min(max(n, self.start), self.end)
        self._data = self._data[n - self.start:]
        self.start = n


def run_fakes(segmentation: Callable[[list], list], embedding: Callable[[list], list]
              ) -> Callable[[list[Request]], list[Result]]:
    """One batch function dispatching requests by type, results in request order."""

    def run(requests: list[Request]) -> list[Result]:
        seg = [r for r in requests if isinstance(r, SegmentationRequest)]
        emb = [r for r in requests if isinstance(r, EmbeddingRequest)]
        by_seq = {res.seq: res for res in list(segmentation(seg)) + list(embedding(emb))}
        return [by_seq[r.seq] for r in requests]

    return run


def stream(diarizer, audio: np.ndarray, run: Callable[[list[Request]], list[Result]], chunk: int = 4000,
           delay: int = 0, discard: bool = True, on_chunk: Optional[Callable[[ArrayBuffer], None]] = None) -> ArrayBuffer:
    """Feed ``audio`` to ``diarizer`` in chunks, answering its requests with ``run``; results are held back for
    ``delay`` chunks (and then returned newest first) to exercise out-of-order arrival; then finish and drain.
    With ``discard`` the buffer drops what the diarizer no longer needs after each chunk; ``on_chunk`` sees the
    buffer after each chunk."""
    buffer = ArrayBuffer()
    queue: list[tuple[int, list[Request]]] = []

    def deliver(requests: list[Request]) -> list[Request]:
        follow: list[Request] = []
        for result in reversed(run(requests)) if requests else ():
            follow += diarizer.on_result(result, buffer)
        return follow

    for i, a in enumerate(range(0, len(audio), chunk)):
        buffer.append(audio[a:a + chunk])
        queue.append((i, diarizer.on_audio(buffer)))
        ready = [reqs for j, reqs in queue if j <= i - delay]
        queue = [(j, reqs) for j, reqs in queue if j > i - delay]
        for reqs in ready:
            follow = deliver(reqs)
            if follow:
                queue.append((i, follow))
        if discard:
            buffer.discard_before(diarizer.oldest_needed)
        if on_chunk is not None:
            on_chunk(buffer)
    pending = [r for _, reqs in queue for r in reqs] + diarizer.finish(buffer)
    while pending:
        pending = deliver(pending)
    return buffer
