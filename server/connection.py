"""One websocket stream: a socket and a clock around a sans-I/O protocol object, the same for every protocol.

Read a message → ``protocol.receive_text``/``receive_bytes`` → submit the protocol's model work to the batcher
pool → queue the protocol's messages; batcher futures hand their results to ``protocol.receive_result`` (done
callbacks, on the event loop thread) and the same pump follows. One sender task writes the queued messages in order
and closes the socket with the protocol's close. The protocol decides every timeout (``idle_timeout``,
``flush_timeout``); this module only keeps the clock, the metrics and the overload measurement (wall time).
What a message means, which error it is and which close code follows live in ``streaming/protocols/``.

Backpressure (:mod:`server.backpressure`): a client sending faster than real time is not read from while its
session's pending audio is at its bound (``Session.has_room``); a real-time client's oldest audio is dropped instead.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional, Union

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from server.backpressure import ClientPace, ReadGate
from server.batcher import TimedFuture
from server.batcher_pool import BatcherPool
from server.config import ServerConfig
from server.metrics import ServerMetrics
from streaming import wire
from streaming.config import SAMPLE_RATE
from streaming.protocols.base import INTERNAL_MESSAGE, Close, CloseCode, Outgoing, Phase, StreamProtocol
from streaming.work import AsrKind, AsrRequest, Request, VadRequest, VadResult

log = logging.getLogger("rechka.connection")

ARRIVALS_KEPT = 60 * SAMPLE_RATE  # arrival times kept for final-latency measurement (seconds of audio)
VAD_DONE_KEPT = 2000  # VAD results' (end, time) kept per channel for final traces (about a minute at real time)
FINALS_TRACKED = 64  # final (and speculative) ASR requests whose futures are kept until their final is sent


def final_trace(end_arrived: float, close_arrived: float, vad_closed: float, future: Optional[TimedFuture],
                sent: float) -> dict[str, Optional[float]]:
    """Where one final's latency went (seconds, wall): ``silence`` (the pause that closes it arriving), ``vad``
    (the VAD seeing that pause), ``asr_wait`` (its ASR result, after the VAD closed it), ``send`` (the rest, to the
    socket); they add up to ``total``. ``queued``/``compute``/``batch``: its ASR request's wait for the model, call
    time and batch size; ``submitted``: when it was queued after the utterance's last audio arrived (a speculative
    final is queued before the VAD closes the utterance)."""
    vad_closed = max(vad_closed, close_arrived)
    done = future.finished_at if future is not None else None
    ready = max(vad_closed, done) if done is not None else vad_closed
    trace: dict[str, Optional[float]] = {
        "total": sent - end_arrived, "silence": close_arrived - end_arrived, "vad": vad_closed - close_arrived,
        "asr_wait": ready - vad_closed, "send": sent - ready,
        "submitted": None, "queued": None, "compute": None, "batch": None}
    if future is not None and future.started_at is not None and done is not None:
        trace.update(submitted=future.queued_at - end_arrived, queued=future.started_at - future.queued_at,
                     compute=done - future.started_at, batch=float(future.batch_size))
    return {k: (round(v, 4) if v is not None else None) for k, v in trace.items()}


@dataclass
class ConnectionContext:
    """What a connection needs from its server."""

    config: ServerConfig
    pool: BatcherPool
    metrics: ServerMetrics
    models: dict[str, Any]


_STOP_SENDING = object()  # the receiver is done: the sender exits after what is already queued


class Connection:
    """Runs one stream from the first message to the close."""

    def __init__(self, ws: ServerConnection, context: ConnectionContext, protocol: StreamProtocol) -> None:
        self.ws = ws
        self.ctx = context
        self.protocol = protocol
        self.session_id = protocol.session_id
        self._outbound: asyncio.Queue[Any] = asyncio.Queue()  # Outgoing, then a Close or _STOP_SENDING
        self._inflight: set[asyncio.Future] = set()
        self._counted = {"audio_in": 0, "audio_processed": 0, "audio_dropped": 0, "partials_dropped": 0}
        self._started = False
        self._closed = False
        self._overloaded = False
        self._first_audio_at: Optional[float] = None
        self._first_partial_seen = False
        self._arrivals: deque[tuple[int, float]] = deque()  # (stream samples at 16 kHz after a message, time)
        self._vad_done: dict[int, deque[tuple[int, float]]] = {}  # channel → (samples the VAD is past, time)
        self._vad_ends: dict[int, tuple[int, int]] = {}  # VAD request seq → (channel, its end sample)
        self._finals: dict[tuple[int, int, int], TimedFuture] = {}  # (channel, start, end) → final request's future
        self._cancellable: dict[int, TimedFuture] = {}  # seq → future of an ASR request (it may be withdrawn)
        self._flush_timer: Optional[asyncio.TimerHandle] = None
        self._pace = ClientPace()
        self._gate = ReadGate()  # closed while an unpaced client's pending audio is at its bound

    # ----------------------------------------------------------------------------------------------- run
    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop(), name=f"send-{self.session_id[:8]}")
        sender.add_done_callback(self._on_sender_done)
        try:
            self._pump()  # a protocol whose session opens at the handshake (Deepgram) may have work already
            await self._receive_loop()
            self._outbound.put_nowait(_STOP_SENDING)
            await asyncio.wait([sender])
        finally:
            if self.ws.close_code == CloseCode.MESSAGE_TOO_BIG:
                self.ctx.metrics.session_errors.labels(code="message_too_big").inc()
            sender.cancel()
            self._cancel_inflight()
            if self._flush_timer is not None:
                self._flush_timer.cancel()
            session = self.protocol.session
            if self._started and session is not None:
                self.ctx.metrics.sessions_active.dec()
                log.info("session %s closed %s %s: %.1f s of audio, %d utterances", self.session_id,
                         self.ws.close_code, self.ws.close_reason or "", session.stats.audio_in / SAMPLE_RATE,
                         session.stats.utterances)

    async def _receive_loop(self) -> None:
        while True:
            if self.protocol.phase == Phase.STREAMING:
                await self._gate.wait()  # backpressure: not reading lets TCP flow control slow the client
            try:
                async with asyncio.timeout(self.protocol.idle_timeout):
                    message = await self.ws.recv()
            except TimeoutError:
                self._step(self.protocol.timeout_idle)
                continue
            except ConnectionClosed:
                return
            self._step(self._feed, message)

    def _feed(self, message: Union[str, bytes]) -> None:
        if isinstance(message, bytes):
            self.protocol.receive_bytes(message)
            self._note_arrival()
        else:
            self.protocol.receive_text(message)

    def _step(self, call: Any, *args: Any) -> None:
        """One protocol call, then the pump; a failure inside it closes only this stream, without internals."""
        session = self.protocol.session
        if session is not None:  # load shedding: GigaAM's finals queue is behind, so optional decodes wait (a late
            # partial lane is bounded by each stream's one partial in flight)
            session.models_behind = self.ctx.pool.oldest_wait("asr") > self.ctx.config.shed_partials_wait
        try:
            call(*args)
        except Exception:  # noqa: BLE001 - never leak internals to the client
            log.exception("session %s: failure handling an input", self.session_id)
            self.protocol.fail_internal()
        self._pump()

    def begin_drain(self) -> None:
        """Server shutdown: the protocol flushes this stream's finals and closes 1001."""
        self._step(self.protocol.begin_drain)

    def _on_sender_done(self, task: asyncio.Task) -> None:
        if task.cancelled() or isinstance(task.exception(), (ConnectionClosed, type(None))):
            return
        log.error("session %s: failure sending a message", self.session_id, exc_info=task.exception())
        asyncio.ensure_future(self.ws.close(CloseCode.INTERNAL_ERROR, INTERNAL_MESSAGE))

    async def _send_loop(self) -> None:
        while True:
            item = await self._outbound.get()
            if item is _STOP_SENDING:
                return
            if isinstance(item, Close):
                await self.ws.close(item.code, item.reason)
                return
            self._observe_sent(item)
            await self.ws.send(item.data)

    # ----------------------------------------------------------------------------------------------- pump
    def _pump(self) -> None:
        """Submit the protocol's new work, queue its new messages and, once decided, its close."""
        if self._closed:
            return
        protocol = self.protocol
        if not self._started and protocol.session is not None:
            self._started = True
            log.info("session %s started: %s", self.session_id, protocol.session.config.audio)
            self.ctx.metrics.sessions_total.inc()
            self.ctx.metrics.sessions_active.inc()
        for request in protocol.work_to_run():
            self._submit(request)
        for seq in protocol.withdrawn_work():  # a missed speculation or a closed utterance's partial: out of the queue
            future = self._cancellable.pop(seq, None)
            if future is not None:
                future.cancel()
        for message in protocol.messages_to_send():
            self._outbound.put_nowait(message)
        session = protocol.session
        if session is not None and protocol.phase == Phase.STREAMING:
            if self._gate.set(session.drop_when_behind or session.has_room):
                self.ctx.metrics.read_pauses.inc()
        else:
            self._gate.set(True)  # nothing more to hold back: late messages are read (the protocol ignores them)
        if session is not None:
            self._update_stats()  # before the close: the last results' samples count too
        close = protocol.close
        if close is not None:
            self._closed = True
            if close.error is not None:
                self.ctx.metrics.session_errors.labels(code=close.error).inc()
            self._cancel_inflight()
            self._outbound.put_nowait(close)
            return
        if protocol.flush_timeout is not None and self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(protocol.flush_timeout, self._flush_timed_out)

    def _flush_timed_out(self) -> None:
        if not self._closed:
            log.error("session %s: finals not flushed in time", self.session_id)
        self._step(self.protocol.timeout_flush)

    def _submit(self, request: Request) -> None:
        future = self.ctx.pool.submit(request)
        if isinstance(request, VadRequest):
            self._vad_ends[request.seq] = (request.channel, request.start + len(request.audio))
        elif isinstance(request, AsrRequest):
            self._cancellable[request.seq] = future  # (or the model call, when all of its batch is withdrawn)
            future.add_done_callback(lambda _, seq=request.seq: self._cancellable.pop(seq, None))
            if request.kind == AsrKind.FINAL:
                self._finals[(request.channel, request.start, request.start + len(request.audio))] = future
                while len(self._finals) > FINALS_TRACKED:
                    del self._finals[next(iter(self._finals))]
        self._inflight.add(future)
        future.add_done_callback(self._on_result)

    def _cancel_inflight(self) -> None:
        for future in self._inflight:
            future.cancel()
        self._inflight.clear()

    def _on_result(self, future: asyncio.Future) -> None:
        self._inflight.discard(future)
        if future.cancelled() or self._closed:
            return
        error = future.exception()
        if error is not None:
            log.error("session %s: model failure", self.session_id, exc_info=error)
            self._step(self.protocol.fail_internal)
            return
        if self._flush_timer is not None:  # progress: the flush limit counts from the latest result
            self._flush_timer.cancel()
            self._flush_timer = None
        result = future.result()
        if isinstance(result, VadResult) and result.seq in self._vad_ends:
            channel, end = self._vad_ends.pop(result.seq)
            self._vad_done.setdefault(channel, deque(maxlen=VAD_DONE_KEPT)).append((end, time.monotonic()))
        self._step(self.protocol.receive_result, result)

    # ----------------------------------------------------------------------------------------------- metrics
    def _note_arrival(self) -> None:
        session = self.protocol.session
        if session is None:
            return
        now = time.monotonic()
        if self._first_audio_at is None:
            self._first_audio_at = now
        received = session.stats.audio_in
        self._arrivals.append((received, now))
        # a client ahead of real time is slowed down, never dropped (decided from this message on)
        session.drop_when_behind = not self._pace.note(received / SAMPLE_RATE, now)
        while len(self._arrivals) > 1 and self._arrivals[0][0] < received - ARRIVALS_KEPT:
            self._arrivals.popleft()

    def _update_stats(self) -> None:
        session = self.protocol.session
        assert session is not None
        stats = session.stats
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
                elif name == "audio_dropped":  # from the session's count: the same for every protocol
                    m.audio_dropped.inc(delta / SAMPLE_RATE)
                else:
                    m.partials_dropped.inc(delta)
        # Behind = how long the oldest audio not yet through VAD has been waiting, in wall time. Counting samples
        # instead would call every faster-than-real-time client "overloaded" the moment it sends a file.
        waited = 0.0
        done = stats.audio_processed + stats.audio_dropped  # stream samples the VAD is past
        if done < stats.audio_in:
            arrived = self._arrival_of(done + 1)
            if arrived is not None:
                waited = time.monotonic() - arrived
        if self.protocol.phase == Phase.ENDING and session.finals_outstanding and self._arrivals:
            # after stop the VAD may be done while finals still wait: their wait counts too, so the client hears
            # "overloaded" before a flush that runs out of time costs it a final
            waited = max(waited, time.monotonic() - self._arrivals[-1][1])
        bound = self.ctx.config.overload_lag
        if waited > bound and not self._overloaded:
            self._overloaded = True
            m.overloaded.inc()
            self.protocol.warn_overloaded(waited)
            for message in self.protocol.messages_to_send():
                self._outbound.put_nowait(message)
        elif waited < bound / 2:
            self._overloaded = False

    def _observe_sent(self, message: Outgoing) -> None:
        event = message.event
        now = time.monotonic()
        m = self.ctx.metrics
        if isinstance(event, wire.Partial) and not self._first_partial_seen and self._first_audio_at is not None:
            self._first_partial_seen = True
            m.time_to_first_partial.observe(now - self._first_audio_at)
        elif isinstance(event, wire.Final):
            arrived = self._arrival_of(event.end)
            if arrived is not None:
                m.final_latency.observe(max(0.0, now - arrived))
                self._trace_final(event, arrived, now)

    def _trace_final(self, event: wire.Final, arrived: float, sent: float) -> None:
        """The final's latency breakdown (:func:`final_trace`) into the metrics."""
        session = self.protocol.session
        done = self._vad_done.get(event.channel)
        if session is None or not done:
            return
        vad = session.config.vad
        close = event.end - vad.speech_pad + vad.min_silence  # the VAD closes an utterance this far into its pause
        index = bisect.bisect_left(done, close, key=lambda d: d[0])
        if index == len(done) or done[index][1] > sent:  # closed earlier: cut at max_utterance, a finalize, the end
            close = event.end
            index = bisect.bisect_left(done, close, key=lambda d: d[0])
        vad_closed = done[min(index, len(done) - 1)][1]
        future = self._finals.pop((event.channel, event.start, event.end), None)
        close_arrived = self._arrival_of(close)
        trace = final_trace(arrived, close_arrived if close_arrived is not None else arrived, vad_closed, future,
                            sent)
        trace["audio"], trace["at"] = round((event.end - event.start) / SAMPLE_RATE, 3), sent
        if future is not None and future.started_at is not None:  # what its queue wait waited behind
            own, other = self.ctx.pool.ran_during("asr", self.session_id, future.queued_at, future.started_at)
            trace["behind_own"], trace["behind_other"] = round(own, 4), round(other, 4)
        if future is not None and future.started_at is not None and future.finished_at is not None:
            # what else ran while it decoded: each batcher's model-call seconds in its compute window (the finals'
            # own batcher less this decode: another final on the spill lane)
            for name, seconds in self.ctx.pool.busy_during(future.started_at, future.finished_at).items():
                if name == "asr":
                    seconds = max(0.0, seconds - (future.finished_at - future.started_at))
                trace[f"beside_{name.replace('-', '_')}"] = round(seconds, 4)
        self.ctx.metrics.add_final_trace(trace)

    def _arrival_of(self, sample: int) -> Optional[float]:
        """Wall time the message holding stream sample ``sample - 1`` arrived (the utterance's last audio)."""
        if not self._arrivals:
            return None
        index = bisect.bisect_left(self._arrivals, sample - 1, key=lambda arrival: arrival[0])
        return self._arrivals[min(index, len(self._arrivals) - 1)][1]
