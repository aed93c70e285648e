"""One transcription stream, sans-I/O: bytes and model results in; model requests and protocol events out.

The caller (``server/connection.py``, or ``server/offline.py`` in tests and benchmarks) feeds client messages and
model results, then collects :meth:`Session.work_to_run` and :meth:`Session.events_to_send` (both hand over their
pending list). Per channel: decoded audio goes into an :class:`~streaming.audio.AudioBuffer`; at most one VAD
request is in flight (its recurrent state chains); :class:`~streaming.vad.VadEndpointer` opens and closes
utterances; an open utterance gets partial decodes from its :class:`~streaming.partials.PartialPolicy`; a closed
one gets exactly one final decode over its samples; :class:`~streaming.transcript.ChannelTranscript` turns results
into events.

The ASR side of each channel (finals, partials, speculative finals at pauses) is :class:`~streaming.channel.Channel`'s;
requests, events and in-flight bookkeeping go through one :class:`~streaming.channel.Outbox`. With diarization on
(single stream), a ``StreamingDiarizer`` runs beside the VAD and gives speakers.

Backpressure: while the session is behind (audio waiting for the VAD above ``PartialOptions.max_lag``, more than
``max_pending_requests`` final and diarization requests of the channel in flight, or the caller's models behind:
:attr:`Session.models_behind`, set by the server while GigaAM's queue waits too long) partial decodes and
speculative finals are skipped (partials counted); a speculative final counts only the channel's final requests, not
its diarization backlog (finals do not wait for diarization). Audio waiting for the VAD (:attr:`Session.pending_audio`) is bounded by ``SessionConfig.max_pending_audio``:
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
from enum import IntEnum

import numpy as np

from streaming import wire
from streaming.audio import AudioDecoder, downmix
from streaming.channel import Channel, InFlight, Outbox, SessionStats
from streaming.config import SAMPLE_RATE, VAD_CHUNK, SessionConfig, ms
from streaming.errors import InvalidState
from streaming.partials import PartialPolicy
from streaming.transcript import ChannelTranscript
from streaming.vad import SpeechEnd, SpeechStart, VadEvent
from streaming.work import AsrResult, EmbeddingResult, Request, Result, SegmentationResult, VadRequest, VadResult

MAX_VAD_CHUNKS = 128  # one VAD request covers at most this many chunks (4.1 s)
APPEND_PIECE = ms(1_000)  # large messages are buffered in pieces so the pending-audio bound applies within them
HOLD_LIMIT = 2  # without drop_when_behind, audio beyond this many times max_pending_audio is still dropped
RESUME_FRACTION = 0.75  # has_room turns true again once pending audio is below this fraction of the bound


__all__ = ["Session", "SessionState", "SessionStats"]


class SessionState(IntEnum):
    OPEN = 0
    ENDING = 1  # receive_end() was called: flushing
    CLOSED = 2  # End was emitted


class Session:
    """See the module docstring; the public API is the one of ``docs/architecture.md``."""

    def __init__(self, session_id: str, config: SessionConfig) -> None:
        self.session_id = session_id
        self.config = config
        self._decoder = AudioDecoder(config.audio)  # UnsupportedFormat
        self.state = SessionState.OPEN
        self._out = Outbox(session_id, config)
        self.stats = self._out.stats
        self._next_id = 0
        self._utterance_keys = 0
        self.drop_when_behind = True  # False: the caller applies backpressure (see has_room)
        self._room = True
        streams = config.audio.channels if config.multichannel else 1
        diarize = config.diarization and not config.multichannel
        vad = config.vad
        capacity = (HOLD_LIMIT * config.max_pending_audio + vad.max_utterance + vad.min_speech + vad.min_silence
                    + 2 * vad.speech_pad + config.diarizer.window + ms(10_000))
        self._channels: list[Channel] = []
        for c in range(streams):
            diarizer = None
            if diarize:
                from streaming.diarization import StreamingDiarizer  # only sessions that diarize need it
                diarizer = StreamingDiarizer(config.diarizer, session_id, c, self._out.next_seq)
            label = f"ch{c}" if config.multichannel else None
            transcript = ChannelTranscript(c, self._allocate_id, label, diarizer, config.settled_speakers)
            policy = PartialPolicy(config.partials, 0)
            self._channels.append(Channel(c, self._out, transcript, capacity, policy, diarizer))

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
                self._out.issue(ch.diarizer.finish(ch.buffer), "diarization", ch.index)
        self._advance()

    def receive_result(self, result: Result) -> None:
        """Take one model result; results of unknown or stale requests (or after the end) are dropped and counted."""
        entry = self._out.in_flight.get(result.seq) if self.state != SessionState.CLOSED else None
        if entry is None or result.session_id != self.session_id or not isinstance(result, entry.expects):
            self.stats.results_dropped += 1  # a mistyped result leaves its request waiting for the right one
            return
        del self._out.in_flight[result.seq]
        ch = self._channels[entry.channel]
        if entry.kind == "vad" and isinstance(result, VadResult):
            self._on_vad(ch, entry, result)
        elif isinstance(result, AsrResult):
            if not ch.on_asr(entry, result):
                self.stats.results_dropped += 1
        elif (entry.kind == "diarization" and isinstance(result, (SegmentationResult, EmbeddingResult))
              and ch.diarizer is not None and ch.diarizer.owns(result.seq)):
            self._out.issue(ch.diarizer.on_result(result, ch.buffer), "diarization", ch.index)
        else:
            self.stats.results_dropped += 1
        self._advance()

    @property
    def pending_audio(self) -> int:
        """Samples received but not yet sent to the VAD (the most behind channel)."""
        return self._channels[0].buffer.end - min(ch.vad_next for ch in self._channels)

    @property
    def models_behind(self) -> bool:
        """Set by the caller while its models are behind: partials and speculative finals wait."""
        return self._out.models_behind

    @models_behind.setter
    def models_behind(self, behind: bool) -> None:
        self._out.models_behind = behind

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
        return self._out.take_work()

    def withdrawn_work(self) -> list[int]:
        """Seqs of requests handed over earlier whose results are no longer wanted (a speculative final whose pause
        ended in speech), since the last call: the caller may cancel them; a result that still comes is dropped."""
        return self._out.take_withdrawn()

    def events_to_send(self) -> list[wire.ServerEvent]:
        """Protocol events made since the last call."""
        return self._out.take_events()

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

    def _allocate_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

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
        self._out.events.append(wire.Warning(
            "audio_dropped", f"the server fell behind and skipped {dropped / SAMPLE_RATE:.2f} s of audio",
            dropped_seconds=dropped / SAMPLE_RATE))

    def _advance(self) -> None:
        """Issue due work, emit due events, release audio, and finish the stream when everything is done."""
        for ch in self._channels:
            self._vad_step(ch)
            if ch.diarizer is not None and self.state == SessionState.OPEN:
                self._out.issue(ch.diarizer.on_audio(ch.buffer), "diarization", ch.index)
        for ch in self._channels:
            ch.partial_step()
            if ch.diarizer is not None:
                for merge in ch.diarizer.pop_merges():  # out first; the transcript relabels what it keeps, as clients do
                    self._out.events.append(merge)
                    ch.transcript.merge(merge)
                turns = ch.diarizer.pop_final_turns()  # popped either way so they never pile up
                if turns and self.config.speaker_turns:
                    self._out.events.append(wire.SpeakerTurns(tuple(turns)))
            ended = self.state == SessionState.ENDING and (ch.diarizer is None or ch.diarizer.idle)
            self._out.events += ch.transcript.ready(ended=ended)
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
            self._out.events.append(wire.End(stats.audio_in, stats.utterances, speakers, stats.audio_processed,
                                         stats.audio_dropped))
            self._transition(SessionState.CLOSED)

    def _channel_done(self, ch: Channel) -> bool:
        return (ch.flushed and not ch.vad_busy and ch.transcript.waiting == 0
                and (ch.diarizer is None or ch.diarizer.idle))

    # ------------------------------------------------------------------------------------------------ VAD
    def _vad_step(self, ch: Channel) -> None:
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
        self._out.issue([VadRequest(self.session_id, self._out.next_seq(), ch.index, a, audio, state)], "vad", ch.index)
        ch.vad_next = a + len(audio)
        ch.vad_busy = True

    def _on_vad(self, ch: Channel, entry: InFlight, result: VadResult) -> None:
        ch.vad_busy = False
        probs = np.asarray(result.probs, dtype=np.float32).reshape(-1)
        ch.vad_state, ch.vad_state_at = result.state, entry.start + len(probs) * VAD_CHUNK
        self._on_vad_events(ch, ch.endpointer.push(probs, entry.start))
        ch.speculate()

    def _on_vad_events(self, ch: Channel, events: list[VadEvent]) -> None:
        for event in events:
            if isinstance(event, SpeechStart):
                self._out.events.append(wire.SpeechStarted(ch.index, event.start))
                self._utterance_keys += 1
                ch.open_utterance(self._utterance_keys, event.start)
            elif isinstance(event, SpeechEnd):
                ch.close_utterance(event)
