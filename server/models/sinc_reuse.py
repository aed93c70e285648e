"""SincNet's first convolution computed once per stream: consecutive diarization windows overlap (5 s windows every
0.5 s: ten-fold), and PyanNet's sinc filterbank (80 filters of 251 taps, stride 10) is linear, so a window's filter
responses over the audio it shares with the stream's previous window are that window's, shifted.

Exactness: the network normalises each waveform before the filterbank (instance norm, per window: ``y = k x + c``
with ``k = weight / sqrt(var + eps)``, ``c = bias - k mean``), so the responses of the normalised window are
``k conv(x) + c sum(filter)``: the graph after the filterbank (:class:`~server.models.diarization_onnx.
_ScoresAfterSinc`) takes the raw responses ``conv(x)`` and the window and applies ``k`` and ``c`` itself. ``conv(x)``
at a frame depends only on the 251 samples under it, so a frame is reused only when the new window starts a multiple
of the stride after the old one *and* the samples they share are equal (compared, not assumed: a stream whose
buffer dropped audio, a tail window, another file under the same session id recompute). The only differences from
the whole-window network are float32 rounding (another order of the same sums; tests/server/models/
test_sinc_reuse.py bounds them).

Pooling and everything after it run per window (the per-window ``k`` and ``c`` come before the absolute value), so
they need no alignment. Memory: per stream the last window's samples and responses (80 × 7975 float32, 2.6 MB for
PyanNet's 5 s), for at most ``streams`` streams (least recently used dropped first).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from streaming.work import SegmentationRequest


@dataclass
class _Stream:
    """A stream's last window: where it starts, its samples, and its raw filter responses in columns
    ``first .. first + count`` of ``frames`` (``(filters, capacity)``: new frames are appended after them, and the
    reusable ones moved to the front only when the end is reached)."""

    start: int
    audio: np.ndarray
    frames: np.ndarray
    first: int = 0
    count: int = 0


class SincReuse:
    """The raw sinc filter responses of a batch of windows, reusing each stream's previous window's frames.

    ``filterbank(batch)``: ``(B, 1, samples)`` float32 → ``(B, filters, frames)`` (the convolution, no padding);
    ``taps`` and ``stride``: its kernel size and stride. Not thread-safe: one batcher thread calls it.
    """

    def __init__(self, filterbank: Callable[[np.ndarray], np.ndarray], taps: int, stride: int,
                 streams: int = 32) -> None:
        if taps < 1 or stride < 1 or streams < 1:
            raise ValueError("SincReuse needs taps, stride and streams >= 1")
        self.filterbank, self.taps, self.stride, self.streams = filterbank, taps, stride, streams
        self._streams: OrderedDict[tuple[str, int], _Stream] = OrderedDict()
        self.frames_reused = 0
        self.frames_computed = 0

    def frames(self, samples: int) -> int:
        return max(0, 1 + (samples - self.taps) // self.stride)

    def filtered(self, batch: np.ndarray, requests: Optional[Sequence[SegmentationRequest]] = None) -> np.ndarray:
        """``(B, 1, samples)`` windows (``requests[i]`` says whose and where ``batch[i]`` starts; without requests
        nothing is reused or kept) → ``(B, filters, frames)`` raw responses, as ``filterbank(batch)`` gives them.
        Rows go one by one, so a stream's later window in the same batch reuses its earlier one."""
        rows, samples = batch.shape[0], batch.shape[2]
        if samples < self.taps:
            raise ValueError(f"windows must have at least {self.taps} samples, got {samples}")
        if requests is None:
            self.frames_computed += rows * self.frames(samples)
            return self.filterbank(batch)
        total = self.frames(samples)
        out: Optional[np.ndarray] = None
        for row, request in enumerate(requests):
            stream, reused = self._reusable(batch[row, 0], request, total)
            if reused < total:
                fresh = self.filterbank(np.ascontiguousarray(batch[row:row + 1, :, reused * self.stride:]))[0]
                if stream is None:
                    stream = _Stream(request.start, batch[row, 0], np.empty((fresh.shape[0], 2 * total), np.float32))
                stream.frames[:, stream.first + reused:stream.first + total] = fresh
            assert stream is not None
            stream.start, stream.audio, stream.count = request.start, batch[row, 0].copy(), total
            if out is None:
                out = np.empty((rows, stream.frames.shape[0], total), np.float32)
            out[row] = stream.frames[:, stream.first:stream.first + total]
            self._keep((request.session_id, request.channel), stream)
            self.frames_reused += reused
            self.frames_computed += total - reused
        assert out is not None
        return out

    def _reusable(self, audio: np.ndarray, request: SegmentationRequest, total: int) -> tuple[Optional[_Stream], int]:
        """The request's stream (None: not known, or nothing reusable) and how many of the window's first frames
        are its last window's, moved so that ``total`` frames fit from ``first`` on."""
        stream = self._streams.get((request.session_id, request.channel))
        if stream is None:
            return None, 0
        shift = request.start - stream.start
        capacity = stream.frames.shape[1]
        if shift < 0 or shift % self.stride or capacity < total:
            return None, 0
        shared = min(len(stream.audio) - shift, len(audio))
        count = min(self.frames(shared), total, stream.count - shift // self.stride)
        if count <= 0 or not np.array_equal(audio[:shared], stream.audio[shift:shift + shared]):
            return None, 0
        first = stream.first + shift // self.stride
        if first + total > capacity:  # the end is reached: the reusable frames to the front
            stream.frames[:, :count] = stream.frames[:, first:first + count]
            first = 0
        stream.first = first
        return stream, count

    def _keep(self, key: tuple[str, int], stream: _Stream) -> None:
        self._streams[key] = stream
        self._streams.move_to_end(key)
        while len(self._streams) > self.streams:
            self._streams.popitem(last=False)
