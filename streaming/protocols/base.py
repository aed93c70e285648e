"""What every wire protocol shares: close codes, the connection phase, the server's limits, the protocol object.

A protocol object is sans-I/O, in the manner of websockets' ``Protocol``: the connection feeds it what the socket
received (:meth:`StreamProtocol.receive_text`, :meth:`~StreamProtocol.receive_bytes`), the model results
(:meth:`~StreamProtocol.receive_result`) and the clock's verdicts (:meth:`~StreamProtocol.timeout_idle`,
:meth:`~StreamProtocol.timeout_flush`, :meth:`~StreamProtocol.begin_drain`); it hands out model work
(:meth:`~StreamProtocol.work_to_run`), messages (:meth:`~StreamProtocol.messages_to_send`, by swap) and at most one
close (:attr:`~StreamProtocol.close`). A bad input never raises out of ``receive_*``: it becomes the protocol's
error message and close. Subclasses translate: :meth:`_on_text`, :meth:`_on_bytes` (client → Session calls) and
:meth:`_on_events` (Session events → messages), plus how an error looks (:meth:`_error`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Mapping, Optional, Union

from streaming import wire
from streaming.config import SessionConfig
from streaming.errors import InvalidAudio, RechkaError
from streaming.session import Session, SessionState
from streaming.work import Request, Result

INTERNAL_MESSAGE = "internal server error; the stream was closed"
MAX_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes, 2 of them the code


class CloseCode(IntEnum):
    """Websocket close codes rechka's protocols use (``clients/`` imports them from here)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


class Phase(IntEnum):
    """A connection's phase; it only moves forward (:meth:`StreamProtocol._enter`)."""

    AWAITING_START = 0
    STREAMING = 1
    ENDING = 2  # stop, idle timeout or drain: finals are flushing
    CLOSING = 3  # the close is decided: nothing more is produced


@dataclass(frozen=True)
class Limits:
    """What a protocol needs from its server: session defaults, limits (seconds, bytes) and the models' identity."""

    session: SessionConfig = field(default_factory=SessionConfig)
    models: Mapping[str, Any] = field(default_factory=dict)
    max_message_bytes: int = 1 << 20
    idle_timeout: float = 30.0
    flush_timeout: float = 30.0  # after the end of audio, finals must be out within this


@dataclass(frozen=True)
class Outgoing:
    """One message to send; ``event`` is the core event it reports, if any (for the connection's metrics)."""

    data: Union[str, bytes]
    event: Optional[wire.ServerEvent] = None


@dataclass(frozen=True)
class Close:
    """The close to send after every queued message; ``error`` is the error code behind it, if any."""

    code: int
    reason: str = ""
    error: Optional[str] = None


