"""One protocol v1 stream over a websocket, with reconnects: :class:`StreamClient`.

The audio source feeds a :class:`~clients.sources.ReplayBuffer`; a sender task sends from it and a receiver task
applies the server's events to :class:`~clients.captions.LiveCaptions`. When the connection is lost the client
reconnects with exponential backoff (or the server's ``Retry-After``) and starts a new server session that resumes
from the end of the newest final (``captions.acknowledged``): audio after it is sent again, so an utterance cut by
the drop is transcribed whole, and event times are shifted so the transcript keeps one time line. Speaker labels
restart with each server session. Refusals that a retry cannot fix (401/403, close codes 1003/1008/1009) stop at
once with :class:`Refused`.

A file is sent as fast as the server takes it: the server slows a client that runs ahead of real time by not
reading its socket (backpressure), so ``ws.send`` simply waits, and nothing is dropped or needs a reconnect. Its
websocket pings would wait behind the audio too, so a file stream has no ping deadline (the server's own
timeouts end a dead stream). A live source does not wait: if it outruns the replay window while the server is not
taking audio, the session is ended with ``stop`` and the audio goes on in a new one from the oldest frame kept.
Audio lost is counted once: what fell out of the replay window unsent (``lost_samples``) and what the server
reported dropping (``server_dropped_samples``).
"""

from __future__ import annotations

import asyncio
import random
import ssl
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Callable, Optional, Protocol
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from streaming import wire
from streaming.protocols.base import CloseCode

from clients.captions import LiveCaptions
from clients.protocol import (PERMANENT_CLOSE_CODES, ProtocolError, describe_close, dump_client_message,
                              parse_server_event)
from clients.sources import FrameFormat, ReplayBuffer

__all__ = ["ConnectOptions", "StreamStatus", "StreamClient", "Refused", "GaveUp", "AudioSource"]

_REFUSED_STATUS = {
    401: "the server needs a valid token: pass --token (or set RECHKA_TOKEN)",
    403: "the server refused this token or origin",
    404: "no rechka stream at this URL; the path is /v1/stream",
}


class Refused(RuntimeError):
    """The server refused the stream in a way a retry cannot fix; the message is for the user."""


class GaveUp(RuntimeError):
    """Reconnecting failed ``max_retries`` times in a row."""


class AudioSource(Protocol):
    format: FrameFormat
    live: bool

    def chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ConnectOptions:
    """How to reach the server and how hard to try.

    token: sent as ``Authorization: Bearer <token>`` (never in the URL, which servers and proxies log).
    cafile / insecure: TLS trust for ``wss://`` (insecure skips certificate checks: testing only).
    max_retries: consecutive failed attempts before giving up; backoff starts at ``backoff`` seconds and doubles up
        to ``max_backoff``. replay_seconds: audio kept for resending after a drop (bounds memory for live input).
    """

    url: str
    token: Optional[str] = None
    cafile: Optional[str] = None
    insecure: bool = False
    max_retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 10.0
    open_timeout: float = 10.0
    replay_seconds: float = 60.0
    chunk_ms: float = 100.0

    def __post_init__(self) -> None:
        scheme = urlsplit(self.url).scheme
        if scheme not in ("ws", "wss"):
            raise ValueError(f"the URL must start with ws:// or wss://, e.g. ws://127.0.0.1:8000/v1/stream "
                             f"(got {self.url!r})")
        if (self.cafile or self.insecure) and scheme != "wss":
            raise ValueError("--cafile/--insecure only apply to wss:// URLs")
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0 (0 = never reconnect)")
        if not 0 < self.backoff <= self.max_backoff:
            raise ValueError("backoff must be > 0 and <= max_backoff")
        if not 10 <= self.chunk_ms <= 1000:
            raise ValueError("chunk_ms must be between 10 and 1000 (100 ms is a good default)")
        if self.replay_seconds < 1:
            raise ValueError("replay_seconds must be >= 1")

    def ssl_context(self) -> Optional[ssl.SSLContext]:
        if urlsplit(self.url).scheme != "wss":
            return None
        ctx = ssl.create_default_context(cafile=self.cafile)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def delay(self, attempt: int) -> float:
        """Backoff before attempt ``attempt`` (1-based), with ±20 % jitter."""
        base = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return base * random.uniform(0.8, 1.2)


@dataclass
class StreamStatus:
    """What the status line shows. ``state``: connecting, streaming, finishing, reconnecting, done, failed."""

    state: str = "connecting"
    detail: str = ""
    audio_sent: int = 0  # samples at 16 kHz, absolute
    session_id: str = ""
    reconnects: int = 0
    lost_samples: int = 0  # never resent: it fell out of the replay window while disconnected
    server_dropped_samples: int = 0  # the server reported skipping it (audio_dropped, utterance_truncated)
    notes: list[str] = field(default_factory=list)


