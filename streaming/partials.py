"""Partial transcripts of one open utterance: windowed decodes, a committed prefix and a compute budget.

Each partial decode re-encodes only a recent window ``[committed_end - left_context, now]`` (at most
``max_window`` long). Words that two consecutive decodes agree on (same text, start and end within
``agreement_tolerance``) and that end before the window's last ``fresh_tail`` samples join the *committed prefix*
and are never decoded again except as left context. When the uncommitted span would no longer fit into
``max_window``, the previous decode's words in front of the window are committed as they are.

The partial text is the committed words followed by the latest decode's uncommitted words.

Budget: the samples encoded by all partials of an utterance stay at most ``budget_ratio`` × the utterance's length
so far; a decode is due only when it fits (so the cadence stretches when windows are long). Since windows are
bounded, the cost of partials is linear in utterance length.
"""

from __future__ import annotations

from typing import Optional, Sequence

from streaming.config import PartialOptions
from streaming.wire import WordTiming


class PartialPolicy:
    """When to decode a partial of one utterance, which window, and how results combine into partial text.

    Words here carry absolute sample times. One decode is in flight at most.
    """

    def __init__(self, options: PartialOptions, utterance_start: int) -> None:
        self.options = options
        self.reset(utterance_start)

    def reset(self, utterance_start: int) -> None:
        """Start over for a new utterance at ``utterance_start``."""
        self.utterance_start = utterance_start
        self.committed: list[WordTiming] = []
        self.committed_end = utterance_start  # nothing before this is decoded again (except as context)
        self.encoded = 0  # samples encoded by the partials of this utterance
        self.decodes = 0
        self.in_flight: Optional[tuple[int, int]] = None
        self._last_end = utterance_start  # end of the last window sent
        self._previous: list[WordTiming] = []  # the last decode's uncommitted words
        self._latest_text = ""  # the last decode's uncommitted text when it had no word timings

    # ------------------------------------------------------------------------------------------------ scheduling
    def window_for(self, now: int) -> tuple[int, int]:
        """The window a decode at ``now`` would encode."""
        start = max(self.utterance_start, self.committed_end - self.options.left_context)
        return max(start, now - self.options.max_window), now

    def due(self, now: int) -> Optional[tuple[int, int]]:
        """The window to decode now, or ``None``: one in flight, under ``cadence`` of new audio, or over budget."""
        if self.in_flight is not None or now - self._last_end < self.options.cadence:
            return None
        a, b = self.window_for(now)
        if self.encoded + (b - a) > self.options.budget_ratio * (now - self.utterance_start):
            return None
        return a, b

    def start(self, window: tuple[int, int]) -> None:
        """A decode of ``window`` was sent: count it and commit what will fall out of the window's reach."""
        a, b = window
        natural = max(self.utterance_start, self.committed_end - self.options.left_context)
        if a > natural:  # the uncommitted span outgrew max_window: commit what the window no longer reaches
            reach = a + self.options.left_context
            keep = [w for w in self._previous if (w.start + w.end) / 2 >= reach]
            self._commit([w for w in self._previous if (w.start + w.end) / 2 < reach])
            self.committed_end = max(self.committed_end, reach)
            self._previous = keep
        self.in_flight = window
        self.encoded += b - a
        self.decodes += 1
        self._last_end = b

    def skip(self, now: int) -> None:
        """A due decode was not sent (the session is behind): wait another ``cadence`` before the next one."""
        self._last_end = now

    def cancel(self) -> None:
        """The decode in flight will never come back."""
        self.in_flight = None

    # ------------------------------------------------------------------------------------------------ results
    def on_result(self, words: Sequence[WordTiming], text: str = "") -> str:
        """Take the in-flight decode's words (absolute times); return the partial text.

        ``text`` is used only when the decoder gave no word timings (then nothing can be committed).
        """
        window = self.in_flight
        self.in_flight = None
        if window is None:
            return self.text
        if not words and text.strip():
            self._previous = []
            self._latest_text = text.strip()
            return self.text
        fresh = [w for w in words if (w.start + w.end) / 2 >= self.committed_end]
        agreed = 0
        limit = window[1] - self.options.fresh_tail
        tol = self.options.agreement_tolerance
        for new, old in zip(fresh, self._previous):
            if (new.word != old.word or abs(new.start - old.start) > tol or abs(new.end - old.end) > tol
                    or new.end > limit):
                break
            agreed += 1
        self._commit(fresh[:agreed])
        self._previous = fresh[agreed:]
        self._latest_text = ""
        return self.text

    def _commit(self, words: Sequence[WordTiming]) -> None:
        if words:
            self.committed.extend(words)
            self.committed_end = max(self.committed_end, words[-1].end)

    @property
    def words(self) -> list[WordTiming]:
        """Committed words followed by the latest decode's uncommitted ones."""
        return self.committed + self._previous

    @property
    def text(self) -> str:
        parts = [w.word for w in self.words]
        if self._latest_text:
            parts.append(self._latest_text)
        return " ".join(parts)
