"""The last stage of streaming diarization: aggregated frames become final turns, and ``speaker_for`` reads them.

:class:`FinalTurns` binarises the aggregated activity of :class:`~streaming.windows.SegmentationWindows` up to a
bound (``DiarizationOptions.binarization``: by default the windows' mean speaker count decides how many speakers a
frame has, the highest aggregated scores which), freezes those frames and merges them into turns per global speaker.
A run still active at the bound stays open and grows with the next call. Closed turns are queued for
:meth:`FinalTurns.pop` and kept (``DiarizationOptions.history`` of them) for :meth:`FinalTurns.speaker_for`, which
reads the provisional aggregate past :attr:`FinalTurns.final_until`.
"""

from __future__ import annotations

import bisect
from typing import Optional

import numpy as np

from streaming import wire
from streaming.config import DiarizationOptions, ms
from streaming.speakers import label_of
from streaming.voice_segments import runs as _runs
from streaming.windows import SegmentationWindows, top_speakers

NEAREST = ms(500)  # speaker_for() looks this far around a span in which nobody was heard


class FinalTurns:
    """Final turns of one channel's global speakers, made from the aggregate of its segmentation windows."""

    def __init__(self, options: DiarizationOptions, windows: SegmentationWindows, channel: int) -> None:
        self.options = options
        self.windows = windows
        self.channel = channel
        self.final_until = 0
        self.audio_end: Optional[int] = None  # set when the stream ends: no turn reaches past it
        self._open: dict[int, int] = {}           # global speaker → first frame of its unfinished final run
        self._history: list[tuple[int, int, int]] = []  # closed final turns (end, start, global), sorted
        self._new: list[wire.Turn] = []
        self._seen: set[int] = set()

    def finalize(self, until: int, last: bool = False) -> None:
        """Make frames before ``until`` (all frames when ``last``) final and turn them into turns."""
        windows = self.windows
        if windows.geometry is None:
            if last and self.audio_end is not None:
                self.final_until = max(self.final_until, self.audio_end)
            return
        start = windows.frozen if windows.frozen is not None else windows.covered[0]
        stop = max(start, windows.covered[1] if last else windows.frame_at(until))
        if stop == start and not last:
            return
        active = self._binarize(start, stop)
        turns: list[tuple[int, int, int]] = []
        for g in range(active.shape[1]):
            runs = _runs(active[:, g])
            carried = self._open.pop(g, None)
            if carried is not None and not (runs and runs[0][0] == 0):
                turns.append(self._turn(g, carried, start))
                carried = None
            for a, b in runs:
                first = carried if (a == 0 and carried is not None) else start + a
                if b == stop - start and not last:
                    self._open[g] = first
                else:
                    turns.append(self._turn(g, first, start + b))
        windows.freeze(stop)
        turns = sorted(t for t in turns if t[0] > t[1])
        self._seen.update(g for _, _, g in turns)
        self._history.extend(turns)
        self._new.extend(wire.Turn(label_of(g), a, b, self.channel) for b, a, g in turns)
        reached = self.audio_end if last and self.audio_end is not None else windows.frame_start(stop)
        self.final_until = max(self.final_until, reached)
        if self.options.history is not None:
            horizon = bisect.bisect_left(self._history, (self.final_until - self.options.history,))
            del self._history[:horizon]
        if len(self._new) > len(self._history):  # nobody pops them (speaker_turns off): same bound
            del self._new[:len(self._new) - len(self._history)]

    def merge(self, gone: int, keep: int, merge: wire.SpeakerMerge) -> None:
        """Speaker ``gone`` became ``keep``: its open run, history and turns not popped yet become ``keep``'s."""
        if gone in self._open:
            first = self._open.pop(gone)
            self._open[keep] = min(first, self._open.get(keep, first))
        self._history = sorted((end, start, keep if g == gone else g) for end, start, g in self._history)
        self._new = [merge.relabel_turn(t) for t in self._new]
        if gone in self._seen:
            self._seen.discard(gone)
            self._seen.add(keep)

    def pop(self) -> list[wire.Turn]:
        """Turns finalised since the last call, ordered by end (unpopped ones are kept for ``options.history`` only)."""
        turns, self._new = self._new, []
        return turns

    @property
    def speakers(self) -> tuple[str, ...]:
        """Labels that occur in final output so far, in label order."""
        return tuple(label_of(g) for g in sorted(self._seen))

    def speaker_for(self, start: int, end: int) -> Optional[str]:
        """The label with the largest overlap with ``[start, end)``: final turns before :attr:`final_until`,
        the provisional aggregate after it. When nobody was heard in the span, the largest overlap within
        ``NEAREST`` samples around it; ``None`` if still nobody."""
        end = max(end, start + 1)
        overlap = self._overlap(start, end)
        if not overlap:
            overlap = self._overlap(start - NEAREST, end + NEAREST)
        if not overlap:
            return None
        return label_of(max(overlap, key=lambda g: (overlap[g], -g)))

    def _binarize(self, first: int, stop: int) -> np.ndarray:
        """Active global speakers in global frames ``[first, stop)`` (see ``DiarizationOptions.binarization``)."""
        activity = self.windows.activity(first, stop)
        if self.options.binarization == "threshold":
            return activity > self.options.tau_active
        return top_speakers(activity, self.windows.talkers(first, stop))

    def _turn(self, g: int, first: int, stop: int) -> tuple[int, int, int]:
        """``(end, start, g)`` of global speaker ``g``'s final run over global frames ``[first, stop)``."""
        start = max(0, self.windows.frame_start(first))
        end = self.windows.frame_start(stop)
        if self.audio_end is not None:
            end = min(end, self.audio_end)
        return (max(start, end), start, g)

    def _overlap(self, start: int, end: int) -> dict[int, int]:
        out: dict[int, int] = {}

        def add(g: int, a: int, b: int) -> None:
            n = min(b, end) - max(a, start)
            if n > 0:
                out[g] = out.get(g, 0) + n

        for turn_end, turn_start, g in self._history[bisect.bisect_right(self._history, (start, 1 << 62)):]:
            add(g, turn_start, turn_end)
        windows = self.windows
        if windows.geometry is None:
            return out
        for g, first in self._open.items():
            add(g, windows.frame_start(first), self.final_until)
        if end > self.final_until:
            first = windows.frame_at(max(start, self.final_until))
            stop = windows.frame_at(end - 1) + 1
            active = self._binarize(first, stop)
            for g in range(active.shape[1]):
                for a, b in _runs(active[:, g]):
                    add(g, max(self.final_until, windows.frame_start(first + a)), windows.frame_start(first + b))
        return out
