"""Partial transcripts of one open utterance: windowed decodes, a committed prefix and a hard compute budget.

Budget (a hard cap on this policy's decodes): a partial decode is sent only while the samples encoded for the
utterance's partials, it included, stay within ``budget_ratio`` × the utterance's length so far. A partial window
never reaches past the utterance, so its partial decodes cost at most ``budget_ratio`` × its one final pass (default
1.0). A speculative final whose pause ended in speech (:meth:`PartialPolicy.adopt`) is charged to the same count
but was decided elsewhere: the session's speculation gate bounds it (``budget_ratio + speculation_budget`` final
passes of the utterance so far), so with speculative finals an utterance's partial compute can exceed
``budget_ratio`` × its final pass — no policy here can prevent it (a miss late in a short utterance costs nearly
one final pass by itself; docs/benchmarks.md, cheaper partials).

Windows: the first decode is due once the utterance holds ``first_partial`` of audio (an early, short window); then
one every ``max(cadence, cadence_growth × utterance length)`` of new audio. A decode re-encodes
``[committed_end - left_context, now]`` (at most ``max_window``) when the budget pays for it. When it does not,
above budget 1.0 the decode waits (the budget grows faster than the window); at or below 1.0 waiting cannot help,
so it takes the latest window the budget pays for, never starting after the previous window's end (every sample
is decoded by some partial). At budget 1.0 each partial thus encodes only audio no partial has encoded yet: no
context. A word such a window boundary cuts in two (the last word of the text running to the boundary and the
decode's first word running from it) is shown joined again; the pieces are decoded without context, so the
joined word can still be wrong until the final replaces it.

Words that two consecutive decodes agree on (same text, start and end within ``agreement_tolerance``) and that end
before the window's last ``fresh_tail`` samples join the *committed prefix*. When a window starts after the
re-encode point (``max_window`` or the budget), the previous decode's words in front of its reach are committed as
they are. The partial text is the committed words followed by the latest decode's uncommitted words.

Cached context (``PartialOptions.cached_context``, on by default): each window starts where the last one of this policy ended
(``left_context`` and ``max_window`` do not apply), the ASR encodes it against the utterance's cached encoder state
and answers with the whole utterance so far (``whole``), which replaces the text. A result that is not whole (an
engine without the cache) is taken as an ordinary context-free decode. An adopted speculation is whole too, but
does not move where the next cached window starts (the cache never saw it).

Lookahead, budget-aware (``cached_lookahead``): a cached window's last frames may be provisional and encoded again
with the next window (right context). That repeat is charged to the budget with the next window, which therefore
ends where the budget pays both (at budget 1.0: ``repeat`` samples before the newest audio, so the partials'
encoder work never exceeds the audio so far, hence one final pass). Each window's lookahead is granted only while
the window end lags the audio by at most ``lookahead_lag`` with it; past that the window commits every frame as
computed (lookahead 0 from there on, the lag stays). Adopted speculations are charged to the budget (the
session's speculation gate reads it) but cached windows leave them out: a missed speculation is the finals' cost,
and the next cached window catches up to the newest audio.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from streaming.config import ENCODER_FRAME, PartialOptions
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
        self.missed = 0  # of them: adopted speculative finals (cached windows leave them out: the finals' cost)
        self.decodes = 0
        self.in_flight: Optional[tuple[int, int]] = None
        self._last_end = utterance_start  # end of the last window sent (or skipped)
        self._decoded_end = utterance_start  # end of the last window sent: audio before it has been decoded
        self._previous: list[WordTiming] = []  # the last decode's uncommitted words
        self._latest_text = ""  # the last decode's uncommitted text when it had no word timings
        self._context_free = False  # the decode in flight starts where the last one ended
        self._cached_end = utterance_start  # cached context: end of the last window this policy sent
        self._cached_repeat = 0  # cached context: samples the next cached window encodes again (held lookahead)
        self._window_lag = 0  # cached context: how far the window last proposed ends before the audio
        self.lookahead = 0  # cached context: lookahead frames of the last cached window sent

    # ------------------------------------------------------------------------------------------------ scheduling
    def budget(self, now: int) -> int:
        """Samples the partials of this utterance may still encode at ``now``."""
        return math.floor(self.options.budget_ratio * (now - self.utterance_start)) - self.encoded

    def interval(self, now: int) -> int:
        """New audio needed since the last window before the next decode (the first: ``first_partial``)."""
        opt = self.options
        if self._last_end == self.utterance_start:  # nothing sent or skipped yet
            return opt.first_partial
        return max(opt.cadence, int(opt.cadence_growth * (now - self.utterance_start)))

    def _natural_start(self) -> int:
        return max(self.utterance_start, self.committed_end - self.options.left_context)

    def window_for(self, now: int) -> Optional[tuple[int, int]]:
        """The window a decode at ``now`` would encode, or ``None`` to wait for budget.

        The natural window when the budget pays for it; else above budget 1.0 ``None`` (the budget catches up);
        else (waiting cannot help) the latest window the budget pays for, if that still reaches the audio decoded
        last (or ``max_window``).
        """
        budget = self.budget(now)
        if self.options.cached_context:  # the budget pays the new audio and the held lookahead frames again
            a = self._cached_end
            b = min(now, a + budget + self.missed - self._cached_repeat)
            if b <= a or (b < now and b - a < self.options.cadence // 2):
                return None  # too little budget for a useful window: it grows with the audio
            self._window_lag = now - b
            return a, b
        earliest = now - self.options.max_window
        a = max(self._natural_start(), earliest)
        if now - a <= budget:
            return a, now
        if self.options.budget_ratio > 1:
            return None  # the budget grows faster than the window: wait for it rather than lose the context
        a = now - budget
        if a > max(self._decoded_end, earliest) or a >= now:  # the budget cannot pay for the new audio
            return None
        return a, now

    def due(self, now: int) -> Optional[tuple[int, int]]:
        """The window to decode now, or ``None``: one in flight, too little new audio, or no budget for it."""
        if self.in_flight is not None or now - self._last_end < self.interval(now):
            return None
        return self.window_for(now)

    def start(self, window: tuple[int, int]) -> None:
        """A decode of ``window`` was sent: count it and commit what will fall out of the window's reach."""
        a, b = window
        repeat = 0
        if self.options.cached_context and a == self._cached_end:
            self._cached_end = b
            repeat, frames = self._cached_repeat, self.options.cached_lookahead
            self.lookahead = frames if self._window_lag + frames * ENCODER_FRAME <= self.options.lookahead_lag else 0
            self._cached_repeat = self.lookahead * ENCODER_FRAME
        if a > self._natural_start():  # the window starts late (max_window or budget): commit what it cannot reach
            reach = min(a + self.options.left_context, self._decoded_end)
            keep = [w for w in self._previous if (w.start + w.end) / 2 >= reach]
            self._commit([w for w in self._previous if (w.start + w.end) / 2 < reach])
            self.committed_end = max(self.committed_end, reach)
            self._previous = keep
        self._context_free = self.decodes > 0 and a >= self._decoded_end  # nothing before ``a`` is re-encoded
        self.in_flight = window
        self.encoded += b - a + repeat
        self.decodes += 1
        self._last_end = self._decoded_end = b

    def adopt(self, window: tuple[int, int], words: Sequence[WordTiming], text: str = "") -> Optional[str]:
        """A decode of ``window`` made outside this policy (a speculative final whose pause ended in more speech):
        charged to the budget and, unless a decode of this policy is in flight or reached further, taken as the
        latest decode. Returns the partial text, or ``None`` when it was only charged."""
        a, b = window
        self.missed += b - a
        if self.in_flight is not None or b <= self._decoded_end:
            self.encoded += b - a
            return None
        cached = self._cached_end, self._cached_repeat, self.lookahead
        self._cached_end = -1  # not a cached window: start() neither moves nor charges the cache's state
        self.start(window)
        self._cached_end, self._cached_repeat, self.lookahead = cached  # the encoder cache never saw this decode
        return self.on_result(words, text, whole=self.options.cached_context)

    @property
    def last_end(self) -> int:
        """End of the last window sent or skipped: the next decode waits an :meth:`interval` of audio after it."""
        return self._last_end

    def skip(self, now: int) -> None:
        """A due decode was not sent (the session is behind): wait another interval before the next one."""
        self._last_end = now

    def cancel(self) -> None:
        """The decode in flight will never come back."""
        self.in_flight = None

    # ------------------------------------------------------------------------------------------------ results
    def on_result(self, words: Sequence[WordTiming], text: str = "", whole: bool = False) -> str:
        """Take the in-flight decode's words (absolute times); return the partial text.

        ``text`` is used only when the decoder gave no word timings (then nothing can be committed). ``whole``: the
        words are the whole utterance so far (a cached decode): they replace the text.
        """
        window = self.in_flight
        self.in_flight = None
        if window is None:
            return self.text
        if whole:
            self.committed, self._previous = [], list(words)
            self.committed_end = self.utterance_start
            self._latest_text = "" if words else text.strip()
            return self.text
        if not words and text.strip():
            self._previous = []
            self._latest_text = text.strip()
            return self.text
        fresh = [w for w in words if (w.start + w.end) / 2 >= self.committed_end]
        if fresh and self.committed and self._context_free:
            last = self.committed[-1]
            if last.end >= window[0] and fresh[0].start <= window[0]:  # one word the window edge cut in two
                self.committed[-1] = WordTiming(last.word + fresh[0].word, last.start, fresh[0].end)
                self.committed_end = max(self.committed_end, fresh[0].end)
                fresh = fresh[1:]
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
