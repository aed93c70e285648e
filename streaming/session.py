"""One transcription stream, sans-I/O: bytes and model results in; model requests and protocol events out.

The caller (``server/connection.py``, or ``server/offline.py`` in tests and benchmarks) feeds client messages and
model results, then collects :meth:`Session.work_to_run` and :meth:`Session.events_to_send` (both hand over their
pending list). Per channel: decoded audio goes into an :class:`~streaming.audio.AudioBuffer`; at most one VAD
request is in flight (its recurrent state chains); :class:`~streaming.vad.VadEndpointer` opens and closes
utterances; an open utterance gets partial decodes from its :class:`~streaming.partials.PartialPolicy`; a closed
one gets exactly one final decode over its samples; :class:`~streaming.transcript.ChannelTranscript` turns results
into events.

Speculative finals (``SessionConfig.speculative_finals``): once a pause inside an open utterance has lasted
``speech_pad`` (:attr:`~streaming.vad.VadEndpointer.pending_end`), the utterance's final audio is complete, and its
final request goes out then, while the VAD waits for ``min_silence``. If the VAD closes the utterance at that end,
the request in flight (or its result) is the final: the same samples at the same offset, so finals are unchanged.
If speech resumes, its result is used as a partial (``PartialPolicy.adopt``, charged to the partial budget); no
other partial is sent while it is in flight. With diarization on (single stream), a ``StreamingDiarizer`` runs beside the VAD and gives speakers.

Backpressure: while the session is behind (audio waiting for the VAD above ``PartialOptions.max_lag``, more than
``max_pending_requests`` final and diarization requests of the channel in flight, or the caller's models behind:
:attr:`Session.models_behind`, set by the server while GigaAM's queue waits too long) partial decodes and
speculative finals are skipped (partials counted). Audio waiting for the VAD (:attr:`Session.pending_audio`) is bounded by ``SessionConfig.max_pending_audio``:
with :attr:`Session.drop_when_behind` (a live client, the default) the oldest beyond it is dropped (the open
utterance closes at the gap); otherwise the caller stops feeding audio while :attr:`Session.has_room` is false, and
only audio beyond twice the bound (a caller that ignores it) is dropped. Every drop is reported (``audio_dropped``)
and counted once per stream sample, so ``audio_in == audio_processed + audio_dropped + lag`` at all times.

No read of the buffer can fail: audio an utterance needs that the bounded buffer no longer holds (the VAD stalled
while a live client kept sending) cuts the utterance's final to what remains (``utterance_truncated`` warning), and a
partial window reaching into it is skipped. Finals are never dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Optional

import numpy as np

from streaming import wire
from streaming.audio import AudioBuffer, AudioDecoder, downmix
from streaming.config import SAMPLE_RATE, VAD_CHUNK, SessionConfig, ms
from streaming.errors import InvalidState
from streaming.partials import PartialPolicy
from streaming.transcript import ChannelTranscript, Utterance, absolute_words
from streaming.vad import SpeechEnd, SpeechStart, VadEndpointer, VadEvent
from streaming.work import (AsrKind, AsrRequest, AsrResult, EmbeddingRequest, EmbeddingResult, Request, Result,
                            SegmentationRequest, SegmentationResult, VadRequest, VadResult)

MAX_VAD_CHUNKS = 128  # one VAD request covers at most this many chunks (4.1 s)
APPEND_PIECE = ms(1_000)  # large messages are buffered in pieces so the pending-audio bound applies within them
HOLD_LIMIT = 2  # without drop_when_behind, audio beyond this many times max_pending_audio is still dropped
RESUME_FRACTION = 0.75  # has_room turns true again once pending audio is below this fraction of the bound


_RESULT_FOR: dict[type, type] = {VadRequest: VadResult, AsrRequest: AsrResult, SegmentationRequest: SegmentationResult,
                                 EmbeddingRequest: EmbeddingResult}


class SessionState(IntEnum):
    OPEN = 0
    ENDING = 1  # receive_end() was called: flushing
    CLOSED = 2  # End was emitted


@dataclass
class SessionStats:
    """Counters in samples (16 kHz, per stream sample: a multichannel frame counts once) or events.

    ``audio_in`` = ``audio_processed`` (through the VAD) + ``audio_dropped`` + ``lag`` (waiting for the VAD), exactly.
    ``audio_truncated``: audio through the VAD that an utterance's final lacks (evicted, see the module docstring).
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


