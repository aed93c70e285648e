"""Segmentation windows: when to ask for one, and how to aggregate their overlapping frame scores.

A window ``[end - window, end)`` is due every ``step`` samples of new audio; window ends are multiples of ``step``,
so the first one is due as soon as ``step`` samples exist. Early windows reach before the start of the stream (or
before the oldest retained sample): that part is zero padding, marked by :attr:`Window.pad`, and frames whose centre
lies in it are never aggregated.

Aggregation happens on a global frame grid whose resolution is the model's frame step (taken from the first result).
Window frame ``f`` lands on global frame ``round((window.start + f * step) / step)``; a frame's activity for a global
speaker is the average, over the windows covering that frame, of the score of the window's local speaker mapped to
that global speaker (0 when none is). With ``aggregation="hamming"`` (the default) the average is weighted by a
Hamming window over each window's frames, so a window speaks mostly about its middle and little about its edges,
where the model had no context (the newest window, which knows least about a frame near its end, counts least);
``"mean"`` weighs all windows equally. Several speakers may be active in one frame. Frames before :meth:`freeze`'s bound are
final: later windows no longer change them, and their storage is released.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np

from streaming.config import DiarizationOptions


class SampleSource(Protocol):
    """What :meth:`SegmentationWindows.cut` needs from ``streaming.audio.AudioBuffer``."""

    @property
    def start(self) -> int: ...

    @property
    def end(self) -> int: ...

    def read(self, a: int, b: int) -> np.ndarray: ...


@dataclass(frozen=True)
class Window:
    """One segmentation window ``[start, end)``; its first ``pad`` samples are zeros, not stream audio."""

    start: int
    end: int
    pad: int = 0

    @property
    def audio_start(self) -> int:
        """The first sample of real audio in the window."""
        return self.start + self.pad


@dataclass(frozen=True)
class FrameGeometry:
    """Frame ``f`` of a window covers ``[offset + f * step, offset + f * step + duration)`` samples from its start."""

    step: float
    duration: float
    offset: float = 0.0

    def __post_init__(self) -> None:
        if not (self.step > 0 and self.duration > 0):
            raise ValueError("FrameGeometry.step and .duration must be positive sample counts")

    @property
    def center(self) -> float:
        """Centre of frame 0, relative to the window start."""
        return self.offset + self.duration / 2

    def centers(self, n_frames: int) -> np.ndarray:
        """Centres of frames ``0 … n_frames - 1`` relative to the window start (samples, float)."""
        return self.center + self.step * np.arange(n_frames)

    def bounds(self, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample spans ``[lo, hi)`` (relative, int) of each frame's centre region: contiguous and non-overlapping."""
        centers = self.centers(n_frames)
        lo = np.floor(centers - self.step / 2).astype(np.int64)
        hi = np.floor(centers + self.step / 2).astype(np.int64)
        return lo, hi


