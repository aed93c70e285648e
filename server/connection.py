"""One websocket stream: feed a :class:`~streaming.session.Session`, run its work, send its events.

All Session calls happen on the event loop thread, synchronously: the receiver hands it client messages, batcher
futures hand it results (done callbacks), and after each of those :meth:`Connection._pump` submits the session's new
work and queues its new events. One sender task writes the queued events in order and closes the socket after
``end`` or an ``error``. Errors map to close codes: ``InvalidMessage``/``InvalidState`` → 1008,
``InvalidAudio``/``UnsupportedFormat`` → 1003, anything else (a model failure included) → ``internal`` + 1011 with
no internals in the message. Idle timeout and server drain end the stream like ``stop`` but close with 1001.

Backpressure (:mod:`server.backpressure`): a client sending faster than real time is not read from while its
session's pending audio is at its bound (``Session.has_room``); a real-time client's oldest audio is dropped instead.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Optional, Union

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from server.backpressure import ClientPace, ReadGate
from server.batcher import BatcherPool
from server.config import ServerConfig
from server.metrics import ServerMetrics
from streaming import wire
from streaming.config import SAMPLE_RATE, AudioFormat, SessionConfig
from streaming.errors import InvalidAudio, InvalidMessage, InvalidState, RechkaError
from streaming.session import Session, SessionState
from streaming.work import Request, Result

log = logging.getLogger("rechka.connection")

BYTES_PER_SAMPLE = {"pcm_s16le": 2, "pcm_f32le": 4, "mulaw": 1, "alaw": 1}
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_UNSUPPORTED, CLOSE_POLICY, CLOSE_INTERNAL = 1000, 1001, 1003, 1008, 1011
CLOSE_TRY_AGAIN_LATER = 1013
INTERNAL_MESSAGE = "internal server error; the stream was closed"
ARRIVALS_KEPT = 60 * SAMPLE_RATE  # arrival times kept for final-latency measurement (seconds of audio)


@dataclass
class ConnectionContext:
    """What a connection needs from its server."""

    config: ServerConfig
    pool: BatcherPool
    metrics: ServerMetrics
    models: dict[str, Any]


class Phase(IntEnum):
    AWAITING_START = 0
    STREAMING = 1
    ENDING = 2  # stop, idle timeout or drain: finals are flushing
    CLOSING = 3  # end or error queued: nothing more is produced


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str


_STOP_SENDING = object()  # the receiver is done: the sender exits after what is already queued


def close_code_for(error: RechkaError) -> int:
    return CLOSE_UNSUPPORTED if isinstance(error, InvalidAudio) else CLOSE_POLICY


def session_config_for(start: wire.Start, config: ServerConfig) -> SessionConfig:
    """The SessionConfig of a ``start`` message over the server's session defaults."""
    base = config.session
    try:
        diarizer = base.diarizer.with_speaker_counts(start.min_speakers, start.max_speakers, start.num_speakers)
    except ValueError as exc:
        raise InvalidMessage(str(exc)) from None
    return dataclasses.replace(
        base, audio=AudioFormat(start.encoding, start.sample_rate, start.channels), multichannel=start.multichannel,
        diarization=start.diarization, interim_results=start.interim_results, speaker_turns=start.speaker_turns,
        settled_speakers=start.settled_speakers, diarizer=diarizer)