def close_reason(text: str) -> str:
    """``text`` cut to fit a close frame (at most 123 UTF-8 bytes, never inside a character)."""
    return text.encode()[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")


class StreamProtocol:
    """The lifecycle every protocol shares; see the module docstring. Subclasses call :meth:`_start`."""

    def __init__(self, session_id: str, limits: Limits) -> None:
        self.session_id = session_id
        self.limits = limits
        self.session: Optional[Session] = None
        self.phase = Phase.AWAITING_START
        self.close: Optional[Close] = None
        self._outbox: list[Outgoing] = []
        self._end_close = Close(CloseCode.NORMAL)
        self._client_ended = False  # the client asked for the end (stop, CloseStream, eof)

    # ----------------------------------------------------------------------------------------------- in
    def receive_text(self, text: str) -> None:
        """One text message from the client."""
        if self._accepting():
            self._guard(self._on_text, text)

    def receive_bytes(self, data: bytes) -> None:
        """One binary message from the client."""
        if self._accepting():
            self._guard(self._on_bytes, data)

    def receive_result(self, result: Result) -> None:
        """One model result for this stream's session (ignored once the close is decided)."""
        if self.session is not None and self.phase < Phase.CLOSING:
            self.session.receive_result(result)
            self._pump()

    def timeout_idle(self) -> None:
        """No client message for :attr:`idle_timeout` seconds."""
        self._begin_end(Close(CloseCode.GOING_AWAY, "idle timeout"))

    def timeout_flush(self) -> None:
        """While the finals flush, no model result came for :attr:`flush_timeout` seconds (the connection re-arms
        the limit at every result, so a long backlog that is being worked through is not cut off)."""
        if self.phase == Phase.ENDING:
            limit = self.limits.flush_timeout
            self._fail("overloaded", f"the server made no progress on this stream's finals for {limit:.0f} s; "
                                     "it is overloaded, try again later", CloseCode.TRY_AGAIN_LATER)

    def begin_drain(self) -> None:
        """Server shutdown: flush this stream's finals, then close 1001."""
        drain = Close(CloseCode.GOING_AWAY, "server shutting down")
        if self.phase == Phase.ENDING:
            self._end_close = drain
        elif self.phase < Phase.ENDING:
            self._begin_end(drain)

    def fail_internal(self) -> None:
        """A server-side failure (a model error, a bug): the client learns nothing of its internals."""
        self._fail("internal", INTERNAL_MESSAGE, CloseCode.INTERNAL_ERROR)

    def warn_overloaded(self, waited: float) -> None:
        """The oldest unprocessed audio has waited ``waited`` seconds (the connection keeps the clock)."""
        if self.phase in (Phase.STREAMING, Phase.ENDING):  # after stop too: before it can cost a final
            self._on_events([wire.Warning(
                "overloaded", f"the server is {waited:.1f} s behind this stream; results are delayed "
                              "and old audio may be dropped")])

    # ----------------------------------------------------------------------------------------------- out
    @property
    def idle_timeout(self) -> Optional[float]:
        """How long the next read may wait before :meth:`timeout_idle` (``None``: no limit)."""
        return self.limits.idle_timeout if self.phase <= Phase.STREAMING else None

    @property
    def flush_timeout(self) -> Optional[float]:
        """While the finals flush: the limit the connection arms once for :meth:`timeout_flush`."""
        return self.limits.flush_timeout if self.phase == Phase.ENDING else None

    def work_to_run(self) -> list[Request]:
        """Model requests made since the last call."""
        if self.session is None or self.phase == Phase.CLOSING:
            return []
        return self.session.work_to_run()

    def withdrawn_work(self) -> list[int]:
        """Seqs of requests from :meth:`work_to_run` no longer wanted (``Session.withdrawn_work``): cancel them."""
        return self.session.withdrawn_work() if self.session is not None else []

    def messages_to_send(self) -> list[Outgoing]:
        """Messages made since the last call, in order; the :attr:`close` follows them."""
        out, self._outbox = self._outbox, []
        return out

    # ----------------------------------------------------------------------------------------------- subclasses
    def _on_text(self, text: str) -> None:
        raise NotImplementedError

    def _on_bytes(self, data: bytes) -> None:
        raise NotImplementedError

    def _on_events(self, events: list[wire.ServerEvent]) -> None:
        """Session events → messages (``End`` included; the close follows it)."""
        raise NotImplementedError

    def _error(self, code: str, message: str, close_code: int) -> Close:
        """Queue the protocol's error message, if it has one, and return the close that follows it."""
        raise NotImplementedError

    def _close_code_for(self, error: RechkaError) -> int:
        return CloseCode.UNSUPPORTED_DATA if isinstance(error, InvalidAudio) else CloseCode.POLICY_VIOLATION

    # ----------------------------------------------------------------------------------------------- shared steps
    def _send(self, data: Union[str, bytes], event: Optional[wire.ServerEvent] = None) -> None:
        self._outbox.append(Outgoing(data, event))

    def _accepting(self) -> bool:
        """Client messages matter until the close is decided, and during a client-initiated end."""
        return self.phase < Phase.ENDING or (self.phase == Phase.ENDING and self._client_ended)

    def _guard(self, handler: Any, message: Any) -> None:
        try:
            handler(message)
        except RechkaError as exc:
            self._fail(exc.code, str(exc), self._close_code_for(exc))

    def _start(self, config: SessionConfig) -> Session:
        """Open the session (``UnsupportedFormat`` propagates) and enter STREAMING."""
        self.session = Session(self.session_id, config)
        self._enter(Phase.STREAMING)
        return self.session

    def _end_by_client(self, close: Close = Close(CloseCode.NORMAL)) -> None:
        self._client_ended = True
        self._begin_end(close)

    def _begin_end(self, close: Close) -> None:
        """No more audio: the session flushes; its ``End`` brings ``close``."""
        if self.phase >= Phase.ENDING:
            return
        self._end_close = close
        if self.session is None or self.session.state == SessionState.CLOSED:
            self._close_now(close)
            return
        self._enter(Phase.ENDING)
        try:
            self.session.receive_end()
        except RechkaError as exc:
            self._fail(exc.code, str(exc), self._close_code_for(exc))
            return
        self._pump()

    def _pump(self) -> None:
        """Translate the session's new events; its ``End`` decides the close."""
        if self.session is None or self.phase == Phase.CLOSING:
            return
        events = self.session.events_to_send()
        if events:
            self._on_events(events)
        if any(isinstance(e, wire.End) for e in events):
            self._close_now(self._end_close)

    def _fail(self, code: str, message: str, close_code: int) -> None:
        """The protocol's error message, then the close; nothing else is produced afterwards."""
        if self.phase == Phase.CLOSING:
            return
        close = self._error(code, message, close_code)
        self._close_now(Close(close.code, close_reason(close.reason), code))

    def _close_now(self, close: Close) -> None:
        self._enter(Phase.CLOSING)
        self.close = Close(close.code, close_reason(close.reason), close.error)

    def _enter(self, phase: Phase) -> None:
        """The only place the phase changes; it only moves forward."""
        assert phase > self.phase, f"{self.phase.name} → {phase.name}"
        self.phase = phase
