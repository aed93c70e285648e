"""The Twilio bridge: translation of recorded-looking Media Streams events, and one call end to end through the
bridge into the scripted rechka server."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from clients.connection import ConnectOptions
from clients.telephony.twilio_bridge import (
    CallState, InvalidTwilioMessage, InvalidTwilioState, TwilioBridge, TwilioCall, UnsupportedTwilioFormat,
    serve_bridge,
)

STREAM, CALL, ACCOUNT = "MZ18ad3ab5a668481ce02b83e7395059f0", "CA2d5f4e7b96c1b0a8e2e4f1d0c3b2a190", "AC25e16e9a"


class Twilio:
    """Writes frames the way Twilio does: string sequence numbers, base64 μ-law payloads, ms timestamps."""

    def __init__(self, tracks: tuple[str, ...] = ("inbound",)) -> None:
        self.tracks = tracks
        self.seq = 0
        self.chunks = {t: 0 for t in tracks}

    def _next(self) -> str:
        self.seq += 1
        return str(self.seq)

    def connected(self) -> str:
        return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start(self, media_format: dict[str, Any] | None = None) -> str:
        fmt = media_format or {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
        return json.dumps({"event": "start", "sequenceNumber": self._next(), "streamSid": STREAM, "start": {
            "accountSid": ACCOUNT, "streamSid": STREAM, "callSid": CALL, "tracks": list(self.tracks),
            "customParameters": {"queue": "support"}, "mediaFormat": fmt}})

    def media(self, payload: bytes, timestamp_ms: int, track: str = "inbound") -> str:
        self.chunks[track] += 1
        return json.dumps({"event": "media", "sequenceNumber": self._next(), "streamSid": STREAM, "media": {
            "track": track, "chunk": str(self.chunks[track]), "timestamp": str(timestamp_ms),
            "payload": base64.b64encode(payload).decode()}})

    def dtmf(self, digit: str) -> str:
        return json.dumps({"event": "dtmf", "sequenceNumber": self._next(), "streamSid": STREAM,
                           "dtmf": {"track": "inbound_track", "digit": digit}})

    def mark(self) -> str:
        return json.dumps({"event": "mark", "sequenceNumber": self._next(), "streamSid": STREAM,
                           "mark": {"name": "greeting"}})

    def stop(self) -> str:
        return json.dumps({"event": "stop", "sequenceNumber": self._next(), "streamSid": STREAM,
                           "stop": {"accountSid": ACCOUNT, "callSid": CALL}})


def packets(value: int, ms: int, first_ms: int = 0) -> list[tuple[bytes, int]]:
    """20 ms μ-law packets of a constant byte value, with their timestamps."""
    return [(bytes([value]) * 160, first_ms + i * 20) for i in range(ms // 20)]


def test_single_track_is_forwarded_in_order_as_mono_mulaw() -> None:
    tw, call = Twilio(), TwilioCall()
    call.receive(tw.connected())
    call.receive(tw.start())
    assert call.state == CallState.STREAMING and call.call_sid == CALL and call.stream_sid == STREAM
    assert call.custom_parameters == {"queue": "support"}
    start = call.start_message()
    assert (start.encoding, start.sample_rate, start.channels, start.multichannel, start.diarization) == (
        "mulaw", 8000, 1, False, True)
    sent = []
    out = b""
    for i, (payload, ts) in enumerate(packets(0, 1000)):
        payload = bytes([i % 256]) * 160  # every packet distinct, to check the order
        sent.append(payload)
        call.receive(tw.media(payload, ts))
        out += call.audio_to_send()
    call.receive(tw.stop())
    out += call.audio_to_send()
    assert out == b"".join(sent) and call.state == CallState.STOPPED


def test_a_timestamp_gap_is_filled_with_mulaw_silence() -> None:
    tw, call = Twilio(), TwilioCall()
    call.receive(tw.start())
    call.receive(tw.media(b"\x01" * 160, 0))
    call.receive(tw.media(b"\x02" * 160, 120))  # 100 ms (800 samples) went missing
    call.receive(tw.stop())
    assert call.audio_to_send() == b"\x01" * 160 + b"\xff" * 800 + b"\x02" * 160


def test_two_tracks_become_interleaved_channels_aligned_on_timestamps() -> None:
    tw, call = Twilio(("inbound", "outbound")), TwilioCall()
    call.receive(tw.start())
    start = call.start_message()
    assert (start.channels, start.multichannel, start.diarization) == (2, True, False)
    for (a, ts_a), (b, ts_b) in zip(packets(0x10, 400), packets(0x20, 400, first_ms=40)):
        call.receive(tw.media(a, ts_a, "inbound"))
        call.receive(tw.media(b, ts_b, "outbound"))
    call.receive(tw.stop())
    out = call.audio_to_send()
    caller, agent = out[0::2], out[1::2]
    assert caller == b"\x10" * 3200 + b"\xff" * 320  # padded at the end to the agent's length
    assert agent == b"\xff" * 320 + b"\x20" * 3200  # starts 40 ms late


def test_a_silent_track_does_not_stall_the_other() -> None:
    tw, call = Twilio(("inbound", "outbound")), TwilioCall()
    call.receive(tw.start())
    out = b""
    for payload, ts in packets(0x10, 1000):
        call.receive(tw.media(payload, ts, "inbound"))
        out += call.audio_to_send()
    assert len(out) // 2 >= 8 * (1000 - 200)  # at most the allowed skew is held back
    assert set(out[0::2]) == {0x10} and set(out[1::2]) == {0xFF}


def test_inbound_only_drops_the_outbound_track() -> None:
    tw, call = Twilio(("inbound", "outbound")), TwilioCall(both_tracks=False)
    call.receive(tw.start())
    call.receive(tw.media(b"\x10" * 160, 0, "inbound"))
    call.receive(tw.media(b"\x20" * 160, 0, "outbound"))
    call.receive(tw.stop())
    assert call.channels == 1 and call.audio_to_send() == b"\x10" * 160


def test_dtmf_is_recorded_and_marks_are_ignored() -> None:
    tw, call = Twilio(), TwilioCall()
    call.receive(tw.start())
    call.receive(tw.dtmf("7"))
    call.receive(tw.mark())
    assert call.dtmf == ["7"] and call.audio_to_send() == b""


def test_bad_input_raises_one_exception_per_kind() -> None:
    tw = Twilio()
    with pytest.raises(InvalidTwilioMessage, match="JSON"):
        TwilioCall().receive("{nope")
    with pytest.raises(InvalidTwilioMessage, match="event"):
        TwilioCall().receive('{"media": {}}')
    with pytest.raises(InvalidTwilioState, match="before start"):
        TwilioCall().receive(tw.media(b"\x00", 0))
    with pytest.raises(UnsupportedTwilioFormat, match="x-mulaw"):
        TwilioCall().receive(tw.start({"encoding": "audio/x-l16", "sampleRate": 16000, "channels": 1}))
    call = TwilioCall()
    call.receive(tw.start())
    with pytest.raises(InvalidTwilioState, match="second start"):
        call.receive(tw.start())
    bad = json.loads(tw.media(b"\x00", 0))
    bad["media"]["payload"] = "%%%"
    with pytest.raises(InvalidTwilioMessage, match="base64"):
        call.receive(json.dumps(bad))
    with pytest.raises(InvalidTwilioState):
        TwilioCall().start_message()


def test_a_call_through_the_bridge_is_transcribed_and_written(scripted_server, tmp_path: Path) -> None:
    server = scripted_server()
    bridge = TwilioBridge(ConnectOptions(url=server.url), out_dir=tmp_path)

    async def scenario() -> None:
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(serve_bridge(bridge, "127.0.0.1", 0, ready))
        port = await ready
        tw = Twilio()
        async with connect(f"ws://127.0.0.1:{port}/twilio") as ws:
            await ws.send(tw.connected())
            await ws.send(tw.start())
            for second, value in enumerate((0x41, 0x42)):
                for payload, ts in packets(value, 1000, first_ms=1000 * second):
                    await ws.send(tw.media(payload, ts))
            await ws.send(tw.stop())
            await ws.wait_closed()
        for _ in range(200):  # the bridge finishes the rechka stream after Twilio hangs up
            if (tmp_path / f"{CALL}.json").exists():
                break
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert server.starts[0]["encoding"] == "mulaw" and server.starts[0]["sample_rate"] == 8000
    assert [f.text for f in bridge.transcripts[CALL]] == [str(0x41), str(0x42)]
    doc = json.loads((tmp_path / f"{CALL}.json").read_text())
    assert doc["call_sid"] == CALL and doc["custom_parameters"] == {"queue": "support"}
    assert [f["start"] for f in doc["finals"]] == [0.0, 1.0]
