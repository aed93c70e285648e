"""Deepgram's live API (``/v1/listen``) as a sans-I/O protocol object, so Deepgram clients work unchanged.

The stream is configured by the URL's query (:func:`parse_query`, checked before the upgrade: a value rechka cannot
honour is an HTTP 400 with Deepgram's error body, :func:`error_body`). Client messages: binary audio (an empty one
ends the stream, as with Deepgram), text ``KeepAlive``, ``Finalize``, ``CloseStream``. Server messages:
``Results`` (interim and final; every field Deepgram's SDK reads; the final a ``Finalize`` cut has
``from_finalize``, and a ``Finalize`` with nothing to cut is answered by an empty one), ``SpeechStarted`` (``vad_events``),
``UtteranceEnd`` (``utterance_end_ms``), ``Metadata`` (at the end), ``Error``. No audio or text for 10 s closes
1011 ``NET-0001``; undecodable audio closes 1002 ``DATA-0000``. See ``docs/integrations.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from streaming import wire
from streaming.audio import validate_format
from streaming.config import SAMPLE_RATE, AudioFormat, SessionConfig, ms
from streaming.errors import InvalidAudio, RechkaError, UnsupportedFormat
from streaming.protocols.base import Close, CloseCode, Limits, Phase, StreamProtocol

IDLE_TIMEOUT = 10.0  # Deepgram closes a stream without audio or text for this long (NET-0001)
ENCODINGS = {"linear16": "pcm_s16le", "mulaw": "mulaw", "alaw": "alaw"}
DIARIZE_MODELS = ("latest", "v1")
MIN_ENDPOINTING_MS = 200  # shorter pauses would cut words apart: endpointing below this is raised to it
MAX_ENDPOINTING_MS = 10_000
MIN_UTTERANCE_END_MS = 1000  # Deepgram's own lower bound
CONFIDENCE = 1.0  # rechka's models give no confidence; clients require the field
#: Parameters that change nothing here: accepted and ignored (clients send some the SDK lacks, e.g. no_delay).
IGNORED = frozenset({
    "model", "version", "punctuate", "smart_format", "no_delay", "filler_words", "numerals", "profanity_filter",
    "dictation", "keywords", "keyterm", "replace", "search", "tag", "extra", "mip_opt_out", "language_hint",
    "callback_method", "token"})


class InvalidQuery(ValueError):
    """A query parameter value rechka cannot honour (HTTP 400 before the upgrade)."""


@dataclass(frozen=True)
class DeepgramOptions:
    """The query parameters that change what rechka does; see :func:`parse_query`."""

    encoding: str = "linear16"
    sample_rate: int = SAMPLE_RATE
    channels: int = 1
    multichannel: bool = False
    interim_results: bool = False
    diarize: bool = False
    endpointing: Optional[int] = None  # ms of silence that end an utterance; None: rechka's default
    speech_final: bool = True  # False with endpointing=false: Deepgram then never sets speech_final
    utterance_end_ms: Optional[int] = None
    vad_events: bool = False
    language: str = "ru"

    def session_config(self, base: SessionConfig) -> SessionConfig:
        vad = base.vad
        if self.endpointing is not None:
            vad = dataclasses.replace(vad, min_silence=ms(self.endpointing))
        return dataclasses.replace(
            base, audio=AudioFormat(ENCODINGS[self.encoding], self.sample_rate, self.channels),
            multichannel=self.multichannel, diarization=self.diarize, interim_results=self.interim_results,
            speaker_turns=False, settled_speakers=True, vad=vad)  # Deepgram has no revisions: finals wait for them


def _flag(name: str, value: str) -> bool:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidQuery(f"{name} must be true or false, not {value!r}")


def _integer(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidQuery(f"{name} must be an integer, not {value!r}") from None


def parse_query(query: Mapping[str, Sequence[str]]) -> DeepgramOptions:
    """Deepgram's query parameters (``parse_qs`` form; the last value counts) → options; :class:`InvalidQuery`
    names the fix. Unknown parameters are ignored, as are those in :data:`IGNORED`."""
    q = {name: values[-1] for name, values in query.items() if values}
    if "encoding" not in q:
        raise InvalidQuery("rechka takes raw audio only: set encoding (linear16, mulaw or alaw) and sample_rate")
    if q["encoding"] not in ENCODINGS:
        raise InvalidQuery(f"encoding {q['encoding']!r} is not supported; use linear16, mulaw or alaw")
    if q.get("callback"):
        raise InvalidQuery("callback is not supported: read the results from the websocket")
    if q.get("redact", "false").lower() != "false":
        raise InvalidQuery("redact is not supported: rechka cannot redact transcripts")
    if _flag("detect_entities", q.get("detect_entities", "false")):
        raise InvalidQuery("detect_entities is not supported")
    language = q.get("language", "ru")
    if not (language.lower() == "ru" or language.lower().startswith("ru-")):
        raise InvalidQuery(f"rechka transcribes Russian only: use language=ru (not {language!r})")
    diarize = _flag("diarize", q.get("diarize", "false"))
    if "diarize_model" in q:
        if q["diarize_model"] not in DIARIZE_MODELS:
            raise InvalidQuery(f"diarize_model must be one of {', '.join(DIARIZE_MODELS)} for streaming")
        diarize = True
    endpointing, speech_final = None, True
    raw = q.get("endpointing", "true").lower()
    if raw == "false":
        speech_final = False
    elif raw != "true":
        value = _integer("endpointing", raw)
        if not 0 <= value <= MAX_ENDPOINTING_MS:
            raise InvalidQuery(f"endpointing must be between 0 and {MAX_ENDPOINTING_MS} ms, or false")
        endpointing = max(value, MIN_ENDPOINTING_MS)
    utterance_end = None
    if "utterance_end_ms" in q:
        utterance_end = _integer("utterance_end_ms", q["utterance_end_ms"])
        if utterance_end < MIN_UTTERANCE_END_MS:
            raise InvalidQuery(f"utterance_end_ms must be at least {MIN_UTTERANCE_END_MS}")
    options = DeepgramOptions(
        encoding=q["encoding"], sample_rate=_integer("sample_rate", q.get("sample_rate", str(SAMPLE_RATE))),
        channels=_integer("channels", q.get("channels", "1")),
        multichannel=_flag("multichannel", q.get("multichannel", "false")),
        interim_results=_flag("interim_results", q.get("interim_results", "false")), diarize=diarize,
        endpointing=endpointing, speech_final=speech_final, utterance_end_ms=utterance_end,
        vad_events=_flag("vad_events", q.get("vad_events", "false")), language=language)
    try:
        validate_format(AudioFormat(ENCODINGS[options.encoding], options.sample_rate, options.channels))
    except UnsupportedFormat as exc:
        raise InvalidQuery(str(exc)) from None
    return options


def error_body(message: str, request_id: str) -> dict[str, str]:
    """Deepgram's error body for a refused handshake (also sent, as text, in its ``dg-error`` header)."""
    return {"err_code": "Bad Request", "err_msg": message, "request_id": request_id}


