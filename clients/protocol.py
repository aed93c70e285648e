"""The client side of protocol v1: encode what a client sends, decode what the server sends.

The message shapes are :mod:`streaming.wire`'s dataclasses; this module only adds the two directions the server
does not need (client message → JSON, server JSON → dataclass). Decoded events carry times in samples at 16 kHz,
like everywhere else in the project; the JSON carries seconds with 3 decimals, so decoding is exact.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional, Union

from streaming import wire
from streaming.protocols.base import CloseCode

__all__ = [
    "ProtocolError", "dump_client_message", "parse_server_event", "seconds_to_samples", "describe_close",
    "PERMANENT_CLOSE_CODES",
]

_CLIENT_TYPES = {wire.Start: "start", wire.Finalize: "finalize", wire.Stop: "stop", wire.KeepAlive: "keepalive"}

#: Close codes after which reconnecting cannot help (the same request would be refused again).
PERMANENT_CLOSE_CODES = frozenset({CloseCode.UNSUPPORTED_DATA, CloseCode.POLICY_VIOLATION, CloseCode.MESSAGE_TOO_BIG})

_CLOSE_HINTS = {
    CloseCode.NORMAL: "the server closed the stream",
    CloseCode.GOING_AWAY: "the server is going away (restart or drain); reconnecting may help",
    CloseCode.UNSUPPORTED_DATA: "the server cannot use this audio format; check --encoding/--sample-rate/--multichannel",
    CloseCode.POLICY_VIOLATION: "the server rejected a message (protocol violation or failed authentication)",
    CloseCode.MESSAGE_TOO_BIG: "a message was larger than the server accepts; use a smaller --chunk-ms",
    CloseCode.INTERNAL_ERROR: "the server hit an internal error",
    CloseCode.TRY_AGAIN_LATER: "the server is overloaded; try again later",
}


class ProtocolError(ValueError):
    """The server sent something that is not a protocol v1 event."""


def seconds_to_samples(seconds: float) -> int:
    """Seconds (as sent on the wire, 3 decimals) → samples at 16 kHz, exact for wire values."""
    return int(round(float(seconds) * wire.SAMPLE_RATE))


def dump_client_message(message: wire.ClientMessage) -> str:
    """One client message as the JSON text to send; ``None`` fields of ``start`` are omitted."""
    kind = _CLIENT_TYPES.get(type(message))
    if kind is None:
        raise TypeError(f"not a client message: {type(message).__name__}")
    body: dict[str, Any] = {"type": kind}
    body.update({k: v for k, v in dataclasses.asdict(message).items() if v is not None})
    return json.dumps(body, ensure_ascii=False)


def describe_close(code: Optional[int], reason: str = "") -> str:
    """A sentence for the user about a websocket close code (and the server's reason, if any)."""
    hint = _CLOSE_HINTS.get(code or 0, "the connection was lost" if code in (None, 1005, 1006) else "closed")
    text = f"{hint} (close code {code})" if code else hint
    return f"{text}: {reason}" if reason else text


def _field(obj: dict[str, Any], name: str, kind: Union[type, tuple[type, ...]]) -> Any:
    if name not in obj:
        raise ProtocolError(f"{obj.get('type')!r} event has no {name!r} field")
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool):  # bool is an int subclass; no field is a bool
        raise ProtocolError(f"{obj.get('type')!r} event field {name!r} has the wrong type")
    return value


def _time(obj: dict[str, Any], name: str) -> int:
    return seconds_to_samples(_field(obj, name, (int, float)))


def _words(items: list[Any]) -> tuple[wire.WordTiming, ...]:
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise ProtocolError("words must be objects")
        out.append(wire.WordTiming(word=_field(item, "word", str), start=_time(item, "start"),
                                   end=_time(item, "end"), speaker=item.get("speaker")))
    return tuple(out)


def parse_server_event(text: Union[str, bytes]) -> wire.ServerEvent:
    """Decode one text message from the server; raise :class:`ProtocolError` if it is not a v1 event.

    Unknown extra fields are ignored (servers may add fields within v1); unknown ``type`` values are errors.
    """
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("server sent a text message that is not JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("server sent JSON that is not an object")
    kind = obj.get("type")
    if kind == "partial":
        return wire.Partial(utterance_id=_field(obj, "utterance_id", int), channel=int(obj.get("channel", 0)),
                            start=_time(obj, "start"), end=_time(obj, "end"), text=_field(obj, "text", str),
                            speaker=obj.get("speaker"))
    if kind == "final":
        return wire.Final(utterance_id=_field(obj, "utterance_id", int), channel=int(obj.get("channel", 0)),
                          start=_time(obj, "start"), end=_time(obj, "end"), text=_field(obj, "text", str),
                          words=_words(obj.get("words") or []), speaker=obj.get("speaker"))
    if kind == "speaker_revision":
        return wire.SpeakerRevision(utterance_id=_field(obj, "utterance_id", int), channel=int(obj.get("channel", 0)),
                                    words=_words(_field(obj, "words", list)), speaker=obj.get("speaker"))
    if kind == "speaker_merge":
        return wire.SpeakerMerge(channel=int(obj.get("channel", 0)), merged=_field(obj, "from", str),
                                 into=_field(obj, "into", str), at=_time(obj, "at"))
    if kind == "speaker_turns":
        turns = []
        for t in _field(obj, "turns", list):
            if not isinstance(t, dict):
                raise ProtocolError("speaker turns must be objects")
            turns.append(wire.Turn(speaker=_field(t, "speaker", str), start=_time(t, "start"), end=_time(t, "end"),
                                   channel=int(t.get("channel", 0))))
        return wire.SpeakerTurns(turns=tuple(turns))
    if kind == "warning":
        dropped = obj.get("dropped_seconds")
        return wire.Warning(code=_field(obj, "code", str), message=str(obj.get("message", "")),
                            dropped_seconds=float(dropped) if dropped is not None else None)
    if kind == "error":
        return wire.Error(code=_field(obj, "code", str), message=str(obj.get("message", "")))
    if kind == "ready":
        return wire.Ready(session_id=_field(obj, "session_id", str), config=dict(obj.get("config") or {}),
                          models=dict(obj.get("models") or {}))
    if kind == "end":
        optional = {name: _time(obj, key) for name, key in (("processed_samples", "processed_seconds"),
                                                            ("dropped_samples", "dropped_seconds")) if key in obj}
        return wire.End(audio_samples=_time(obj, "audio_seconds"), utterances=_field(obj, "utterances", int),
                        speakers=tuple(obj.get("speakers") or ()), **optional)
    raise ProtocolError(f"unknown server event type {kind!r}")