@dataclass(frozen=True)
class _InFlight:
    kind: str  # "vad", "partial", "final", "diarization"
    expects: type  # the result class that answers it
    channel: int
    start: int = 0
    utterance: Optional[Utterance] = None
    window: Optional[tuple[int, int]] = None


@dataclass(eq=False)
class _Speculation:
    """The speculative final request of the open utterance's current pause: ``[start, end)`` at ``seq``."""

    seq: int
    start: int
    end: int
    result: Optional[AsrResult] = None


class _Channel:
    """The per-channel pipeline state the session drives."""

    def __init__(self, index: int, config: SessionConfig, transcript: ChannelTranscript, capacity: int,
                 diarizer: Any = None) -> None:
        self.index = index
        self.buffer = AudioBuffer(capacity)
        self.endpointer = VadEndpointer(config.vad)
        self.policy = PartialPolicy(config.partials, 0)
        self.transcript = transcript
        self.diarizer = diarizer
        self.vad_next = 0  # next sample to send to the VAD
        self.vad_busy = False
        self.vad_state: Any = None
        self.vad_state_at = -1  # the stream offset the saved VAD state continues from
        self.finalize_at: list[int] = []  # pending finalize points, oldest first
        self.open: Optional[Utterance] = None
        self.speculation: Optional[_Speculation] = None
        self.flushed = False  # end of stream reached the endpointer
        self.skipped_to = 0  # audio before this that the VAD has not seen was dropped (counts as processed)

    @property
    def vad_done(self) -> int:
        """Samples through the VAD (clipped to the audio received)."""
        pos = self.endpointer.position
        return min(pos, self.buffer.end) if pos is not None else 0