class Connection:
    """Runs one stream from the first message to the close."""

    def __init__(self, ws: ServerConnection, context: ConnectionContext) -> None:
        self.ws = ws
        self.ctx = context
        self.session_id = uuid.uuid4().hex
        self.session: Optional[Session] = None
        self.phase = Phase.AWAITING_START
        self._outbound: asyncio.Queue[Any] = asyncio.Queue()  # events, then a _Close or _STOP_SENDING
        self._inflight: set[asyncio.Future] = set()
        self._end_code = CLOSE_NORMAL
        self._end_reason = ""
        self._counted = {"audio_in": 0, "audio_processed": 0, "partials_dropped": 0}
        self._overloaded = False
        self._first_audio_at: Optional[float] = None
        self._first_partial_seen = False
        self._arrivals: deque[tuple[float, float]] = deque()  # (stream samples at 16 kHz after message, time)
        self._received_samples = 0.0
        self._bytes_per_frame = 2
        self._rate = SAMPLE_RATE
        self._flush_timer: Optional[asyncio.TimerHandle] = None
        self._pace = ClientPace()
        self._gate = ReadGate()  # closed while an unpaced client's pending audio is at its bound

    # ----------------------------------------------------------------------------------------------- run
    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop(), name=f"send-{self.session_id[:8]}")
        sender.add_done_callback(self._on_sender_done)
        try:
            await self._receive_loop()
            self._outbound.put_nowait(_STOP_SENDING)
            await asyncio.wait([sender])
        finally:
            if self.ws.close_code == 1009:
                self.ctx.metrics.session_errors.labels(code="message_too_big").inc()
            sender.cancel()
            for future in self._inflight:
                future.cancel()
            self._inflight.clear()
            if self._flush_timer is not None:
                self._flush_timer.cancel()
            if self.session is not None:
                self.ctx.metrics.sessions_active.dec()
                stats = self.session.stats
                log.info("session %s closed %s %s: %.1f s of audio, %d utterances", self.session_id,
                         self.ws.close_code, self.ws.close_reason or "", stats.audio_in / SAMPLE_RATE,
                         stats.utterances)

    async def _receive_loop(self) -> None:
        idle = self.ctx.config.idle_timeout
        while True:
            if self.phase == Phase.STREAMING:
                await self._gate.wait()  # backpressure: not reading lets TCP flow control slow the client
            try:
                if self.phase <= Phase.STREAMING:
                    async with asyncio.timeout(idle):
                        message = await self.ws.recv()
                else:
                    message = await self.ws.recv()
            except TimeoutError:
                self._begin_end(CLOSE_GOING_AWAY, "idle timeout")
                continue
            except ConnectionClosed:
                return
            if self.phase >= Phase.CLOSING or (self.phase == Phase.ENDING and self._end_code != CLOSE_NORMAL):
                continue  # server-initiated end: the client's late messages no longer matter
            try:
                self._on_message(message)
            except RechkaError as exc:
                self._fail(exc.code, str(exc), close_code_for(exc))
            except Exception:  # noqa: BLE001 - never leak internals to the client
                log.exception("session %s: failure handling a message", self.session_id)
                self._fail("internal", INTERNAL_MESSAGE, CLOSE_INTERNAL)

    def _on_sender_done(self, task: asyncio.Task) -> None:
        if task.cancelled() or isinstance(task.exception(), (ConnectionClosed, type(None))):
            return
        log.error("session %s: failure sending an event", self.session_id, exc_info=task.exception())
        asyncio.ensure_future(self.ws.close(CLOSE_INTERNAL, INTERNAL_MESSAGE))

    async def _send_loop(self) -> None:
        while True:
            item = await self._outbound.get()
            if item is _STOP_SENDING:
                return
            if isinstance(item, _Close):
                await self.ws.close(item.code, item.reason)
                return
            self._observe_sent(item)
            await self.ws.send(wire.dump_event(item))

    # ----------------------------------------------------------------------------------------------- input
    def _on_message(self, message: Union[str, bytes]) -> None:
        if isinstance(message, bytes):
            if self.session is None:
                raise InvalidAudio("send a start message before any audio")
            self._note_arrival(len(message))
            self.session.receive_audio(message)
            self._pump()
            return
        parsed = wire.parse_client_message(message)
        if isinstance(parsed, wire.KeepAlive):
            return
        if isinstance(parsed, wire.Start):
            if self.session is not None:
                raise InvalidState("start was already received; open a new connection for a new stream")
            self._start(parsed)
            return
        if self.session is None:
            raise InvalidState("the first message must be start")
        if isinstance(parsed, wire.Finalize):
            self.session.receive_finalize()
        elif isinstance(parsed, wire.Stop):
            if self.phase == Phase.ENDING:
                raise InvalidState("stop was already received")
            self._begin_end(CLOSE_NORMAL, "")
            return
        self._pump()

    def _start(self, start: wire.Start) -> None:
        config = session_config_for(start, self.ctx.config)
        self.session = Session(self.session_id, config)  # UnsupportedFormat → 1003
        self._enter(Phase.STREAMING)
        self._bytes_per_frame = BYTES_PER_SAMPLE.get(start.encoding, 2) * start.channels
        self._rate = start.sample_rate
        log.info("session %s started: %s", self.session_id, start)
        self.ctx.metrics.sessions_total.inc()
        self.ctx.metrics.sessions_active.inc()
        effective = dataclasses.asdict(start)
        effective.update(max_message_bytes=self.ctx.config.max_message_bytes,
                         idle_timeout=self.ctx.config.idle_timeout)
        self._outbound.put_nowait(wire.Ready(self.session_id, effective, self.ctx.models))

    def _note_arrival(self, nbytes: int) -> None:
        now = time.monotonic()
        if self._first_audio_at is None:
            self._first_audio_at = now
        self._received_samples += nbytes / self._bytes_per_frame * SAMPLE_RATE / self._rate
        self._arrivals.append((self._received_samples, now))
        if self.session is not None:  # a client ahead of real time is slowed down, never dropped
            self.session.drop_when_behind = not self._pace.note(self._received_samples / SAMPLE_RATE, now)
        while len(self._arrivals) > 1 and self._arrivals[0][0] < self._received_samples - ARRIVALS_KEPT:
            self._arrivals.popleft()

    # ----------------------------------------------------------------------------------------------- ending
    def begin_drain(self) -> None:
        """Server shutdown: flush this stream's finals, send ``end``, close 1001."""
        if self.phase == Phase.ENDING:
            self._end_code, self._end_reason = CLOSE_GOING_AWAY, "server shutting down"
        elif self.phase < Phase.ENDING:
            self._begin_end(CLOSE_GOING_AWAY, "server shutting down")

    def _begin_end(self, code: int, reason: str) -> None:
        self._end_code, self._end_reason = code, reason
        if self.session is None or self.session.state == SessionState.CLOSED:
            self._close_after_queued(code, reason)
            return
        self._enter(Phase.ENDING)
        try:
            self.session.receive_end()
        except RechkaError as exc:
            self._fail(exc.code, str(exc), close_code_for(exc))
            return
        self._flush_timer = asyncio.get_running_loop().call_later(self._flush_limit, self._flush_timed_out)
        self._pump()

    def _flush_timed_out(self) -> None:
        if self.phase == Phase.ENDING:
            limit = self._flush_limit
            log.error("session %s: finals not flushed within %.1f s", self.session_id, limit)
            self._fail("overloaded", f"the server could not finish this stream's finals within {limit:.0f} s; "
                                     "it is overloaded, try again later", CLOSE_TRY_AGAIN_LATER)

    @property
    def _flush_limit(self) -> float:
        return max(self.ctx.config.shutdown_grace, self.ctx.config.flush_timeout)

    def _fail(self, code: str, message: str, close_code: int) -> None:
        """Queue an ``error`` event and the close; nothing else is produced afterwards."""
        if self.phase == Phase.CLOSING:
            return
        self.ctx.metrics.session_errors.labels(code=code).inc()
        for future in self._inflight:
            future.cancel()
        self._inflight.clear()
        self._outbound.put_nowait(wire.Error(code, message))
        self._close_after_queued(close_code, message[:120])

    def _close_after_queued(self, code: int, reason: str) -> None:
        """Close the socket once everything queued so far is sent; nothing is produced afterwards."""
        self._enter(Phase.CLOSING)
        self._outbound.put_nowait(_Close(code, reason))

    def _enter(self, phase: Phase) -> None:
        """The only place the phase changes; it only moves forward."""
        assert phase > self.phase, f"{self.phase.name} → {phase.name}"
        self.phase = phase
        if phase > Phase.STREAMING:
            self._gate.set(True)  # nothing more to hold back: late messages are read (and ignored)

    # ----------------------------------------------------------------------------------------------- session I/O
    def _pump(self) -> None:
        """Submit the session's new work and queue its new events."""
        session = self.session
        if session is None or self.phase == Phase.CLOSING:
            return
        for request in session.work_to_run():
            self._submit(request)
        for event in session.events_to_send():
            self._outbound.put_nowait(event)
            if isinstance(event, wire.End):
                self._close_after_queued(self._end_code, self._end_reason)
        if self._gate.set(session.drop_when_behind or session.has_room):
            self.ctx.metrics.read_pauses.inc()
        self._update_stats()

    def _submit(self, request: Request) -> None:
        future = self.ctx.pool.submit(request)
        self._inflight.add(future)
        future.add_done_callback(self._on_result)

    def _on_result(self, future: asyncio.Future) -> None:
        self._inflight.discard(future)
        if future.cancelled():
            return
        error = future.exception()
        if self.phase == Phase.CLOSING or self.session is None:
            return
        if error is not None:
            log.error("session %s: model failure", self.session_id, exc_info=error)
            self._fail("internal", INTERNAL_MESSAGE, CLOSE_INTERNAL)
            return
        result: Result = future.result()
        try:
            self.session.receive_result(result)
            self._pump()
        except Exception:  # noqa: BLE001
            log.exception("session %s: failure handling a result", self.session_id)
            self._fail("internal", INTERNAL_MESSAGE, CLOSE_INTERNAL)

    # ----------------------------------------------------------------------------------------------- metrics
    def _update_stats(self) -> None:
        assert self.session is not None
        stats = self.session.stats
        m = self.ctx.metrics
        for name in self._counted:
            value = int(getattr(stats, name, 0))
            delta = value - self._counted[name]
            if delta > 0:
                self._counted[name] = value
                if name == "audio_in":
                    m.audio_received.inc(delta / SAMPLE_RATE)
                elif name == "audio_processed":
                    m.add_processed(delta / SAMPLE_RATE)
                else:
                    m.partials_dropped.inc(delta)
        # Behind = how long the oldest audio not yet through VAD has been waiting, in wall time. Counting samples
        # instead would call every faster-than-real-time client "overloaded" the moment it sends a file.
        waited = 0.0
        if stats.audio_processed < stats.audio_in:
            arrived = self._arrival_of(stats.audio_processed + 1)
            if arrived is not None:
                waited = time.monotonic() - arrived
        bound = self.ctx.config.overload_lag
        if waited > bound and not self._overloaded and self.phase == Phase.STREAMING:
            self._overloaded = True
            m.overloaded.inc()
            self._outbound.put_nowait(wire.Warning(
                "overloaded", f"the server is {waited:.1f} s behind this stream; results are delayed "
                              "and old audio may be dropped"))
        elif waited < bound / 2:
            self._overloaded = False

    def _observe_sent(self, event: wire.ServerEvent) -> None:
        now = time.monotonic()
        m = self.ctx.metrics
        if isinstance(event, wire.Partial) and not self._first_partial_seen and self._first_audio_at is not None:
            self._first_partial_seen = True
            m.time_to_first_partial.observe(now - self._first_audio_at)
        elif isinstance(event, wire.Final):
            arrived = self._arrival_of(event.end)
            if arrived is not None:
                m.final_latency.observe(max(0.0, now - arrived))
        elif isinstance(event, wire.Warning) and event.code == "audio_dropped" and event.dropped_seconds:
            m.audio_dropped.inc(event.dropped_seconds)

    def _arrival_of(self, sample: int) -> Optional[float]:
        """Wall time the message holding stream sample ``sample - 1`` arrived (the utterance's last audio)."""
        if not self._arrivals:
            return None
        index = bisect.bisect_left(self._arrivals, sample - 1, key=lambda arrival: arrival[0])
        return self._arrivals[min(index, len(self._arrivals) - 1)][1]