def request_id_of(session_id: str) -> str:
    """A session id as Deepgram's ``request_id`` (a UUID with dashes)."""
    try:
        return str(uuid.UUID(session_id))
    except ValueError:
        return session_id


class DeepgramProtocol(StreamProtocol):
    """One Deepgram live stream; the session opens at once from the query's options. ``created``: the ISO time
    the stream opened, for ``Metadata`` (the core keeps no clock)."""

    def __init__(self, session_id: str, limits: Limits, options: DeepgramOptions, created: str = "") -> None:
        super().__init__(session_id, limits)
        self.options = options
        self.created = created
        self.request_id = request_id_of(session_id)
        self._sha256 = hashlib.sha256()
        self._finalize_at: list[int] = []  # samples received at each Finalize whose final is not out yet
        self._utterance_end: dict[int, int] = {}  # channel → last word end awaiting its UtteranceEnd
        self._speech_at: dict[int, int] = {}  # channel → latest SpeechStarted sample
        asr = dict(limits.models.get("asr", {}))
        name = str(asr.get("name", "rechka"))
        self._metadata = {"request_id": self.request_id,
                          "model_info": {"name": name, "version": str(asr.get("checkpoint") or name),
                                         "arch": str(asr.get("head") or "gigaam")},
                          "model_uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"rechka:{name}:{asr.get('checkpoint')}"))}
        self._channels = options.channels if options.multichannel else 1
        self._start(options.session_config(limits.session))

    @property
    def idle_timeout(self) -> Optional[float]:
        return min(IDLE_TIMEOUT, self.limits.idle_timeout) if self.phase <= Phase.STREAMING else None

    def timeout_idle(self) -> None:
        self._begin_end(Close(CloseCode.INTERNAL_ERROR, "NET-0001: no audio or KeepAlive received in time"))

    # ----------------------------------------------------------------------------------------------- in
    def _on_text(self, text: str) -> None:
        try:
            kind = json.loads(text).get("type")
        except (ValueError, AttributeError):
            kind = None
        assert self.session is not None
        if kind == "KeepAlive":
            return
        if kind == "Finalize":
            self._finalize_at.append(self.session.stats.audio_in)
            self.session.receive_finalize()
            self._pump()
        elif kind == "CloseStream":
            self._end_by_client()
        else:  # Deepgram answers a message it cannot parse with a SchemaError and keeps the stream
            self._send(json.dumps({"type": "Error", "variant": "SchemaError", "message": text[:200],
                                   "description": "expected KeepAlive, Finalize or CloseStream"}))

    def _on_bytes(self, data: bytes) -> None:
        if not data:
            self._end_by_client()  # an empty binary message ends the stream, as with Deepgram
            return
        assert self.session is not None
        self.session.receive_audio(data)
        self._sha256.update(data)
        self._pump()

    def _close_code_for(self, error: RechkaError) -> int:
        return CloseCode.PROTOCOL_ERROR if isinstance(error, InvalidAudio) else CloseCode.POLICY_VIOLATION

    # ----------------------------------------------------------------------------------------------- out
    def _pump(self) -> None:
        super()._pump()
        session = self.session
        if session is None or self.phase == Phase.CLOSING:
            return
        if self._finalize_at and not session.finals_outstanding:
            for at in self._finalize_at:  # nothing was open there: Deepgram still answers the Finalize
                self._send(json.dumps(self._results(0, at, at, "", (), True, from_finalize=True)))
            self._finalize_at.clear()
        self._due_utterance_ends(session.stats.audio_processed)

    def _on_events(self, events: list[wire.ServerEvent]) -> None:
        for event in events:
            if isinstance(event, wire.Partial):
                self._send(json.dumps(self._results(event.channel, event.start, event.end, event.text, (), False)),
                           event)
            elif isinstance(event, wire.Final):
                from_finalize = self._cut_by_finalize(event.end)
                body = self._results(event.channel, event.start, event.end, event.text, event.words, True,
                                     from_finalize)
                self._send(json.dumps(body), event)
                if self.options.utterance_end_ms is not None and event.words:
                    self._utterance_end[event.channel] = event.words[-1].end
            elif isinstance(event, wire.SpeechStarted):
                self._speech_at[event.channel] = event.start
                if self.options.vad_events:
                    self._send(json.dumps({"type": "SpeechStarted", "channel": [event.channel, self._channels],
                                           "timestamp": wire.samples_to_seconds(event.start)}))
            elif isinstance(event, wire.End):
                self._due_utterance_ends(None)
                self._send(json.dumps({
                    "type": "Metadata", "transaction_key": "deprecated", "request_id": self.request_id,
                    "sha256": self._sha256.hexdigest(), "created": self.created,
                    "duration": wire.samples_to_seconds(event.audio_samples), "channels": self.options.channels}),
                    event)
            # warnings, speaker turns, revisions and speaker merges have no Deepgram message (after a merge,
            # words carry the kept speaker's number; results already sent keep the merged one's)

    def _cut_by_finalize(self, end: int) -> bool:
        """Whether a final ending at ``end`` is the one a Finalize at ``at`` cut: speech the VAD ended itself ends at
        least ``min_silence - speech_pad`` before the point where its silence was complete, so before ``at``."""
        assert self.session is not None
        vad = self.session.config.vad
        for at in self._finalize_at:
            if at - (vad.min_silence - vad.speech_pad) < end <= at:
                self._finalize_at.remove(at)
                return True
        return False

    def _due_utterance_ends(self, processed: Optional[int]) -> None:
        """UtteranceEnd once ``utterance_end_ms`` of audio after the last word went by without new speech
        (``processed`` None: the stream ended, every pending one is due)."""
        gap = ms(self.options.utterance_end_ms or 0)
        for channel, last_end in list(self._utterance_end.items()):
            if self._speech_at.get(channel, -1) > last_end and self._speech_at[channel] < last_end + gap:
                del self._utterance_end[channel]  # speech came back sooner: the utterance goes on
            elif processed is None or processed >= last_end + gap:
                del self._utterance_end[channel]
                self._send(json.dumps({"type": "UtteranceEnd", "channel": [channel, self._channels],
                                       "last_word_end": wire.samples_to_seconds(last_end)}))

    def _results(self, channel: int, start: int, end: int, text: str, words: Sequence[wire.WordTiming],
                 is_final: bool, from_finalize: bool = False) -> dict[str, Any]:
        s = wire.samples_to_seconds
        out_words = []
        for w in words:
            word: dict[str, Any] = {"word": w.word, "start": s(w.start), "end": s(w.end), "confidence": CONFIDENCE,
                                    "punctuated_word": w.word}
            if self.options.diarize and not self.options.multichannel:
                word["speaker"] = speaker_number(w.speaker)
            out_words.append(word)
        return {"type": "Results", "channel_index": [channel, self._channels], "duration": s(end - start),
                "start": s(start), "is_final": is_final,
                "speech_final": is_final and self.options.speech_final and not from_finalize,
                "from_finalize": from_finalize,
                "channel": {"alternatives": [{"transcript": text, "confidence": CONFIDENCE, "words": out_words}]},
                "metadata": self._metadata}

    def _error(self, code: str, message: str, close_code: int) -> Close:
        self._send(json.dumps({"type": "Error", "variant": code, "description": message}))
        if close_code == CloseCode.PROTOCOL_ERROR:
            return Close(close_code, f"DATA-0000: {message}")
        return Close(close_code, message)


def speaker_number(label: Optional[str]) -> int:
    """rechka's ``S1``, ``S2``… → Deepgram's 0, 1…; a word nobody was heard in counts as speaker 0."""
    if label and label[0] == "S" and label[1:].isdigit():
        return int(label[1:]) - 1
    return 0

