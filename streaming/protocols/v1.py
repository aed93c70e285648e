"""rechka protocol v1 (``/v1/stream``, ``docs/protocol.md``) as a sans-I/O protocol object.

``start`` (text) opens the session and is answered with ``ready``; binary messages are audio; ``finalize``,
``stop`` and ``keepalive`` are controls. Every core event goes out as its JSON (:func:`streaming.wire.dump_event`);
an error is an ``error`` event, then the close: ``InvalidMessage``/``InvalidState`` 1008,
``InvalidAudio``/``UnsupportedFormat`` 1003, ``internal`` 1011, ``overloaded`` 1013. ``stop`` closes 1000 after
``end``; the idle timeout and a drain close 1001 after ``end``.
"""

from __future__ import annotations

import dataclasses

from streaming import wire
from streaming.config import AudioFormat, SessionConfig
from streaming.errors import InvalidAudio, InvalidMessage, InvalidState
from streaming.protocols.base import Close, StreamProtocol


def session_config_for(start: wire.Start, base: SessionConfig) -> SessionConfig:
    """The SessionConfig of a ``start`` message over the server's session defaults."""
    try:
        diarizer = base.diarizer.with_speaker_counts(start.min_speakers, start.max_speakers, start.num_speakers)
    except ValueError as exc:
        raise InvalidMessage(str(exc)) from None
    return dataclasses.replace(
        base, audio=AudioFormat(start.encoding, start.sample_rate, start.channels), multichannel=start.multichannel,
        diarization=start.diarization, interim_results=start.interim_results, speaker_turns=start.speaker_turns,
        settled_speakers=start.settled_speakers, diarizer=diarizer)


class V1Protocol(StreamProtocol):
    """One protocol v1 stream; see the module docstring."""

    def _on_text(self, text: str) -> None:
        message = wire.parse_client_message(text)
        if isinstance(message, wire.KeepAlive):
            return
        if isinstance(message, wire.Start):
            if self.session is not None:
                raise InvalidState("start was already received; open a new connection for a new stream")
            self._open(message)
            return
        if self.session is None:
            raise InvalidState("the first message must be start")
        if isinstance(message, wire.Finalize):
            self.session.receive_finalize()
            self._pump()
        elif isinstance(message, wire.Stop):
            if self._client_ended:
                return  # a repeated stop changes nothing: the finals being flushed still come
            self._end_by_client()

    def _on_bytes(self, data: bytes) -> None:
        if self.session is None:
            raise InvalidAudio("send a start message before any audio")
        self.session.receive_audio(data)
        self._pump()

    def _open(self, start: wire.Start) -> None:
        self._start(session_config_for(start, self.limits.session))  # UnsupportedFormat → 1003
        effective = dataclasses.asdict(start)
        effective.update(max_message_bytes=self.limits.max_message_bytes, idle_timeout=self.limits.idle_timeout)
        ready = wire.Ready(self.session_id, effective, dict(self.limits.models))
        self._send(wire.dump_event(ready), ready)

    def _on_events(self, events: list[wire.ServerEvent]) -> None:
        for event in events:
            if isinstance(event, wire.SpeechStarted):
                continue  # not part of protocol v1
            self._send(wire.dump_event(event), event)

    def _error(self, code: str, message: str, close_code: int) -> Close:
        error = wire.Error(code, message)
        self._send(wire.dump_event(error), error)
        return Close(close_code, message)
