"""Mapping by score continuity: a local speaker without an embedding match keeps the global speaker it continues.

Local speakers whose voices got no global speaker from their embeddings (too little clean speech, an overlap that
matched nobody) are mapped to the global speaker whose activity in the previous resolved window agrees with theirs
on the frames both windows cover: intersection over union ≥ ``DiarizationOptions.continuity_threshold``, with a
one-to-one assignment over the global speakers still free in this window.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy.optimize import linear_sum_assignment

from streaming.config import DiarizationOptions
from streaming.speakers import SpeakerTracker
from streaming.windows import SegmentationWindows, Window


class ContinuityMap:
    """The last resolved window's mapped scores, and the mapping of the next window's unmapped speakers onto them."""

    def __init__(self, options: DiarizationOptions, windows: SegmentationWindows) -> None:
        self.options = options
        self.windows = windows
        self._previous: Optional[tuple[Window, np.ndarray]] = None  # last resolved window, mapped scores

    def remember(self, window: Window, mapped: np.ndarray) -> None:
        """``window`` is resolved: its scores per global speaker are what the next window continues."""
        self._previous = (window, mapped)

    def map(self, window: Window, scores: np.ndarray, active: list[int], mapping: dict[int, int],
            tracker: SpeakerTracker) -> None:
        """Add to ``mapping`` (voice column → global speaker) the columns of ``active`` not in it yet that continue a
        free global speaker of the previous window."""
        previous = self._previous
        rest = [k for k in active if k not in mapping]
        if not rest or previous is None:
            return
        prev_window, prev_mapped = previous
        if tracker.merged:  # what a merged speaker was heard saying now belongs to the speaker it became
            width = max(prev_mapped.shape[1], tracker.n_speakers)
            prev_mapped = np.pad(prev_mapped, ((0, 0), (0, width - prev_mapped.shape[1])))
            for gone in tracker.merged:
                if gone < prev_mapped.shape[1]:
                    keep = tracker.live(gone)
                    prev_mapped[:, keep] = np.maximum(prev_mapped[:, keep], prev_mapped[:, gone])
                    prev_mapped[:, gone] = 0.0
        free = [g for g in range(prev_mapped.shape[1]) if g not in mapping.values()]
        n_frames, tau = len(scores), self.options.tau_active
        index = self.windows.global_index(window) + np.arange(n_frames)
        prev_frames = index - self.windows.global_index(prev_window)
        shared = ((prev_frames >= 0) & (prev_frames < len(prev_mapped))
                  & self.windows.valid_frames(window, n_frames))
        if not free or not shared.any():
            return
        local = scores[shared][:, rest] > tau                           # (shared frames, rest)
        past = prev_mapped[prev_frames[shared]][:, free] > tau          # (shared frames, free)
        inter = local.T.astype(np.int64) @ past.astype(np.int64)
        union = local.sum(axis=0)[:, None] + past.sum(axis=0)[None, :] - inter
        iou = inter / np.maximum(union, 1)
        for r, c in zip(*linear_sum_assignment(-iou)):
            if iou[r, c] >= self.options.continuity_threshold:
                mapping[rest[r]] = free[c]
