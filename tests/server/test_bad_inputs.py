"""Every bad input its documented answer over a real socket (issue #13): close reasons within 123 bytes, a bounded
JSON parser, names cut in errors, a harmless second stop, keepalive before start, empty and non-UTF-8 frames; and
fuzzing of the parser and the audio decoder (hypothesis)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming import wire
from streaming.audio import AudioDecoder
from streaming.config import AudioFormat
from streaming.errors import InvalidAudio, InvalidMessage
from streaming.protocols.base import close_reason
from tests.server.conftest import Received, exchange, run, serving, silence, tones_audio
from tests.server.fake_models import fake_models

START = {"type": "start", "diarization": False}


def _exchange(messages: list, **serve: object) -> Received:
    async def main() -> Received:
        async with serving(**serve) as server:
            return await exchange(server.url, messages)
    return run(main())


def test_close_reasons_are_cut_by_utf8_bytes_on_a_character_boundary() -> None:
    reason = close_reason("поле " * 60)
    assert len(reason.encode()) <= 123 and ("поле " * 60).startswith(reason)
    assert close_reason("ok") == "ok"


def test_an_unknown_cyrillic_field_closes_1008_with_a_reason_that_fits() -> None:
    got = _exchange([{"type": "start", "неизвестное_поле_с_длинным_русским_названием": 1}])
    assert got.types == ["error"] and got.events[0]["code"] == "invalid_message"
    assert got.close_code == 1008 and 0 < len(got.close_reason.encode()) <= 123


@pytest.mark.parametrize("text", ["[" * 100_000, "[" * 10_000, '{"a":' * 5_000 + "1" + "}" * 5_000])
def test_deeply_nested_json_is_invalid_message_1008(text: str, caplog: pytest.LogCaptureFixture) -> None:
    got = _exchange([text])
    assert got.types == ["error"] and got.events[0]["code"] == "invalid_message" and got.close_code == 1008
    assert "Traceback" not in caplog.text and "RecursionError" not in caplog.text


def test_an_enormous_unknown_field_name_is_not_echoed_whole() -> None:
    got = _exchange([json.dumps({"type": "start", "x" * 10_000: 1})])
    message = got.events[0]["message"]
    assert got.events[0]["code"] == "invalid_message" and len(message) < 300 and "x" * 40 in message


def test_a_second_stop_while_finals_flush_is_harmless() -> None:
    # slow models: the first stop's final is still being decoded when the second stop arrives
    got = _exchange([START, tones_audio([440]), {"type": "stop"}, {"type": "stop"}], models=fake_models(delay=0.3))
    assert "error" not in got.types and got.types[-1] == "end" and got.close_code == 1000
    assert got.final_words == ["w440"]


def test_keepalive_before_start_and_empty_binary_frames_are_accepted() -> None:
    got = _exchange([{"type": "keepalive"}, START, b"", tones_audio([660]), b"", {"type": "keepalive"},
                     {"type": "stop"}])
    assert got.types[0] == "ready" and got.types[-1] == "end" and got.close_code == 1000
    assert got.final_words == ["w660"]


def test_an_empty_binary_frame_before_start_is_invalid_audio_1003() -> None:
    got = _exchange([b""])
    assert got.types == ["error"] and got.events[0]["code"] == "invalid_audio" and got.close_code == 1003


def test_a_non_utf8_text_frame_closes_1007_from_the_websocket_layer() -> None:
    from websockets.frames import Frame, Opcode

    async def main() -> Received:
        async with serving() as server:
            from websockets.asyncio.client import connect

            from tests.server.conftest import read_all
            received = Received()
            async with connect(server.url) as ws:
                await ws.send(json.dumps(START))
                ws.protocol.send_frame(Frame(Opcode.TEXT, b"\xff\xfe"))  # invalid UTF-8 bypassing the encoder
                await ws.send(silence(0.1))
                await read_all(ws, received)
            return received

    got = run(main())
    assert got.close_code == 1007 and "error" not in got.types


def test_too_long_text_messages_are_invalid_message() -> None:
    with pytest.raises(InvalidMessage, match="at most"):
        wire.parse_client_message(json.dumps({"type": "keepalive", "pad": "x" * wire.MAX_TEXT_BYTES}))


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                              lambda children: st.lists(children, max_size=4)
                              | st.dictionaries(st.text(max_size=12), children, max_size=4),
                              max_leaves=20).map(json.dumps),
                 st.dictionaries(st.sampled_from(["type", "encoding", "sample_rate", "channels", "multichannel",
                                                  "diarization", "max_speakers", "num_speakers", "x"]),
                                 st.none() | st.booleans() | st.integers(-5, 50_000) | st.text(max_size=8)
                                 | st.sampled_from(["start", "stop", "finalize", "keepalive"]),
                                 max_size=6).map(json.dumps)))
def test_fuzzed_text_messages_parse_or_raise_invalid_message(text: object) -> None:
    try:
        message = wire.parse_client_message(text)  # type: ignore[arg-type]
    except InvalidMessage as exc:
        assert 0 < len(str(exc)) < 400
    else:
        assert isinstance(message, (wire.Start, wire.Stop, wire.Finalize, wire.KeepAlive))


@settings(max_examples=60, deadline=None)
@given(encoding=st.sampled_from(wire.ENCODINGS), rate=st.sampled_from([8000, 11025, 16000, 44100, 48000]),
       channels=st.integers(1, 3), chunks=st.lists(st.binary(max_size=700), max_size=8))
def test_fuzzed_audio_decodes_or_raises_invalid_audio(encoding: str, rate: int, channels: int,
                                                      chunks: list[bytes]) -> None:
    decoder = AudioDecoder(AudioFormat(encoding, rate, channels))
    width = {"pcm_s16le": 2, "pcm_f32le": 4}.get(encoding, 1) * channels
    total, frames = 0, 0
    try:
        for data in chunks:
            total += len(data)
            out = decoder.decode(data)
            assert out.shape[0] == channels and out.dtype == np.float32 and np.isfinite(out).all()
            frames += out.shape[1]
        frames += decoder.flush().shape[1]
    except InvalidAudio:
        assert encoding == "pcm_f32le"
        return
    expected = total // width * 16000 / rate
    assert abs(frames - expected) <= 2 + 16000 / rate  # the resampler's rounding


def test_a_flood_of_tiny_messages_loses_nothing() -> None:
    audio = tones_audio([440])
    got = _exchange([START, *(audio[i:i + 3] for i in range(0, len(audio), 3)), {"type": "stop"}])
    (end,) = got.of("end")
    assert got.close_code == 1000 and got.final_words == ["w440"]
    assert end["audio_seconds"] == len(audio) // 2 / 16000 and end["dropped_seconds"] == 0


@pytest.mark.parametrize("token", ["x" * 6000, "bad token\u00e9", "", "Bearer"])
def test_huge_or_malformed_tokens_are_refused_before_the_upgrade(token: str) -> None:
    from tests.server.conftest import http_get

    async def main() -> int:
        async with serving(tokens=frozenset({"secret"})) as server:
            reply = await http_get(server.port, "/v1/stream", {
                "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13", "Authorization": f"Bearer {token}".encode("utf-8").decode("latin-1")})
            return reply.status

    assert run(main()) in (400, 401, 413, 431)