class SegmentationWindows:
    """Window schedule plus overlap-aware aggregation of frame scores for one channel."""

    def __init__(self, options: DiarizationOptions) -> None:
        self.options = options
        self.reset()

    def reset(self) -> None:
        """Forget every window and score; the next window ends at ``step`` again."""
        self._next_end = self.options.step
        self._closed = False
        self.geometry: Optional[FrameGeometry] = None
        self._base: Optional[int] = None    # global index of row 0 of the arrays below (None: nothing yet)
        self._frozen: Optional[int] = None  # frames before this global index are final (None: none is)
        self._sums = np.zeros((0, 0), dtype=np.float64)
        self._counts = np.zeros((0, 0), dtype=np.float64)  # per frame and global speaker: weight of the votes
        self._talkers = np.zeros((0, 2), dtype=np.float64)  # per frame: weighted sum of speaker counts, weight
        self._silence = np.zeros(0, dtype=np.float64)  # per frame: weight of the windows that abstained on nobody

    # ------------------------------------------------------------------------------------------------ schedule
    def due(self, audio_end: int) -> list[Window]:
        """Windows whose end is now available, oldest first (none after :meth:`tail`)."""
        out: list[Window] = []
        while not self._closed and self._next_end <= audio_end:
            out.append(self._window(self._next_end))
            self._next_end += self.options.step
        return out

    def tail(self, audio_end: int) -> Optional[Window]:
        """End of stream: the window ending at ``audio_end`` if audio after the last due window exists; closes the
        schedule either way."""
        last_end = self._next_end - self.options.step
        self._closed = True
        if audio_end > last_end:
            return self._window(audio_end)
        return None

    @property
    def next_start(self) -> int:
        """Start of the next window to be scheduled (may be negative early in the stream)."""
        return self._next_end - self.options.window

    def _window(self, end: int) -> Window:
        start = end - self.options.window
        return Window(start, end, max(0, -start))

    def cut(self, window: Window, source: SampleSource) -> tuple[Window, np.ndarray]:
        """The window's samples (a new float32 array of ``window`` samples), zero-padded at the front where the
        stream had not begun or ``source`` no longer retains them; the returned window's ``pad`` says how much."""
        first = max(window.audio_start, source.start)
        if first >= window.end:
            return Window(window.start, window.end, window.end - window.start), np.zeros(
                window.end - window.start, dtype=np.float32)
        audio = np.zeros(window.end - window.start, dtype=np.float32)
        audio[first - window.start:] = source.read(first, window.end)
        return Window(window.start, window.end, first - window.start), audio

    # ------------------------------------------------------------------------------------------------ aggregation
    def set_geometry(self, geometry: FrameGeometry) -> None:
        """Fix the global grid's resolution; later windows must share the frame step."""
        if self.geometry is None:
            self.geometry = geometry
        elif not math.isclose(geometry.step, self.geometry.step, rel_tol=1e-6):
            raise ValueError("all segmentation results of a stream must share one frame step")

    def valid_frames(self, window: Window, n_frames: int) -> np.ndarray:
        """Boolean mask of the window's frames whose centre lies in real audio (not in the padding)."""
        geometry = self._require_geometry()
        return geometry.centers(n_frames) >= window.pad

    def global_index(self, window: Window) -> int:
        """Global frame index of the window's frame 0."""
        geometry = self._require_geometry()
        return int(round(window.start / geometry.step))

    def add(self, window: Window, scores: np.ndarray, abstain: Optional[np.ndarray] = None,
            unnamed: Optional[np.ndarray] = None, talkers: Optional[np.ndarray] = None) -> None:
        """Aggregate one window's ``scores[f, g]`` (already mapped to global speakers, 0 where none) into the grid.

        Padding frames and frames already final are left out. ``abstain`` (``(frames,)`` or ``(frames, speakers)``
        booleans) marks the votes the window does not cast: where it heard somebody it could not name, it cannot say
        that a given speaker was silent, so those zeros must not dilute the other windows' votes. Every other
        (frame, speaker) counts the window's score with the frame's aggregation weight. ``unnamed`` (``(frames,)``)
        marks where it heard such a voice: there it casts no vote either for speakers beyond its columns (ones it
        does not know yet); elsewhere it votes them silent. ``talkers``: how many speakers the window hears in each
        frame, named or not (see :meth:`talkers`).
        """
        n_frames, n_speakers = scores.shape
        valid = self.valid_frames(window, n_frames)
        index = self.global_index(window) + np.arange(n_frames)
        if self._frozen is not None:
            valid &= index >= self._frozen
        if not valid.any():
            return
        votes = np.repeat(valid[:, None], n_speakers, axis=1)
        full = valid.copy()  # frames where the window votes on every speaker, also those it does not know
        if abstain is not None:
            votes &= ~(abstain if abstain.ndim == 2 else abstain[:, None])
            if abstain.ndim == 1:
                full &= ~abstain
        if unnamed is not None:
            full &= ~unnamed
        frame_weights = self._weights(n_frames)
        weights = frame_weights[:, None] * votes
        base = self._grow(int(index[valid].min()), int(index[valid].max()) + 1, n_speakers)
        rows = index[valid] - base
        self._sums[rows, :n_speakers] += (scores * weights)[valid]
        self._counts[rows, :n_speakers] += weights[valid]
        self._counts[rows, n_speakers:] += (frame_weights * full)[valid][:, None]
        self._silence[rows] += (frame_weights * full)[valid]
        if talkers is not None:
            self._talkers[rows, 0] += np.asarray(talkers, dtype=np.float64)[valid] * frame_weights[valid]
            self._talkers[rows, 1] += frame_weights[valid]

    def merge_speakers(self, gone: int, keep: int) -> None:
        """Global speaker ``gone`` turned out to be ``keep``: on the frames not final yet, ``keep``'s activity becomes
        the larger of the two (with ``keep``'s vote weight, ``gone``'s where ``keep`` has none) and ``gone`` reads
        silent from now on."""
        width = self._sums.shape[1]
        if gone >= width:
            return  # no window voted on it yet
        if keep >= width and self._base is not None:
            self._grow(self._base, self._base + len(self._counts), keep + 1)
        counts = self._counts
        mean = self._sums / np.where(counts > 0, counts, 1.0)
        weight = np.where(counts[:, keep] > 0, counts[:, keep], counts[:, gone])
        self._sums[:, keep] = np.maximum(mean[:, keep], mean[:, gone]) * weight
        self._counts[:, keep] = weight
        self._sums[:, gone] = 0.0

    def activity(self, first: int, last: int) -> np.ndarray:
        """Averaged scores of global frames ``[first, last)`` (rows) × global speakers seen so far (columns); frames no
        window has covered, or already final, read as 0."""
        out = np.zeros((max(0, last - first), self._sums.shape[1]), dtype=np.float64)
        held = self._held(first, last)
        if held is not None:
            counts, at = self._counts[held], held.start + self._base - first
            out[at:at + len(counts)] = self._sums[held] / np.where(counts > 0, counts, 1.0)
        return out

    def talkers(self, first: int, last: int) -> np.ndarray:
        """How many speakers talk in each global frame ``[first, last)``: the windows' weighted mean count of active
        local speakers, rounded (0 where no window counted)."""
        out = np.zeros(max(0, last - first), dtype=np.int64)
        held = self._held(first, last)
        if held is not None:
            t, at = self._talkers[held], held.start + self._base - first
            out[at:at + len(t)] = np.rint(t[:, 0] / np.where(t[:, 1] > 0, t[:, 1], 1.0))
        return out

    def _held(self, first: int, last: int) -> Optional[slice]:
        """Rows of the held arrays for global frames ``[first, last)``; ``None`` when none is held."""
        if self._base is None:
            return None
        a, b = max(first, self._base), min(last, self._base + len(self._counts))
        return slice(a - self._base, b - self._base) if a < b else None

    @property
    def n_speakers(self) -> int:
        """Global speakers (columns) the grid holds."""
        return int(self._sums.shape[1])

    @property
    def covered(self) -> tuple[int, int]:
        """``[first, last)`` global frames held (covered by some window and not yet released); ``(0, 0)`` if none."""
        if self._base is None:
            return (0, 0)
        return (self._base, self._base + len(self._counts))

    @property
    def frozen(self) -> Optional[int]:
        """Global frames before this index are final (``None`` until :meth:`freeze` is called)."""
        return self._frozen

    def freeze(self, until: int) -> None:
        """Make global frames before ``until`` final and release their storage."""
        if self._frozen is not None and until <= self._frozen:
            return
        self._frozen = until
        if self._base is None:
            return
        drop = min(max(0, until - self._base), len(self._counts))
        if drop:
            self._sums = self._sums[drop:]
            self._counts = self._counts[drop:]
            self._talkers = self._talkers[drop:]
            self._silence = self._silence[drop:]
        self._base += drop

    # ------------------------------------------------------------------------------------------------ frame ↔ sample
    def frame_start(self, index: int) -> int:
        """First sample of global frame ``index``'s centre region."""
        geometry = self._require_geometry()
        return int(math.floor(geometry.center + index * geometry.step - geometry.step / 2))

    def frame_at(self, sample: int) -> int:
        """The global frame whose centre region contains ``sample``."""
        geometry = self._require_geometry()
        return int(math.floor((sample - geometry.center + geometry.step / 2) / geometry.step))

    def _weights(self, n_frames: int) -> np.ndarray:
        """Per-frame weight of a window's scores: a Hamming window (edges 0.08, centre 1) or all ones."""
        if self.options.aggregation == "hamming":
            return np.hamming(n_frames)
        return np.ones(n_frames)

    def _require_geometry(self) -> FrameGeometry:
        if self.geometry is None:
            raise RuntimeError("no segmentation result yet: call set_geometry() first")
        return self.geometry

    def _grow(self, lo: int, hi: int, n_speakers: int) -> int:
        """Make rows for global frames ``[lo, hi)`` and ``n_speakers`` columns exist; returns the base index."""
        if self._base is None:
            self._base = lo
        base, rows = self._base, len(self._counts)
        new_base = min(base, lo)
        new_rows = max(base + rows, hi) - new_base
        cols = max(self._sums.shape[1], n_speakers)
        if new_base != base or new_rows != rows or cols != self._sums.shape[1]:
            held = slice(base - new_base, base - new_base + rows)

            def moved(old: np.ndarray, width: Optional[int] = None) -> np.ndarray:
                """``old`` in the new row range (and ``width`` columns, if given), zeros elsewhere."""
                out = np.zeros((new_rows,) + (old.shape[1:] if width is None else (width,)), dtype=np.float64)
                if old.ndim == 1:
                    out[held] = old
                else:
                    out[held, :old.shape[1]] = old
                return out

            counts = moved(self._counts, cols)
            counts[held, self._counts.shape[1]:] = self._silence[:, None]  # new speakers: silent where all voted
            self._sums, self._counts = moved(self._sums, cols), counts
            self._talkers, self._silence = moved(self._talkers), moved(self._silence)
            self._base = new_base
        return new_base


def top_speakers(activity: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Boolean ``(frames, speakers)``: in each frame, the ``count[f]`` speakers with the highest ``activity`` (only
    those with some activity at all; ties go to the lower index)."""
    if not activity.size:
        return np.zeros(activity.shape, dtype=bool)
    order = np.argsort(-activity, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(activity.shape[1]), activity.shape), axis=1)
    return (rank < np.asarray(count)[:, None]) & (activity > 0.0)
