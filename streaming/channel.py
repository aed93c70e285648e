"""One channel of a :class:`~streaming.session.Session`: its buffer, VAD state and its utterances' ASR decodes.

The session drives the VAD and the lifecycle; a :class:`Channel` turns the VAD's utterances into model requests
(one final decode per closed utterance, partial decodes and speculative finals of the open one) and their results
into transcript events. Requests, events and in-flight bookkeeping go through the session's :class:`Outbox`.

Speculative finals (``SessionConfig.speculative_finals``): once a pause inside an open utterance has lasted
``speech_pad`` (:attr:`~streaming.vad.VadEndpointer.pending_end`), the utterance's final audio is complete, and its
final request goes out then, while the VAD waits for ``min_silence``. If the VAD closes the utterance at that end,
the request in flight (or its result) is the final: the same samples at the same offset, so finals are unchanged.
If speech resumes before its result is back, the request is withdrawn (:meth:`Outbox.withdraw`: the caller may
cancel it, so a doomed decode does not hold the finals' lane; partials resume on their cadence, counted from the
pause); a result already back is used as a partial (``PartialPolicy.adopt``, charged to the partial budget). No
other partial is sent while it is in flight. A partial decode still in flight when its utterance closes is withdrawn
the same way: its text could no longer be shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from streaming import wire
from streaming.audio import AudioBuffer
from streaming.config import SAMPLE_RATE, SessionConfig
from streaming.partials import PartialPolicy
from streaming.transcript import ChannelTranscript, Utterance, absolute_words
from streaming.vad import SpeechEnd, VadEndpointer
from streaming.work import (AsrKind, AsrRequest, AsrResult, EmbeddingRequest, EmbeddingResult, Request,
                            SegmentationRequest, SegmentationResult, VadRequest, VadResult)

_RESULT_FOR: dict[type, type] = {VadRequest: VadResult, AsrRequest: AsrResult, SegmentationRequest: SegmentationResult,
                                 EmbeddingRequest: EmbeddingResult}


@dataclass
class SessionStats:
    """Counters in samples (16 kHz, per stream sample: a multichannel frame counts once) or events.

    ``audio_in`` = ``audio_processed`` (through the VAD) + ``audio_dropped`` + ``lag`` (waiting for the VAD), exactly.
    ``audio_truncated``: audio through the VAD that an utterance's final lacks (evicted, see the session's docstring).
    """

    audio_in: int = 0
    audio_processed: int = 0
    lag: int = 0
    audio_dropped: int = 0
    audio_truncated: int = 0
    partials_dropped: int = 0
    results_dropped: int = 0
    utterances: int = 0
    finals_speculated: int = 0  # finals answered by a speculative request
    speculations_missed: int = 0  # speculative requests whose pause ended in more speech (or another end)
    speculations_withdrawn: int = 0  # missed ones withdrawn while in flight (Outbox.withdraw)
    partials_withdrawn: int = 0  # partial decodes still in flight when their utterance closed (Outbox.withdraw)


@dataclass(frozen=True)
class InFlight:
    """What a request in flight was for, so its result can be routed."""

    kind: str  # "vad", "partial", "speculative", "final", "diarization"
    expects: type  # the result class that answers it
    channel: int
    start: int = 0
    utterance: Optional[Utterance] = None
    window: Optional[tuple[int, int]] = None


@dataclass(eq=False)
class Outbox:
    """A session's requests and events not yet handed over, its requests in flight, and the flags its channels share."""

    session_id: str
    config: SessionConfig
    stats: SessionStats = field(default_factory=SessionStats)
    work: list[Request] = field(default_factory=list)
    withdrawn: list[int] = field(default_factory=list)  # seqs of requests in flight no longer wanted
    events: list[wire.ServerEvent] = field(default_factory=list)
    in_flight: dict[int, InFlight] = field(default_factory=dict)
    models_behind: bool = False  # set by the caller while its models are behind: partials and speculation wait
    lag_warned: bool = False  # the partials_dropped warning went out and the lag has not halved since
    _seq: int = 0

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def issue(self, requests: list[Request], kind: str, channel: int, **extra: Any) -> None:
        for request in requests:
            self.in_flight[request.seq] = InFlight(kind, _RESULT_FOR[type(request)], channel, request.start, **extra)
            self.work.append(request)

    def withdraw(self, seq: int) -> None:
        """Request ``seq`` is no longer wanted: forget it (a result that still comes is dropped and counted) and tell
        the caller, who may cancel it; one not handed over yet is simply taken back."""
        entry = self.in_flight.pop(seq, None)
        if entry is not None:
            unsent = [r for r in self.work if r.seq != seq]
            if len(unsent) < len(self.work):
                self.work = unsent  # not handed over yet: nothing to cancel
            else:
                self.withdrawn.append(seq)
            if entry.kind == "partial":
                self.stats.partials_withdrawn += 1
            else:
                self.stats.speculations_withdrawn += 1

    def take_withdrawn(self) -> list[int]:
        withdrawn, self.withdrawn = self.withdrawn, []
        return withdrawn

    def take_work(self) -> list[Request]:
        work, self.work = self.work, []
        return work

    def take_events(self) -> list[wire.ServerEvent]:
        events, self.events = self.events, []
        return events


