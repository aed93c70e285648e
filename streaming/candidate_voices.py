"""Voices that wait for a candidate new speaker: they hold the final edge back and are credited once it is confirmed.

A new global speaker needs ``DiarizationOptions.new_speaker_windows`` windows of confirmation
(:class:`~streaming.speakers.SpeakerTracker`). Meanwhile the windows that heard its voice abstain on it (they cannot
name it), and :class:`CandidateVoices` keeps those voices' scores. Frames do not become final past the first speech
of a voice still waiting (at most a window behind), and when the candidate is promoted its earlier voices vote for it
on the frames that are not final yet, so a confirmed speaker is credited with its first words.
"""

from __future__ import annotations

import numpy as np

from streaming.config import DiarizationOptions
from streaming.speakers import SpeakerTracker
from streaming.windows import SegmentationWindows, Window


class CandidateVoices:
    """The voices of resolved windows that joined a candidate new speaker, per candidate key."""

    def __init__(self, options: DiarizationOptions, windows: SegmentationWindows) -> None:
        self.options = options
        self.windows = windows
        self._voices: list[tuple[int, Window, np.ndarray]] = []  # (candidate key, window, its scores)

    def final_edge(self, end: int, waiting: list[int]) -> int:
        """How far frames may become final once the window ending at ``end`` is resolved: ``latency`` behind it,
        but not past the first speech of a voice still waiting for one of the candidates ``waiting`` (at most
        ``window`` behind)."""
        edge = end - self.options.latency
        tau = self.options.tau_active
        for key, window, column in self._voices:
            heard = np.flatnonzero(column > tau)
            if key in waiting and heard.size:
                edge = min(edge, self.windows.frame_start(self.windows.global_index(window) + int(heard[0])))
        return max(edge, end - self.options.window)

    def credit(self, window: Window, scores: np.ndarray, waiting: dict[int, int], tracker: SpeakerTracker) -> None:
        """Keep the voices of this window that joined a candidate (``waiting``: voice column → candidate key); when a
        candidate became a speaker in this window, add its earlier voices' votes to the frames that are not final yet
        (those windows abstained there, not knowing the speaker)."""
        tau = self.options.tau_active
        self._voices.extend((key, window, scores[:, c].copy()) for c, key in waiting.items())
        for key, g in tracker.promoted:
            g = tracker.live(g)
            for voice_key, voice_window, column in self._voices:
                if voice_key == key:
                    votes = np.zeros((len(column), max(g + 1, self.windows.n_speakers)))
                    votes[:, g] = column
                    abstain = np.ones(votes.shape, dtype=bool)
                    abstain[:, g] = column <= tau
                    self.windows.add(voice_window, votes, abstain=abstain, unnamed=np.ones(len(column), dtype=bool))
        still = set(tracker.candidates)  # promoted and expired candidates are done with
        edge = self.windows.frame_start(self.windows.frozen) if self.windows.frozen is not None else None
        self._voices = [v for v in self._voices if v[0] in still and (edge is None or v[1].end > edge)]
