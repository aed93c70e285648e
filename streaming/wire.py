"""Protocol v1 messages as dataclasses: parse what clients send, dump what the server sends.

Shared by the server and by ``clients/`` so neither re-spells a message. Inside the core, times are sample offsets
at 16 kHz; :func:`dump_event` converts them to seconds (3 decimals), the only place that does.
See ``docs/protocol.md`` for the contract.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Union

from streaming.config import SAMPLE_RATE
from streaming.errors import InvalidMessage

ENCODINGS = ("pcm_s16le", "pcm_f32le", "mulaw", "alaw")
MAX_TEXT_BYTES = 16 * 1024  # a control message is a flat object of a few hundred bytes
MAX_NAME_SHOWN = 40  # characters of a client's unknown field name echoed in an error


def samples_to_seconds(samples: int) -> float:
    return round(samples / SAMPLE_RATE, 3)


# --------------------------------------------------------------------------------------------- client → server
@dataclass(frozen=True)
class Start:
    """The first message of a stream; every field is optional."""

    encoding: str = "pcm_s16le"
    sample_rate: int = SAMPLE_RATE
    channels: int = 1
    multichannel: bool = False
    diarization: bool = True
    max_speakers: Optional[int] = None
    interim_results: bool = True
    speaker_turns: bool = False
    settled_speakers: bool = False
    min_speakers: Optional[int] = None
    num_speakers: Optional[int] = None


@dataclass(frozen=True)
class Finalize:
    """End the current utterance now."""


@dataclass(frozen=True)
class Stop:
    """End of audio: flush every final, send ``end``, close."""


@dataclass(frozen=True)
class KeepAlive:
    """Resets the idle timeout; does nothing else."""


ClientMessage = Union[Start, Finalize, Stop, KeepAlive]

_START_FIELDS: dict[str, tuple[type, ...]] = {
    "encoding": (str,),
    "sample_rate": (int,),
    "channels": (int,),
    "multichannel": (bool,),
    "diarization": (bool,),
    "max_speakers": (int, type(None)),
    "min_speakers": (int, type(None)),
    "num_speakers": (int, type(None)),
    "interim_results": (bool,),
    "speaker_turns": (bool,),
    "settled_speakers": (bool,),
}


def parse_client_message(text: Union[str, bytes]) -> ClientMessage:
    """Parse one text message; raise :class:`InvalidMessage` naming what is wrong.

    Formats (encoding names, rates, channel counts) are checked later by the audio decoder, which raises
    ``UnsupportedFormat``; here only JSON shape and field types are checked.
    """
    if len(text) > MAX_TEXT_BYTES:
        raise InvalidMessage(f"text messages must be at most {MAX_TEXT_BYTES} bytes; audio goes in binary messages")
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurdly deep nesting
        raise InvalidMessage("text messages must be JSON objects") from None
    if not isinstance(obj, dict):
        raise InvalidMessage("text messages must be JSON objects")
    kind = obj.get("type")
    if kind == "start":
        kwargs: dict[str, Any] = {}
        for name, value in obj.items():
            if name == "type":
                continue
            types = _START_FIELDS.get(name)
            if types is None:
                raise InvalidMessage(f"unknown field {shown(name)} in start; known: {', '.join(_START_FIELDS)}")
            # bool is an int subclass: reject true/false where a number is expected
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
                raise InvalidMessage(f"field {name!r} must be {expected}")
            kwargs[name] = value
        return Start(**kwargs)
    if kind == "finalize":
        return Finalize()
    if kind == "stop":
        return Stop()
    if kind == "keepalive":
        return KeepAlive()
    if kind is None:
        raise InvalidMessage('text messages need a "type" field')
    raise InvalidMessage("unknown message type; expected start, finalize, stop or keepalive")


def shown(name: str) -> str:
    """A client-supplied name as quoted in an error message: ``repr``, cut to ``MAX_NAME_SHOWN`` characters."""
    return repr(name) if len(name) <= MAX_NAME_SHOWN else repr(name[:MAX_NAME_SHOWN]) + "…"


# --------------------------------------------------------------------------------------------- server → client
@dataclass(frozen=True)
class WordTiming:
    word: str
    start: int
    end: int
    speaker: Optional[str] = None


@dataclass(frozen=True)
class Partial:
    utterance_id: int
    channel: int
    start: int
    end: int
    text: str
    speaker: Optional[str] = None


@dataclass(frozen=True)
class Final:
    utterance_id: int
    channel: int
    start: int
    end: int
    text: str
    words: tuple[WordTiming, ...] = ()
    speaker: Optional[str] = None


@dataclass(frozen=True)
class SpeakerRevision:
    """Diarization settled other speakers for words of the final ``utterance_id`` already sent: ``words`` are that
    final's words in order, each with its settled speaker; ``speaker`` is the settled speaker of its first word (of
    its span for a final without words). Sent at most once per final; ``streaming.transcript.revise`` applies it."""

    utterance_id: int
    channel: int
    words: tuple[WordTiming, ...]
    speaker: Optional[str] = None


@dataclass(frozen=True)
class SpeakerMerge:
    """Diarization found that speaker ``merged`` of ``channel`` is the same person as ``into`` (one voice had been
    given two labels): every event already sent with label ``merged`` on that channel (word, final, partial, turn,
    revision) now means ``into``, and no later event carries ``merged``. ``at``: the sample position of the
    diarization window that decided it. Merges come in order and may chain (``S7`` into ``S2``, later ``S2`` into
    ``S1``); :meth:`relabel` applies one to a label."""

    channel: int
    merged: str
    into: str
    at: int

    def relabel(self, label: Optional[str]) -> Optional[str]:
        """``label`` as it reads after this merge."""
        return self.into if label == self.merged else label

    def relabel_turn(self, turn: "Turn") -> "Turn":
        """``turn`` as it reads after this merge (a turn of another channel is unchanged)."""
        return replace(turn, speaker=self.into) if turn.channel == self.channel and turn.speaker == self.merged \
            else turn


@dataclass(frozen=True)
class Turn:
    speaker: str
    start: int
    end: int
    channel: int = 0


@dataclass(frozen=True)
class SpeakerTurns:
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Warning:  # noqa: A001 - the protocol's name
    code: str
    message: str
    dropped_seconds: Optional[float] = None


@dataclass(frozen=True)
class Error:
    code: str
    message: str


@dataclass(frozen=True)
class Ready:
    session_id: str
    config: dict[str, Any]
    models: dict[str, Any]


@dataclass(frozen=True)
class SpeechStarted:
    """The VAD heard speech begin on ``channel`` at sample ``start`` (a core event; protocol v1 does not send it)."""

    channel: int
    start: int


@dataclass(frozen=True)
class End:
    """The stream's summary. ``audio_samples`` received = ``processed_samples`` + ``dropped_samples`` exactly (at
    16 kHz; ``None`` where a peer did not say)."""

    audio_samples: int
    utterances: int
    speakers: tuple[str, ...] = field(default_factory=tuple)
    processed_samples: Optional[int] = None
    dropped_samples: Optional[int] = None


ServerEvent = Union[Ready, Partial, Final, SpeakerRevision, SpeakerMerge, SpeakerTurns, Warning, Error, End,
                    SpeechStarted]


def _words_to_dicts(words: tuple[WordTiming, ...]) -> list[dict[str, Any]]:
    s = samples_to_seconds
    return [{"word": w.word, "start": s(w.start), "end": s(w.end), "speaker": w.speaker} for w in words]


def event_to_dict(event: ServerEvent) -> dict[str, Any]:
    """The JSON object of one server event (times in seconds)."""
    s = samples_to_seconds
    if isinstance(event, Partial):
        return {"type": "partial", "utterance_id": event.utterance_id, "channel": event.channel,
                "speaker": event.speaker, "start": s(event.start), "end": s(event.end), "text": event.text}
    if isinstance(event, Final):
        return {"type": "final", "utterance_id": event.utterance_id, "channel": event.channel,
                "speaker": event.speaker, "start": s(event.start), "end": s(event.end), "text": event.text,
                "words": _words_to_dicts(event.words)}
    if isinstance(event, SpeakerRevision):
        return {"type": "speaker_revision", "utterance_id": event.utterance_id, "channel": event.channel,
                "speaker": event.speaker, "words": _words_to_dicts(event.words)}
    if isinstance(event, SpeakerMerge):
        return {"type": "speaker_merge", "channel": event.channel, "from": event.merged, "into": event.into,
                "at": s(event.at)}
    if isinstance(event, SpeakerTurns):
        return {"type": "speaker_turns", "turns": [
            {"speaker": t.speaker, "channel": t.channel, "start": s(t.start), "end": s(t.end)} for t in event.turns]}
    if isinstance(event, Warning):
        out: dict[str, Any] = {"type": "warning", "code": event.code, "message": event.message}
        if event.dropped_seconds is not None:
            out["dropped_seconds"] = round(event.dropped_seconds, 3)
        return out
    if isinstance(event, Error):
        return {"type": "error", "code": event.code, "message": event.message}
    if isinstance(event, Ready):
        return {"type": "ready", "session_id": event.session_id, "config": event.config, "models": event.models}
    if isinstance(event, End):
        out = {"type": "end", "audio_seconds": s(event.audio_samples), "utterances": event.utterances,
               "speakers": list(event.speakers)}
        if event.processed_samples is not None:
            out["processed_seconds"] = s(event.processed_samples)
        if event.dropped_samples is not None:
            out["dropped_seconds"] = s(event.dropped_samples)
        return out
    raise TypeError(f"not a server event: {type(event).__name__}")


def dump_event(event: ServerEvent) -> str:
    """One server event as the JSON text sent on the socket."""
    return json.dumps(event_to_dict(event), ensure_ascii=False)