class _Retry(Exception):
    def __init__(self, message: str, delay: Optional[float] = None) -> None:
        super().__init__(message)
        self.delay = delay


class StreamClient:
    """Streams one audio source to the server and collects the transcript into ``captions``.

    ``on_event`` is called with every event (times absolute) as it arrives; ``on_status`` whenever
    :attr:`status` changes. ``start`` is the ``start`` message; its format fields are taken from the source.
    """

    def __init__(self, options: ConnectOptions, start: wire.Start = wire.Start(),
                 on_event: Optional[Callable[[wire.ServerEvent], None]] = None,
                 on_status: Optional[Callable[[StreamStatus], None]] = None) -> None:
        self.options = options
        self.start = start
        self.captions = LiveCaptions()
        self.status = StreamStatus()
        self._on_event = on_event or (lambda e: None)
        self._on_status = on_status or (lambda s: None)
        self._sent_frames = 0
        self._stop_sent = False
        self._room = asyncio.Event()
        self._lost_until = 0  # frames before this are already counted in lost_samples
        self._live = True
        self._fell_behind: Optional[str] = None  # why this session is being ended early to resume in a new one

    def _set(self, state: str, detail: str = "") -> None:
        self.status.state, self.status.detail = state, detail
        self._on_status(self.status)

    async def run(self, source: AudioSource) -> LiveCaptions:
        """Stream ``source`` to the end and return the transcript; raise :class:`Refused` or :class:`GaveUp`."""
        fmt = source.format
        start = replace(self.start, encoding=fmt.encoding, sample_rate=fmt.sample_rate, channels=fmt.channels,
                        multichannel=self.start.multichannel or fmt.channels > 1)
        self._live = source.live
        buffer = ReplayBuffer(fmt.frame_bytes, max(1, int(self.options.replay_seconds * fmt.sample_rate)))
        producer = asyncio.create_task(self._produce(source, buffer))
        try:
            await self._connect_loop(start, fmt, buffer, producer)
        except BaseException:
            source.close()
            raise
        finally:
            if not producer.done():
                producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)
        producer.result()  # re-raise a source error
        return self.captions

    async def _produce(self, source: AudioSource, buffer: ReplayBuffer) -> None:
        ahead = max(1, int(2.0 * source.format.sample_rate))  # a file waits while 2 s are unsent
        try:
            async for chunk in source.chunks():
                buffer.append(chunk)
                while not source.live and buffer.end - self._sent_frames > ahead:
                    self._room.clear()
                    await self._room.wait()
        finally:
            buffer.finish()

    async def _connect_loop(self, start: wire.Start, fmt: FrameFormat, buffer: ReplayBuffer,
                            producer: asyncio.Task[None]) -> None:
        failures = 0  # retries in a row without progress: a session that made some final starts the count anew
        while True:
            acknowledged = self.captions.acknowledged
            try:
                await self._session(start, fmt, buffer, producer)
                self._set("done")
                return
            except _Retry as retry:
                if producer.done() and not producer.cancelled() and producer.exception() is not None:
                    return  # the source failed; run() re-raises its error
                failures = 1 if self.captions.acknowledged > acknowledged else failures + 1
                if failures > self.options.max_retries:
                    self._set("failed", str(retry))
                    raise GaveUp(f"{retry}; gave up after {failures} attempts") from None
                delay = retry.delay if retry.delay is not None else self.options.delay(failures)
                self.status.reconnects += 1
                self._set("reconnecting", f"{retry}; retrying in {delay:.1f} s ({failures}/{self.options.max_retries})")
                await asyncio.sleep(delay)
            except Refused as refused:
                self._set("failed", str(refused))
                raise

    def _resume_frame(self, fmt: FrameFormat, buffer: ReplayBuffer) -> int:
        """Where a new session starts: the end of what is final, or the oldest frame kept if the replay window was
        too short (then the audio between is lost, counted once)."""
        resume = fmt.samples_to_frames(self.captions.acknowledged) if self.captions.sessions else 0
        if resume < buffer.start:
            counted = max(resume, self._lost_until)
            if buffer.start > counted:
                self.status.lost_samples += fmt.frames_to_samples(buffer.start - counted)
            self._lost_until = buffer.start
            resume = buffer.start
        return resume

    async def _session(self, start: wire.Start, fmt: FrameFormat, buffer: ReplayBuffer,
                       producer: asyncio.Task[None]) -> None:
        self._set("connecting", self.options.url)
        headers = {"Authorization": f"Bearer {self.options.token}"} if self.options.token else None
        try:
            ws = await connect(self.options.url, additional_headers=headers,
                               ssl=self.options.ssl_context(), open_timeout=self.options.open_timeout,
                               max_size=4 * 2**20, **({} if self._live else {"ping_timeout": None}))
        except InvalidStatus as e:
            code = e.response.status_code
            if code in (429, 502, 503, 504):
                retry_after = e.response.headers.get("Retry-After")
                delay = float(retry_after) if retry_after and retry_after.strip().isdigit() else None
                raise _Retry(f"server busy (HTTP {code})", delay) from None
            body = e.response.body.decode(errors="replace").strip() if e.response.body else ""
            hint = _REFUSED_STATUS.get(code, f"the server refused the connection (HTTP {code})")
            raise Refused(f"{hint}: {body}" if body else hint) from None
        except InvalidURI as e:
            raise Refused(f"bad URL: {e}") from None
        except ssl.SSLCertVerificationError as e:
            raise Refused(f"TLS certificate not trusted ({e.verify_message}); pass --cafile, or --insecure "
                          "for testing") from None
        except (OSError, asyncio.TimeoutError, InvalidHandshake) as e:
            raise _Retry(f"cannot connect: {e or type(e).__name__}") from None
        resume = self._resume_frame(fmt, buffer)  # after connecting: a live source went on meanwhile
        self.captions.new_session(fmt.frames_to_samples(resume))
        self._sent_frames = resume
        self._stop_sent = False
        async with ws:
            await ws.send(dump_client_message(start))
            sender = asyncio.create_task(self._send(ws, fmt, buffer, producer))
            try:
                await self._receive(ws, fmt)
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
        if self._fell_behind is not None:  # this session ended on our stop; the audio goes on in a new one
            reason, self._fell_behind = self._fell_behind, None
            raise _Retry(reason, 0.0)

    async def _send(self, ws: ClientConnection, fmt: FrameFormat, buffer: ReplayBuffer,
                    producer: asyncio.Task[None]) -> None:
        chunk = fmt.frames_for_ms(self.options.chunk_ms)
        self._set("streaming")
        try:
            while True:
                if self._sent_frames < buffer.start:
                    # A live source outran the replay window while the server was not taking audio: the next
                    # frame is gone. This session's timeline cannot skip it, so it is ended with stop (the server
                    # flushes every final of what it has) and the audio goes on in a new session from the oldest
                    # frame kept; the gap is counted in lost_samples by the reconnect.
                    self._fell_behind = (f"the live audio outran the {self.options.replay_seconds:g} s replay "
                                         "window while the server was not taking it")
                    await ws.send(dump_client_message(wire.Stop()))
                    self._stop_sent = True
                    self._set("finishing", self._fell_behind)
                    return
                if self._sent_frames < buffer.end:
                    data = buffer.read(self._sent_frames, chunk)
                    await ws.send(data)
                    self._sent_frames += len(data) // fmt.frame_bytes
                    self.status.audio_sent = fmt.frames_to_samples(self._sent_frames)
                    self._room.set()
                    continue
                if buffer.finished:
                    if producer.done() and producer.exception() is not None:
                        await ws.close(CloseCode.NORMAL, "audio source failed")
                        return
                    await ws.send(dump_client_message(wire.Stop()))
                    self._stop_sent = True
                    self._set("finishing", "waiting for the last finals")
                    return
                await buffer.changed()
        except ConnectionClosed:
            return  # the receiver reports why

    async def _receive(self, ws: ClientConnection, fmt: FrameFormat) -> None:
        error: Optional[wire.Error] = None
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    continue  # protocol v1 sends no binary; ignore rather than fail
                try:
                    decoded = parse_server_event(message)
                except ProtocolError as e:
                    raise Refused(f"the server does not speak protocol v1 as this client does: {e}") from None
                event = self.captions.receive(decoded, self.status.audio_sent)
                if isinstance(event, wire.Ready):
                    self.status.session_id = event.session_id
                elif isinstance(event, wire.Error):
                    error = event
                elif isinstance(event, wire.Warning) and event.dropped_seconds:
                    self.status.server_dropped_samples += round(event.dropped_seconds * wire.SAMPLE_RATE)
                self._on_event(event)
                if isinstance(event, wire.End) and self._stop_sent:
                    return  # otherwise the server ended early (drain, idle timeout): its close says why
        except ConnectionClosed:
            pass
        close = ws.close_code
        reason = ws.close_reason or (f"{error.code}: {error.message}" if error else "")
        if close in PERMANENT_CLOSE_CODES:
            raise Refused(describe_close(close, reason))
        raise _Retry(describe_close(close, reason))