@dataclass(eq=False)
class Speculation:
    """The speculative final request of the open utterance's current pause: ``[start, end)`` at ``seq``."""

    seq: int
    start: int
    end: int
    result: Optional[AsrResult] = None


class Channel:
    """The per-channel pipeline state the session drives, and the ASR decodes of the channel's utterances."""

    def __init__(self, index: int, out: Outbox, transcript: ChannelTranscript, capacity: int, policy: PartialPolicy,
                 diarizer: Any = None) -> None:
        self.index = index
        self.out = out
        self.config = out.config
        self.buffer = AudioBuffer(capacity)
        self.endpointer = VadEndpointer(self.config.vad)
        self.policy = policy
        self.transcript = transcript
        self.diarizer = diarizer
        self.vad_next = 0  # next sample to send to the VAD
        self.vad_busy = False
        self.vad_state: Any = None
        self.vad_state_at = -1  # the stream offset the saved VAD state continues from
        self.finalize_at: list[int] = []  # pending finalize points, oldest first
        self.open: Optional[Utterance] = None
        self.speculation: Optional[Speculation] = None
        self.flushed = False  # end of stream reached the endpointer
        self.skipped_to = 0  # audio before this that the VAD has not seen was dropped (counts as processed)

    @property
    def vad_done(self) -> int:
        """Samples through the VAD (clipped to the audio received)."""
        pos = self.endpointer.position
        return min(pos, self.buffer.end) if pos is not None else 0

    # ------------------------------------------------------------------------------------------------ utterances
    def open_utterance(self, key: int, start: int) -> None:
        self.open = self.transcript.open(key, start)
        self.policy.reset(start)

    def close_utterance(self, event: SpeechEnd) -> None:
        """The VAD closed the open utterance: its final request (or the speculation that already is it)."""
        if self.open is None:
            return
        utt, self.open = self.open, None
        spec, self.speculation = self.speculation, None
        self.transcript.close(utt, event.end)
        self.policy.cancel()
        for seq in [s for s, e in self.out.in_flight.items() if e.kind == "partial" and e.utterance is utt]:
            self.out.withdraw(seq)  # its text would be dropped; the session does not wait for it to end
        start, audio = self.buffer.read_retained(event.start, event.end)
        if start > utt.start:
            self._truncated(utt, start)
        if len(audio) == 0:  # nothing of it is left: its final is empty (an id may be out already)
            self.transcript.set_final(utt, "", [])
            return
        if spec is not None and self._final_from_speculation(spec, utt, start, event.end):
            return
        request = AsrRequest(self.out.session_id, self.out.next_seq(), self.index, start, audio, utt.key,
                             AsrKind.FINAL)
        self.out.issue([request], "final", self.index, utterance=utt)

    def _truncated(self, utt: Utterance, start: int) -> None:
        """The buffer no longer holds ``[utt.start, start)``: the final covers what remains, and the client is told."""
        assert utt.end is not None
        missing = min(start, utt.end) - utt.start
        utt.start = min(start, utt.end - 1)
        self.out.stats.audio_truncated += missing
        self.out.events.append(wire.Warning(
            "utterance_truncated", f"the server fell behind and the first {missing / SAMPLE_RATE:.2f} s of an "
                                   "utterance were lost before it could be transcribed",
            dropped_seconds=missing / SAMPLE_RATE))

    def on_asr(self, entry: InFlight, result: AsrResult) -> bool:
        """Take a final, speculative or partial result; false when it answers nothing current (it is dropped)."""
        if entry.kind == "final":
            assert entry.utterance is not None
            self._set_final(entry.utterance, entry.start, result)
        elif entry.kind == "speculative":
            return self._on_speculative(entry, result)
        elif entry.kind == "partial" and self.open is entry.utterance and self.policy.in_flight == entry.window:
            assert entry.utterance is not None and entry.window is not None
            text = self.policy.on_result(absolute_words(result.words, entry.start, entry.window[0], entry.window[1]),
                                         result.text, whole=result.whole_utterance)
            self.out.events += self.transcript.partial(entry.utterance, entry.window[1], text)
        else:  # a partial for a closed or superseded decode
            return False
        return True

    def _set_final(self, utt: Utterance, start: int, result: AsrResult) -> None:
        assert utt.end is not None
        self.transcript.set_final(utt, result.text.strip(), absolute_words(result.words, start, utt.start, utt.end))

    # ------------------------------------------------------------------------------------------------ speculation
    def speculate(self) -> None:
        """After VAD results: send the open utterance's final request once a pause has lasted ``speech_pad``; a
        speculation whose pause ended in speech becomes a partial (now, or when its result is back)."""
        spec, utt = self.speculation, self.open
        end = self.endpointer.pending_end if utt is not None else None
        if spec is not None and spec.end == end:
            return  # still the same pause
        if spec is not None:  # speech resumed: its result serves as a partial, or it is withdrawn
            self.speculation = None
            self.out.stats.speculations_missed += 1
            if spec.result is None:  # withdrawn; the next partial waits its interval from the pause, as after
                self.out.withdraw(spec.seq)  # a partial decode of it (no extra decode for the doomed one)
                self.policy.skip(max(spec.end, self.policy.last_end))
            elif utt is not None:
                self._adopt(utt, (spec.start, spec.end), spec.result)
        if end is None or utt is None or not self.config.speculative_finals or self.behind(diarization=False)[0]:
            return
        start, audio = self.buffer.read_retained(utt.start, end)
        if len(audio) == 0 or not self._may_speculate(start, end):
            return
        request = AsrRequest(self.out.session_id, self.out.next_seq(), self.index, start, audio, utt.key,
                             AsrKind.FINAL)
        self.out.issue([request], "speculative", self.index, utterance=utt, window=(start, end))
        self.speculation = Speculation(request.seq, start, end)

    def _may_speculate(self, start: int, end: int) -> bool:
        """Whether the utterance's partial compute, this speculation counted, stays within ``budget_ratio +
        speculation_budget`` final passes of the utterance so far (so missed speculations cannot pile up)."""
        extra = self.config.speculation_budget * (end - self.policy.utterance_start)
        return self.policy.budget(end) + extra >= end - start

    def _on_speculative(self, entry: InFlight, result: AsrResult) -> bool:
        spec = self.speculation
        if spec is not None and spec.seq == result.seq:
            spec.result = result  # the pause goes on: the final, if the VAD closes the utterance there
        elif self.open is not None and self.open is entry.utterance:
            assert entry.window is not None
            self._adopt(self.open, entry.window, result)
        else:  # its utterance closed at another end
            return False
        return True

    def _final_from_speculation(self, spec: Speculation, utt: Utterance, start: int, end: int) -> bool:
        """At the VAD's close of ``utt`` over ``[start, end)``: whether the speculative request was exactly that
        final's (then it is the final: its result now, or the request in flight is answered as the final)."""
        if (spec.start, spec.end) != (start, end):
            self.out.stats.speculations_missed += 1
            self.out.withdraw(spec.seq)  # its result would be dropped: the final's own request must not wait for it
            return False
        self.out.stats.finals_speculated += 1
        if spec.result is not None:
            self._set_final(utt, start, spec.result)
        else:
            self.out.in_flight[spec.seq] = InFlight("final", AsrResult, self.index, start, utterance=utt)
        return True

    def _adopt(self, utt: Utterance, window: tuple[int, int], result: AsrResult) -> None:
        """A speculative decode of the open utterance so far, taken as its latest partial decode."""
        words = absolute_words(result.words, window[0], window[0], window[1])
        text = self.policy.adopt(window, words, result.text)
        if text is not None and self.config.interim_results and self.config.partials.enabled:
            self.out.events += self.transcript.partial(utt, window[1], text)

    # ------------------------------------------------------------------------------------------------ partials
    def behind(self, diarization: bool = True) -> tuple[bool, int]:
        """Whether the channel is behind (optional decodes wait: partials, speculation), and its VAD lag.
        ``diarization``: its diarization requests in flight count toward ``max_pending_requests`` (for partials; a
        speculative final is the final itself, early, and diarization lagging does not delay finals, so it waits
        only for the caller's models, the VAD and the channel's own finals)."""
        options = self.config.partials
        lag = self.buffer.end - max(self.vad_done, self.skipped_to)
        kinds = ("final", "diarization") if diarization else ("final",)
        backlog = sum(1 for e in self.out.in_flight.values() if e.channel == self.index and e.kind in kinds)
        return self.out.models_behind or lag > options.max_lag or backlog > options.max_pending_requests, lag

    def partial_step(self) -> None:
        """Send the open utterance's next partial decode when its policy says one is due (and nothing is behind)."""
        options = self.config.partials
        if self.open is None or not (self.config.interim_results and options.enabled):
            return
        if any(e.kind == "speculative" and e.utterance is self.open for e in self.out.in_flight.values()):
            return  # its result will be this utterance's next partial
        window = self.policy.due(min(self.vad_done, self.endpointer.speech_until))
        if window is None:
            return
        behind, lag = self.behind()
        if behind:
            self.policy.skip(window[1])
            self.out.stats.partials_dropped += 1
            if not self.out.lag_warned:
                self.out.lag_warned = True
                self.out.events.append(wire.Warning(
                    "partials_dropped", "audio is waiting to be processed (the server is behind, or audio arrives "
                                        "faster than real time): partial results are skipped until it catches up "
                                        "(finals are not affected)"))
            return
        if lag <= options.max_lag // 2:
            self.out.lag_warned = False
        if window[0] < self.buffer.start:  # its audio was evicted: no partial over it (the final is cut anyway)
            self.policy.skip(window[1])
            self.out.stats.partials_dropped += 1
            return
        self.policy.start(window)
        a, b = window
        request = AsrRequest(self.out.session_id, self.out.next_seq(), self.index, a, self.buffer.read(a, b),
                             self.open.key, AsrKind.PARTIAL,
                             cache_lookahead=self.policy.lookahead if options.cached_context else None)
        self.out.issue([request], "partial", self.index, utterance=self.open, window=window)