class Session:
    """See the module docstring; the public API is the one of ``docs/architecture.md``."""

    def __init__(self, session_id: str, config: SessionConfig) -> None:
        self.session_id = session_id
        self.config = config
        self._decoder = AudioDecoder(config.audio)  # UnsupportedFormat
        self.state = SessionState.OPEN
        self.stats = SessionStats()
        self._work: list[Request] = []
        self._events: list[wire.ServerEvent] = []
        self._in_flight: dict[int, _InFlight] = {}
        self._seq = 0
        self._next_id = 0
        self._utterance_keys = 0
        self._lag_warned = False
        self.drop_when_behind = True  # False: the caller applies backpressure (see has_room)
        self.models_behind = False  # set by the caller while its models are behind: partials and speculation wait
        self._room = True
        streams = config.audio.channels if config.multichannel else 1
        diarize = config.diarization and not config.multichannel
        vad = config.vad
        capacity = (HOLD_LIMIT * config.max_pending_audio + vad.max_utterance + vad.min_speech + vad.min_silence
                    + 2 * vad.speech_pad + config.diarizer.window + ms(10_000))
        self._channels: list[_Channel] = []
        for c in range(streams):
            diarizer = None
            if diarize:
                from streaming.diarization import StreamingDiarizer  # only sessions that diarize need it
                diarizer = StreamingDiarizer(config.diarizer, session_id, c, self._next_seq)
            label = f"ch{c}" if config.multichannel else None
            transcript = ChannelTranscript(c, self._allocate_id, label, diarizer, config.settled_speakers)
            self._channels.append(_Channel(c, config, transcript, capacity, diarizer))

    # ------------------------------------------------------------------------------------------------ input
    def receive_audio(self, data: bytes) -> None:
        """Decode and buffer a chunk of client audio (``InvalidAudio``; ``InvalidState`` after the end)."""
        self._require_open("audio")
        self._append(self._decoder.decode(data))
        self._advance()

    def receive_finalize(self) -> None:
        """Close the open utterance at the audio received so far."""
        self._require_open("finalize")
        for ch in self._channels:
            if not ch.finalize_at or ch.finalize_at[-1] != ch.buffer.end:  # repeats add nothing
                ch.finalize_at.append(ch.buffer.end)
        self._advance()

    def receive_end(self) -> None:
        """No more audio: flush speech, diarization and finals; ``End`` follows once nothing is in flight."""
        self._require_open("stop")
        self._append(self._decoder.flush())
        self._transition(SessionState.ENDING)
        for ch in self._channels:
            if ch.diarizer is not None:
                self._issue(ch.diarizer.finish(ch.buffer), "diarization", ch.index)
        self._advance()

    def receive_result(self, result: Result) -> None:
        """Take one model result; results of unknown or stale requests (or after the end) are dropped and counted."""
        entry = self._in_flight.get(result.seq) if self.state != SessionState.CLOSED else None
        if entry is None or result.session_id != self.session_id or not isinstance(result, entry.expects):
            self.stats.results_dropped += 1  # a mistyped result leaves its request waiting for the right one
            return
        del self._in_flight[result.seq]
        ch = self._channels[entry.channel]
        if entry.kind == "vad" and isinstance(result, VadResult):
            self._on_vad(ch, entry, result)
        elif entry.kind == "final" and isinstance(result, AsrResult):
            assert entry.utterance is not None
            self._set_final(ch, entry.utterance, entry.start, result)
        elif entry.kind == "speculative" and isinstance(result, AsrResult):
            self._on_speculative(ch, entry, result)
        elif entry.kind == "partial" and isinstance(result, AsrResult) and self._partial_current(ch, entry):
            assert entry.utterance is not None and entry.window is not None
            text = ch.policy.on_result(absolute_words(result.words, entry.start, entry.window[0], entry.window[1]),
                                       result.text)
            self._events += ch.transcript.partial(entry.utterance, entry.window[1], text)
        elif (entry.kind == "diarization" and isinstance(result, (SegmentationResult, EmbeddingResult))
              and ch.diarizer is not None and ch.diarizer.owns(result.seq)):
            self._issue(ch.diarizer.on_result(result, ch.buffer), "diarization", ch.index)
        else:  # a partial for a closed or superseded decode
            self.stats.results_dropped += 1
        self._advance()

    @property
    def pending_audio(self) -> int:
        """Samples received but not yet sent to the VAD (the most behind channel)."""
        return self._channels[0].buffer.end - min(ch.vad_next for ch in self._channels)

    @property
    def has_room(self) -> bool:
        """Whether more audio may be fed without exceeding ``max_pending_audio``: false from the bound until the
        backlog has drained below ``RESUME_FRACTION`` of it (hysteresis, so reading resumes in useful amounts)."""
        bound = self.config.max_pending_audio
        pending = self.pending_audio
        if pending >= bound:
            self._room = False
        elif pending < RESUME_FRACTION * bound:
            self._room = True
        return self._room or self.state != SessionState.OPEN

    # ------------------------------------------------------------------------------------------------ output
    def work_to_run(self) -> list[Request]:
        """Model requests made since the last call."""
        work, self._work = self._work, []
        return work

    def events_to_send(self) -> list[wire.ServerEvent]:
        """Protocol events made since the last call."""
        events, self._events = self._events, []
        return events

    @property
    def finals_outstanding(self) -> bool:
        """A finalize not yet applied, or an ended utterance whose final is not out yet."""
        return any(ch.finalize_at or ch.transcript.closed_waiting for ch in self._channels)

    # ------------------------------------------------------------------------------------------------ internals
    def _transition(self, state: SessionState) -> None:
        """The only place the lifecycle changes: OPEN → ENDING → CLOSED."""
        assert state == self.state + 1, f"{self.state.name} → {state.name}"
        self.state = state

    def _require_open(self, what: str) -> None:
        if self.state != SessionState.OPEN:
            raise InvalidState(f"{what} after stop: the stream is ending; open a new connection for more audio")

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _allocate_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _issue(self, requests: list[Request], kind: str, channel: int, **extra: Any) -> None:
        for request in requests:
            self._in_flight[request.seq] = _InFlight(kind, _RESULT_FOR[type(request)], channel, request.start, **extra)
            self._work.append(request)

    def _append(self, frames: np.ndarray) -> None:
        if not self.config.multichannel:
            frames = downmix(frames)
        for a in range(0, frames.shape[1], APPEND_PIECE):
            piece = frames[:, a:a + APPEND_PIECE]
            for ch in self._channels:
                ch.buffer.append(piece[ch.index])
            self.stats.audio_in += piece.shape[1]
            self._drop_pending_excess()

    def _drop_pending_excess(self) -> None:
        """Skip the oldest audio not yet sent to the VAD, on every channel alike, so at most ``max_pending_audio``
        (less a tenth, so warnings come at most every tenth of the bound) waits; without ``drop_when_behind`` only
        beyond ``HOLD_LIMIT`` times the bound. Audio the buffer already evicted is skipped in any case."""
        bound = self.config.max_pending_audio
        limit = bound if self.drop_when_behind else HOLD_LIMIT * bound
        behind = min(ch.vad_next for ch in self._channels)
        evicted = max(ch.buffer.start for ch in self._channels)
        end = self._channels[0].buffer.end
        if end - behind <= limit and behind >= evicted:
            return
        target = max(end - (bound - bound // 10), evicted) if end - behind > limit else evicted
        dropped = target - behind
        for ch in self._channels:
            if ch.vad_next < target:
                ch.vad_next = target
                ch.finalize_at = [f for f in ch.finalize_at if f > target]
            ch.skipped_to = max(ch.skipped_to, target)
        self.stats.audio_dropped += dropped
        self._events.append(wire.Warning(
            "audio_dropped", f"the server fell behind and skipped {dropped / SAMPLE_RATE:.2f} s of audio",
            dropped_seconds=dropped / SAMPLE_RATE))

    def _advance(self) -> None:
        """Issue due work, emit due events, release audio, and finish the stream when everything is done."""
        for ch in self._channels:
            self._vad_step(ch)
            if ch.diarizer is not None and self.state == SessionState.OPEN:
                self._issue(ch.diarizer.on_audio(ch.buffer), "diarization", ch.index)
        for ch in self._channels:
            self._partial_step(ch)
            if ch.diarizer is not None:
                for merge in ch.diarizer.pop_merges():  # out first; the transcript relabels what it keeps, as clients do
                    self._events.append(merge)
                    ch.transcript.merge(merge)
                turns = ch.diarizer.pop_final_turns()  # popped either way so they never pile up
                if turns and self.config.speaker_turns:
                    self._events.append(wire.SpeakerTurns(tuple(turns)))
            ended = self.state == SessionState.ENDING and (ch.diarizer is None or ch.diarizer.idle)
            self._events += ch.transcript.ready(ended=ended)
            retain = min(ch.vad_next, ch.endpointer.retain_from)
            if ch.diarizer is not None:
                retain = min(retain, ch.diarizer.oldest_needed)
            ch.buffer.discard_before(retain)
        stats = self.stats
        through = min(max(ch.vad_done, ch.skipped_to) for ch in self._channels)  # every drop ends before it
        stats.audio_processed = through - stats.audio_dropped
        stats.lag = stats.audio_in - through
        stats.utterances = sum(ch.transcript.finals_emitted for ch in self._channels)
        if self.state == SessionState.ENDING and all(self._channel_done(ch) for ch in self._channels):
            speakers: tuple[str, ...] = ()
            if self.config.multichannel:
                speakers = tuple(f"ch{ch.index}" for ch in self._channels if ch.transcript.finals_emitted)
            elif self._channels[0].diarizer is not None:
                speakers = tuple(self._channels[0].diarizer.speakers)
            self._events.append(wire.End(stats.audio_in, stats.utterances, speakers, stats.audio_processed,
                                         stats.audio_dropped))
            self._transition(SessionState.CLOSED)

    def _channel_done(self, ch: _Channel) -> bool:
        return (ch.flushed and not ch.vad_busy and ch.transcript.waiting == 0
                and (ch.diarizer is None or ch.diarizer.idle))

    # ------------------------------------------------------------------------------------------------ VAD
    def _vad_step(self, ch: _Channel) -> None:
        """Apply due finalize points and the end of stream, then send the next VAD request if none is in flight."""
        if ch.vad_busy:
            return
        if ch.vad_next < ch.buffer.start:  # evicted before the VAD saw it (only a caller ignoring has_room)
            self._drop_pending_excess()
        while ch.finalize_at and ch.finalize_at[0] - ch.vad_next < VAD_CHUNK:
            self._on_vad_events(ch, ch.endpointer.flush(ch.finalize_at.pop(0)))
        end = ch.buffer.end
        if self.state == SessionState.ENDING and ch.vad_next >= end:
            if not ch.flushed:
                ch.flushed = True
                self._on_vad_events(ch, ch.endpointer.flush(end))
            return
        limit = ch.finalize_at[0] if ch.finalize_at else end
        chunks = min((limit - ch.vad_next) // VAD_CHUNK, MAX_VAD_CHUNKS)
        if chunks <= 0 and self.state == SessionState.ENDING and not ch.finalize_at:
            chunks = math.ceil((end - ch.vad_next) / VAD_CHUNK)  # the tail, zero-padded to whole chunks
        if chunks <= 0:
            return
        a = ch.vad_next
        audio = np.zeros(chunks * VAD_CHUNK, dtype=np.float32)
        real = ch.buffer.read(a, min(a + len(audio), end))
        audio[:len(real)] = real
        state = ch.vad_state if ch.vad_state_at == a else None
        self._issue([VadRequest(self.session_id, self._next_seq(), ch.index, a, audio, state)], "vad", ch.index)
        ch.vad_next = a + len(audio)
        ch.vad_busy = True

    def _on_vad(self, ch: _Channel, entry: _InFlight, result: VadResult) -> None:
        ch.vad_busy = False
        probs = np.asarray(result.probs, dtype=np.float32).reshape(-1)
        ch.vad_state, ch.vad_state_at = result.state, entry.start + len(probs) * VAD_CHUNK
        self._on_vad_events(ch, ch.endpointer.push(probs, entry.start))
        self._speculate(ch)

    def _on_vad_events(self, ch: _Channel, events: list[VadEvent]) -> None:
        for event in events:
            if isinstance(event, SpeechStart):
                self._events.append(wire.SpeechStarted(ch.index, event.start))
                self._utterance_keys += 1
                ch.open = ch.transcript.open(self._utterance_keys, event.start)
                ch.policy.reset(event.start)
            elif isinstance(event, SpeechEnd) and ch.open is not None:
                utt, ch.open = ch.open, None
                spec, ch.speculation = ch.speculation, None
                ch.transcript.close(utt, event.end)
                ch.policy.cancel()
                start, audio = ch.buffer.read_retained(event.start, event.end)
                if start > utt.start:
                    self._truncated(utt, start)
                if len(audio) == 0:  # nothing of it is left: its final is empty (an id may be out already)
                    ch.transcript.set_final(utt, "", [])
                    continue
                if spec is not None and self._final_from_speculation(ch, spec, utt, start, event.end):
                    continue
                request = AsrRequest(self.session_id, self._next_seq(), ch.index, start, audio, utt.key,
                                     AsrKind.FINAL)
                self._issue([request], "final", ch.index, utterance=utt)

    def _truncated(self, utt: Utterance, start: int) -> None:
        """The buffer no longer holds ``[utt.start, start)``: the final covers what remains, and the client is told."""
        assert utt.end is not None
        missing = min(start, utt.end) - utt.start
        utt.start = min(start, utt.end - 1)
        self.stats.audio_truncated += missing
        self._events.append(wire.Warning(
            "utterance_truncated", f"the server fell behind and the first {missing / SAMPLE_RATE:.2f} s of an "
                                   "utterance were lost before it could be transcribed", dropped_seconds=missing / SAMPLE_RATE))

    # ------------------------------------------------------------------------------------------------ speculation
    def _speculate(self, ch: _Channel) -> None:
        """After VAD results: send the open utterance's final request once a pause has lasted ``speech_pad``; a
        speculation whose pause ended in speech becomes a partial (now, or when its result is back)."""
        spec, utt = ch.speculation, ch.open
        end = ch.endpointer.pending_end if utt is not None else None
        if spec is not None and spec.end == end:
            return  # still the same pause
        if spec is not None:  # speech resumed: its result serves as a partial
            ch.speculation = None
            self.stats.speculations_missed += 1
            if spec.result is not None and utt is not None:
                self._adopt(ch, utt, (spec.start, spec.end), spec.result)
        if end is None or utt is None or not self.config.speculative_finals or self._behind(ch)[0]:
            return
        start, audio = ch.buffer.read_retained(utt.start, end)
        if len(audio) == 0 or not self._may_speculate(ch, start, end):
            return
        request = AsrRequest(self.session_id, self._next_seq(), ch.index, start, audio, utt.key, AsrKind.FINAL)
        self._issue([request], "speculative", ch.index, utterance=utt, window=(start, end))
        ch.speculation = _Speculation(request.seq, start, end)

    def _may_speculate(self, ch: _Channel, start: int, end: int) -> bool:
        """Whether the utterance's partial compute, this speculation counted, stays within ``budget_ratio +
        speculation_budget`` final passes of the utterance so far (so missed speculations cannot pile up)."""
        extra = self.config.speculation_budget * (end - ch.policy.utterance_start)
        return ch.policy.budget(end) + extra >= end - start

    def _on_speculative(self, ch: _Channel, entry: _InFlight, result: AsrResult) -> None:
        spec = ch.speculation
        if spec is not None and spec.seq == result.seq:
            spec.result = result  # the pause goes on: the final, if the VAD closes the utterance there
        elif ch.open is not None and ch.open is entry.utterance:
            assert entry.window is not None
            self._adopt(ch, ch.open, entry.window, result)
        else:  # its utterance closed at another end
            self.stats.results_dropped += 1

    def _final_from_speculation(self, ch: _Channel, spec: _Speculation, utt: Utterance, start: int,
                                end: int) -> bool:
        """At the VAD's close of ``utt`` over ``[start, end)``: whether the speculative request was exactly that
        final's (then it is the final: its result now, or the request in flight is answered as the final)."""
        if (spec.start, spec.end) != (start, end):
            self.stats.speculations_missed += 1
            return False
        self.stats.finals_speculated += 1
        if spec.result is not None:
            self._set_final(ch, utt, start, spec.result)
        else:
            self._in_flight[spec.seq] = _InFlight("final", AsrResult, ch.index, start, utterance=utt)
        return True

    def _set_final(self, ch: _Channel, utt: Utterance, start: int, result: AsrResult) -> None:
        assert utt.end is not None
        ch.transcript.set_final(utt, result.text.strip(), absolute_words(result.words, start, utt.start, utt.end))

    def _adopt(self, ch: _Channel, utt: Utterance, window: tuple[int, int], result: AsrResult) -> None:
        """A speculative decode of the open utterance so far, taken as its latest partial decode."""
        words = absolute_words(result.words, window[0], window[0], window[1])
        text = ch.policy.adopt(window, words, result.text)
        if text is not None and self.config.interim_results and self.config.partials.enabled:
            self._events += ch.transcript.partial(utt, window[1], text)

    # ------------------------------------------------------------------------------------------------ partials
    def _behind(self, ch: _Channel) -> tuple[bool, int]:
        """Whether the channel is behind (optional decodes wait: partials, speculation), and its VAD lag."""
        options = self.config.partials
        lag = ch.buffer.end - max(ch.vad_done, ch.skipped_to)
        backlog = sum(1 for e in self._in_flight.values()
                      if e.channel == ch.index and e.kind in ("final", "diarization"))
        return self.models_behind or lag > options.max_lag or backlog > options.max_pending_requests, lag

    def _partial_current(self, ch: _Channel, entry: _InFlight) -> bool:
        return ch.open is entry.utterance and ch.policy.in_flight == entry.window

    def _partial_step(self, ch: _Channel) -> None:
        options = self.config.partials
        if ch.open is None or not (self.config.interim_results and options.enabled):
            return
        if any(e.kind == "speculative" and e.utterance is ch.open for e in self._in_flight.values()):
            return  # its result will be this utterance's next partial
        window = ch.policy.due(min(ch.vad_done, ch.endpointer.speech_until))
        if window is None:
            return
        behind, lag = self._behind(ch)
        if behind:
            ch.policy.skip(window[1])
            self.stats.partials_dropped += 1
            if not self._lag_warned:
                self._lag_warned = True
                self._events.append(wire.Warning(
                    "partials_dropped", "audio is waiting to be processed (the server is behind, or audio arrives "
                                        "faster than real time): partial results are skipped until it catches up "
                                        "(finals are not affected)"))
            return
        if lag <= options.max_lag // 2:
            self._lag_warned = False
        if window[0] < ch.buffer.start:  # its audio was evicted: no partial over it (the final is cut anyway)
            ch.policy.skip(window[1])
            self.stats.partials_dropped += 1
            return
        ch.policy.start(window)
        a, b = window
        request = AsrRequest(self.session_id, self._next_seq(), ch.index, a, ch.buffer.read(a, b), ch.open.key,
                             AsrKind.PARTIAL)
        self._issue([request], "partial", ch.index, utterance=ch.open, window=window)
