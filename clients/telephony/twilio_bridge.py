"""Bridge Twilio Media Streams to rechka: each phone call becomes one protocol v1 stream; transcripts are logged.

    python -m clients.telephony.twilio_bridge --port 8080 --url ws://127.0.0.1:8000/v1/stream [--out-dir calls/]

Point TwiML ``<Start><Stream url="wss://your-host/twilio"/></Start>`` at it (Twilio needs ``wss://``: put the bridge
behind a TLS-terminating proxy). Twilio sends JSON text frames: ``connected``, then ``start`` (``streamSid``,
``callSid``, ``tracks``, ``mediaFormat`` = 8 kHz mono μ-law), then ``media`` frames (base64 μ-law, about 20 ms each,
``timestamp`` in ms from the stream's start, ``track`` inbound/outbound), ``dtmf``/``mark``, and ``stop``.

:class:`TwilioCall` is the sans-I/O translation of one call: feed it Twilio's text frames, take out audio for rechka
(``encoding: mulaw, sample_rate: 8000``). One track is sent as mono with diarization; with both tracks the caller
(inbound) and the agent (outbound) become channels 0 and 1 of a multichannel stream, aligned on Twilio's
timestamps. Gaps in the timestamps are filled with μ-law silence so transcript times stay on the call's clock.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import logging
from enum import IntEnum
from pathlib import Path
from typing import Any, AsyncIterator, Optional, Sequence, Union

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from streaming import wire
from streaming.protocols.base import CloseCode, close_reason

from clients.connection import ConnectOptions, GaveUp, Refused, StreamClient
from clients.formats import format_timestamp, speaker_of
from clients.sources import FrameFormat
from clients.stream import write_outputs

__all__ = ["TwilioCall", "CallState", "InvalidTwilioMessage", "InvalidTwilioState", "UnsupportedTwilioFormat",
           "TwilioBridge", "main"]

log = logging.getLogger("rechka.twilio")

RATE = 8000
BYTES_PER_MS = RATE // 1000  # μ-law: one byte per sample
MULAW_SILENCE = 0xFF  # μ-law code for 0
TRACK_CHANNELS = {"inbound": 0, "outbound": 1}
MAX_SKEW_MS = 200  # with two tracks, one may run this far ahead before the other is padded with silence
PACKET_MS = 20  # Twilio's media frames
FLUSH_MS = 100  # audio is forwarded in messages of about this length


class InvalidTwilioMessage(ValueError):
    """A frame that is not a Twilio Media Streams JSON message (bad JSON, missing field, bad base64)."""


class InvalidTwilioState(ValueError):
    """A valid message at the wrong time (``media`` before ``start``, a second ``start``)."""


class UnsupportedTwilioFormat(ValueError):
    """A ``mediaFormat`` other than 8 kHz mono μ-law."""


class CallState(IntEnum):
    CONNECTING = 0  # before start
    STREAMING = 1
    STOPPED = 2


def _get(obj: Any, *path: str) -> Any:
    for name in path:
        if not isinstance(obj, dict) or name not in obj:
            raise InvalidTwilioMessage(f"Twilio message has no {'.'.join(path)!r}")
        obj = obj[name]
    return obj


class TwilioCall:
    """Translation of one Twilio media stream. :meth:`receive` each text frame; :meth:`audio_to_send` swaps out
    the μ-law frames ready for rechka (interleaved when there are two tracks)."""

    def __init__(self, both_tracks: bool = True) -> None:
        self.state = CallState.CONNECTING
        self.both_tracks = both_tracks
        self.stream_sid = ""
        self.call_sid = ""
        self.custom_parameters: dict[str, str] = {}
        self.tracks: tuple[str, ...] = ()
        self.dtmf: list[str] = []
        self._pending: dict[str, bytearray] = {}  # per track: bytes not yet interleaved
        self._written: dict[str, int] = {}  # per track: samples placed on the call's clock
        self._out = bytearray()

    @property
    def channels(self) -> int:
        return len(self.tracks)

    def start_message(self, **options: Any) -> wire.Start:
        """The rechka ``start`` for this call (valid after Twilio's ``start``)."""
        if self.state == CallState.CONNECTING:
            raise InvalidTwilioState("no Twilio start message yet")
        multi = self.channels > 1
        return wire.Start(encoding="mulaw", sample_rate=RATE, channels=self.channels, multichannel=multi,
                          diarization=options.pop("diarization", not multi), **options)

    def receive(self, text: Union[str, bytes]) -> None:
        """Apply one Twilio frame. Raises one of the three exception kinds for bad input."""
        try:
            msg = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise InvalidTwilioMessage("Twilio frames are JSON text") from None
        event = _get(msg, "event")
        if event == "connected":
            return
        if event == "start":
            self._on_start(msg)
        elif event == "media":
            self._on_media(msg)
        elif event == "stop":
            if self.state == CallState.STREAMING:
                self._flush_all()
            self.state = CallState.STOPPED
        elif event == "dtmf":
            self.dtmf.append(str(_get(msg, "dtmf", "digit")))
        # "mark" and future events carry no audio: ignored

    def _on_start(self, msg: dict[str, Any]) -> None:
        if self.state != CallState.CONNECTING:
            raise InvalidTwilioState("a second start message on one stream")
        start = _get(msg, "start")
        fmt = _get(start, "mediaFormat")
        if (fmt.get("encoding"), fmt.get("sampleRate"), fmt.get("channels", 1)) != ("audio/x-mulaw", RATE, 1):
            raise UnsupportedTwilioFormat(f"expected 8 kHz mono audio/x-mulaw, got {fmt!r}")
        self.stream_sid = str(msg.get("streamSid") or start.get("streamSid", ""))
        self.call_sid = str(start.get("callSid", ""))
        self.custom_parameters = dict(start.get("customParameters") or {})
        tracks = [t for t in (start.get("tracks") or ["inbound"]) if t in TRACK_CHANNELS]
        if not tracks:
            raise InvalidTwilioMessage(f"start.tracks has no inbound or outbound track: {start.get('tracks')!r}")
        if not self.both_tracks:
            tracks = tracks[:1]
        self.tracks = tuple(sorted(tracks, key=TRACK_CHANNELS.__getitem__))
        self._pending = {t: bytearray() for t in self.tracks}
        self._written = {t: 0 for t in self.tracks}
        self.state = CallState.STREAMING

    def _on_media(self, msg: dict[str, Any]) -> None:
        if self.state == CallState.CONNECTING:
            raise InvalidTwilioState("media before start")
        if self.state == CallState.STOPPED:
            return
        media = _get(msg, "media")
        track = str(media.get("track", "inbound"))
        if track not in self._pending:
            return  # a track this bridge does not transcribe
        try:
            payload = base64.b64decode(_get(media, "payload"), validate=True)
            at = int(media.get("timestamp", self._written[track] // BYTES_PER_MS)) * BYTES_PER_MS
        except (binascii.Error, ValueError, TypeError):
            raise InvalidTwilioMessage("media.payload must be base64 and media.timestamp a number") from None
        gap = at - self._written[track]
        if gap > PACKET_MS * BYTES_PER_MS:  # more than a packet missing: keep the call's clock with silence
            self._pending[track] += bytes([MULAW_SILENCE]) * gap
            self._written[track] += gap
        self._pending[track] += payload
        self._written[track] += len(payload)
        self._interleave()

    def _interleave(self, final: bool = False) -> None:
        if len(self.tracks) == 1:
            buf = self._pending[self.tracks[0]]
            if final or len(buf) >= FLUSH_MS * BYTES_PER_MS:
                self._out += buf
                buf.clear()
            return
        a, b = (self._pending[t] for t in self.tracks)
        longest = max(len(a), len(b))
        skew = MAX_SKEW_MS * BYTES_PER_MS
        for buf, track in ((a, self.tracks[0]), (b, self.tracks[1])):  # a silent track must not stall the other
            short = (longest - len(buf)) if final else (longest - skew - len(buf))
            if short > 0:
                buf += bytes([MULAW_SILENCE]) * short
                self._written[track] += short
        n = min(len(a), len(b))
        if n and (final or n >= FLUSH_MS * BYTES_PER_MS):
            frames = bytearray(2 * n)
            frames[0::2], frames[1::2] = a[:n], b[:n]
            del a[:n], b[:n]
            self._out += frames

    def _flush_all(self) -> None:
        self._interleave(final=True)

    def audio_to_send(self) -> bytes:
        """μ-law frames ready for rechka since the last call (swapped out)."""
        out, self._out = bytes(self._out), bytearray()
        return out


class _CallAudio:
    """An audio source fed by a Twilio connection (live: it cannot wait)."""

    live = True

    def __init__(self, channels: int) -> None:
        self.format = FrameFormat("mulaw", RATE, channels)
        self._queue: asyncio.Queue[Optional[bytes]] = asyncio.Queue()

    def put(self, data: bytes) -> None:
        if data:
            self._queue.put_nowait(data)

    async def chunks(self) -> AsyncIterator[bytes]:
        while (item := await self._queue.get()) is not None:
            yield item

    def close(self) -> None:
        self._queue.put_nowait(None)


class TwilioBridge:
    """A websocket server accepting Twilio Media Streams; each call is streamed to rechka by a StreamClient."""

    def __init__(self, options: ConnectOptions, both_tracks: bool = True, out_dir: Optional[Path] = None) -> None:
        self.options = options
        self.both_tracks = both_tracks
        self.out_dir = out_dir
        self.transcripts: dict[str, list[wire.Final]] = {}  # call SID → finals (for tests and --out-dir)

    async def handle(self, twilio: ServerConnection) -> None:
        call = TwilioCall(self.both_tracks)
        audio: Optional[_CallAudio] = None
        client_task: Optional[asyncio.Task[Any]] = None
        try:
            async for frame in twilio:
                try:
                    call.receive(frame)
                except UnsupportedTwilioFormat as e:
                    log.error("closing stream: %s", e)
                    await twilio.close(CloseCode.UNSUPPORTED_DATA, close_reason(str(e)))
                    break
                except (InvalidTwilioMessage, InvalidTwilioState) as e:
                    log.error("closing stream: %s", e)
                    await twilio.close(CloseCode.POLICY_VIOLATION, close_reason(str(e)))
                    break
                if audio is None and call.state == CallState.STREAMING:
                    audio = _CallAudio(call.channels)
                    client_task = asyncio.create_task(self._transcribe(call, audio))
                if audio is not None:
                    audio.put(call.audio_to_send())
                if call.state == CallState.STOPPED:
                    break
        except ConnectionClosed:
            pass
        finally:
            if audio is not None:
                audio.put(call.audio_to_send())
                audio.close()
            if client_task is not None:
                await asyncio.gather(client_task, return_exceptions=True)

    async def _transcribe(self, call: TwilioCall, audio: _CallAudio) -> None:
        sid = call.call_sid or call.stream_sid or "call"
        finals = self.transcripts.setdefault(sid, [])
        names = {"ch0": "caller", "ch1": "agent"}

        def on_event(event: wire.ServerEvent) -> None:
            if isinstance(event, wire.Final) and event.text.strip():
                finals.append(event)
                label = speaker_of(event) or "caller"
                log.info("%s [%s] %s: %s", sid, format_timestamp(event.start, "."), names.get(label, label),
                         event.text)
            elif isinstance(event, (wire.Warning, wire.Error)):
                log.warning("%s rechka %s: %s", sid, event.code, event.message)

        client = StreamClient(self.options, call.start_message(), on_event=on_event)
        log.info("%s: call started (tracks %s)", sid, ", ".join(call.tracks))
        try:
            captions = await client.run(audio)
        except (Refused, GaveUp) as e:
            log.error("%s: rechka stream failed: %s", sid, e)
            return
        log.info("%s: call ended, %d finals", sid, len(captions.finals))
        if self.out_dir is not None:
            write_outputs(captions, self.out_dir, sid, extra={"call_sid": call.call_sid,
                                                               "stream_sid": call.stream_sid,
                                                               "custom_parameters": call.custom_parameters})


async def serve_bridge(bridge: TwilioBridge, host: str, port: int, ready: Optional[asyncio.Future] = None) -> None:
    """Run the bridge until cancelled; ``ready`` (if given) receives the bound port."""
    async with serve(bridge.handle, host, port) as server:
        if ready is not None:
            ready.set_result(server.sockets[0].getsockname()[1])
        await asyncio.get_running_loop().create_future()


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="rechka-twilio", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--url", default="ws://127.0.0.1:8000/v1/stream", help="rechka stream URL")
    p.add_argument("--token", help="rechka access token")
    p.add_argument("--inbound-only", action="store_true", help="transcribe only the caller's track")
    p.add_argument("--out-dir", type=Path, help="write .json/.srt/.vtt/.rttm/.txt per call here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        options = ConnectOptions(url=args.url, token=args.token)
    except ValueError as e:
        p.error(str(e))
    bridge = TwilioBridge(options, both_tracks=not args.inbound_only, out_dir=args.out_dir)
    log.info("listening for Twilio media streams on ws://%s:%d", args.host, args.port)
    try:
        asyncio.run(serve_bridge(bridge, args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
