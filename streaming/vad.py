"""VAD endpointing: one speech probability per 512-sample chunk → utterance start and end events (samples).

:class:`VadEndpointer` follows the usual Silero rules, in streaming form:

* speech *triggers* on a chunk whose probability reaches ``threshold`` and continues while probabilities stay at or
  above ``neg_threshold`` (hysteresis: a dip between the two thresholds is still speech);
* it *ends* once probabilities have stayed below ``neg_threshold`` for ``min_silence``; the end is the start of that
  silent run plus ``speech_pad``;
* a burst whose voiced part is shorter than ``min_speech`` is discarded without any event; the start event is
  emitted as soon as the voiced part reaches ``min_speech`` and is padded by ``speech_pad`` (never before the
  previous utterance's end);
* an utterance about to exceed ``max_utterance`` is cut at the quietest point of its last ``cut_search`` samples:
  the middle of the chunk with the **lowest speech probability** (the latest one on ties), and the speech after the
  cut continues as a new utterance starting exactly there (no padding, no gap). If it is in a pause right then,
  it simply ends at that pause (padded), as if the pause had lasted ``min_silence``.

Chunk offsets are absolute: a chunk that does not follow the previous one (audio was skipped) closes open speech
where the previous audio ended.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import Optional, Union

import numpy as np

from streaming.config import VAD_CHUNK, VadOptions

HALF_CHUNK = VAD_CHUNK // 2


@dataclass(frozen=True)
class SpeechStart:
    """An utterance opened at ``start`` (padded)."""

    start: int


@dataclass(frozen=True)
class SpeechEnd:
    """The utterance ``[start, end)`` closed; ``cut`` when it was split for reaching ``max_utterance``."""

    start: int
    end: int
    cut: bool = False


VadEvent = Union[SpeechStart, SpeechEnd]


class _State(IntEnum):
    SILENCE = 0
    TENTATIVE = 1  # above threshold, voiced part still shorter than min_speech: no event yet
    SPEECH = 2  # start event emitted


class VadEndpointer:
    """Turns per-chunk speech probabilities into :class:`SpeechStart` / :class:`SpeechEnd` events."""

    def __init__(self, options: VadOptions) -> None:
        self.options = options
        self._history: deque[tuple[int, float]] = deque(maxlen=options.cut_search // VAD_CHUNK + 2)
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next chunk starts a fresh stream."""
        self._state = _State.SILENCE
        self._next: Optional[int] = None  # expected offset of the next chunk
        self._floor = 0  # no utterance may start before this (the previous end, or where the stream began)
        self._speech_start = 0  # first voiced sample of the current speech (unpadded)
        self._utt_start = 0  # padded start, as emitted
        self._voiced_end = 0  # end of the last chunk at or above neg_threshold
        self._silence_start: Optional[int] = None  # start of the current run below neg_threshold
        self._history.clear()

    @property
    def in_speech(self) -> bool:
        """Whether an utterance is open (its start event was emitted and its end was not)."""
        return self._state == _State.SPEECH

    @property
    def utterance_start(self) -> Optional[int]:
        return self._utt_start if self._state == _State.SPEECH else None

    @property
    def retain_from(self) -> int:
        """The earliest sample a current or future utterance can start at: audio before it is no longer needed."""
        pad = self.options.speech_pad
        if self._state == _State.SPEECH:
            return self._utt_start
        if self._state == _State.TENTATIVE:
            return max(self._speech_start - pad, self._floor)
        return max((self._next if self._next is not None else self._floor) - pad, self._floor)

    @property
    def speech_until(self) -> int:
        """Where the open utterance would end if the current chunk were its last: the last voiced chunk's end plus
        padding (partials need not look further: a pause in progress adds nothing to decode)."""
        return self._voiced_end + self.options.speech_pad

    @property
    def pending_end(self) -> Optional[int]:
        """Where the open utterance ends if the pause in progress lasts ``min_silence``, once that pause has lasted
        ``speech_pad`` (the utterance's audio, padding included, is then complete); else ``None``. Speculative
        finals decode it before the VAD decides (``SessionConfig.speculative_finals``)."""
        if self._state != _State.SPEECH or self._silence_start is None or self._next is None:
            return None
        end = self._silence_start + self.options.speech_pad
        return end if self._next >= end else None

    @property
    def position(self) -> Optional[int]:
        """The offset just past the last chunk consumed (``None`` before the first)."""
        return self._next

    def push(self, probs: np.ndarray, start: int) -> list[VadEvent]:
        """Consume probabilities of consecutive chunks, the first at absolute sample offset ``start``."""
        events: list[VadEvent] = []
        if self._next is None:
            self._floor = start
        elif start != self._next:  # a gap: what we had ends where the audio stopped
            events += self.flush(self._next)
            self._floor = start
        for i, p in enumerate(np.asarray(probs, dtype=np.float64)):
            events += self._step(start + i * VAD_CHUNK, float(p))
        self._next = start + len(probs) * VAD_CHUNK
        return events

    def flush(self, end: int) -> list[VadEvent]:
        """Close open speech now (finalize, end of stream); no audio after ``end`` belongs to it."""
        events: list[VadEvent] = []
        if self._state == _State.SPEECH:
            last = self._silence_start if self._silence_start is not None else self._voiced_end
            stop = max(min(last + self.options.speech_pad, end), self._utt_start + 1)
            events.append(SpeechEnd(self._utt_start, stop))
            self._floor = stop
        else:
            self._floor = max(self._floor, min(end, self._next if self._next is not None else end))
        self._state = _State.SILENCE
        self._silence_start = None
        self._history.clear()
        return events

    # ------------------------------------------------------------------------------------------------ internals
    def _step(self, s: int, p: float) -> list[VadEvent]:
        opt = self.options
        e = s + VAD_CHUNK
        if self._state == _State.SILENCE:
            if p < opt.threshold:
                return []
            self._state = _State.TENTATIVE
            self._speech_start = s
            self._silence_start = None
            self._history.clear()
        self._history.append((s, p))
        if p >= opt.neg_threshold:  # type: ignore[operator]
            self._voiced_end = e
            self._silence_start = None
        else:
            if self._silence_start is None:
                self._silence_start = s
            if e - self._silence_start >= opt.min_silence:
                return self._end_speech(e)
        events: list[VadEvent] = []
        if self._state == _State.TENTATIVE and self._voiced_end - self._speech_start >= opt.min_speech:
            self._state = _State.SPEECH
            self._utt_start = max(self._speech_start - opt.speech_pad, self._floor)
            events.append(SpeechStart(self._utt_start))
        if self._state == _State.SPEECH and e - self._utt_start >= opt.max_utterance - opt.speech_pad:
            if self._silence_start is not None:  # already in a pause: end there, as if it had been long enough
                return events + self._end_speech(e, cut=True)
            events += self._cut(e)
        return events

    def _end_speech(self, e: int, cut: bool = False) -> list[VadEvent]:
        events: list[VadEvent] = []
        if self._state == _State.SPEECH:
            assert self._silence_start is not None
            stop = min(self._silence_start + self.options.speech_pad, e)
            events.append(SpeechEnd(self._utt_start, stop, cut))
            self._floor = stop
        self._state = _State.SILENCE
        self._silence_start = None
        self._history.clear()
        return events

    def _cut(self, e: int) -> list[VadEvent]:
        """Split at the middle of the least speech-like chunk of the last ``cut_search`` samples."""
        lo = max(e - self.options.cut_search, self._utt_start + VAD_CHUNK)
        candidates = [(p, s) for s, p in self._history if s >= lo]
        if not candidates:
            candidates = [(p, s) for s, p in self._history]
        best_p = min(p for p, _ in candidates)
        cut = max(s for p, s in candidates if p == best_p) + HALF_CHUNK
        events: list[VadEvent] = [SpeechEnd(self._utt_start, cut, cut=True)]
        # what follows the cut is re-examined as the start of new speech
        after = [(s, p) for s, p in self._history if s + VAD_CHUNK > cut]
        self._history = deque(after, maxlen=self._history.maxlen)
        neg = self.options.neg_threshold
        voiced = [s + VAD_CHUNK for s, p in after if p >= neg]  # type: ignore[operator]
        self._voiced_end = voiced[-1] if voiced else cut
        self._silence_start = None
        for s, p in after:  # the trailing run below neg_threshold, if any
            if p >= neg:  # type: ignore[operator]
                self._silence_start = None
            elif self._silence_start is None:
                self._silence_start = max(s, cut)
        self._floor = cut
        self._speech_start = cut
        self._state = _State.TENTATIVE
        if self._voiced_end - cut >= self.options.min_speech:
            self._state = _State.SPEECH
            self._utt_start = cut
            events.append(SpeechStart(cut))
        return events
