"""The Vosk protocol as a sans-I/O object: config, the eof/reset literals, lockstep replies, words and speakers."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from streaming.config import SessionConfig
from streaming.protocols.base import CloseCode, Limits, Phase
from streaming.protocols.vosk import EOF_LITERAL, RESET_LITERAL, VoskProtocol
from tests.fakes import ProtocolDriver, pcm16, tone_bursts


def driver(diarization: bool = False) -> ProtocolDriver:
    return ProtocolDriver(VoskProtocol("v1", Limits(session=SessionConfig(diarization=diarization))))


def tones(*freqs: float, rate: int = 8000, seconds: float = 0.8) -> bytes:
    """Tone bursts resampled to ``rate`` by taking every n-th sample (the fake ASR names them by frequency, the
    fake diarization makes each tone its own speaker)."""
    audio = tone_bursts([(f, seconds) for f in freqs], gaps=0.9).audio
    return pcm16(audio[::16000 // rate])


def replies(d: ProtocolDriver) -> list[dict[str, Any]]:
    return [m for m in d.sent if isinstance(m, dict)]


def test_res_speech_vosk_order_no_config_8khz_3200_byte_frames_one_reply_each_then_eof() -> None:
    audio = tones(440, 880)
    d = driver().audio(audio, chunk=3200)
    frames = -(-len(audio) // 3200)
    assert len(d.sent) == frames, "exactly one reply per audio message"
    assert d.protocol.session.config.audio.sample_rate == 8000
    d.text(EOF_LITERAL)
    results = [m for m in replies(d) if "text" in m]
    assert " ".join(m["text"] for m in results).split() == ["w440", "w880"]
    assert all(set(m) == {"partial"} for m in replies(d) if "text" not in m)
    word = results[0]["result"][0]
    assert set(word) == {"conf", "end", "start", "word"} and word["word"] == "w440" and word["start"] < word["end"]
    assert d.close.code == CloseCode.NORMAL and len(d.sent) == frames + 1  # eof gets the last reply


def test_jigasi_order_config_as_a_java_double_then_audio_then_eof() -> None:
    d = driver().text('{"config" : {"sample_rate" : 48000.0 }}')
    assert d.sent == [] and d.protocol.phase == Phase.AWAITING_START
    audio = pcm16(tone_bursts([(500, 0.8)], gaps=0.9).audio)
    rate48 = np.repeat(np.frombuffer(audio, "<i2"), 3).astype("<i2").tobytes()  # 48 kHz, 20 ms = 1920 bytes
    d.audio(rate48, chunk=1920).text(EOF_LITERAL)
    assert d.protocol.session.config.audio.sample_rate == 48000
    assert [m["text"] for m in replies(d) if m.get("text")] == ["w500"]


def test_reset_answers_with_the_final_so_far_and_keeps_the_stream() -> None:
    tone = pcm16((0.3 * np.sin(2 * np.pi * 600 * np.arange(8000) / 8000)).astype(np.float32))
    d = driver().audio(tone, chunk=1600).text(RESET_LITERAL)
    assert replies(d)[-1]["text"] == "w600" and d.close is None
    d.text('{"reset": 1}')  # equivalent JSON; nothing new: an empty result
    assert replies(d)[-1] == {"result": [], "text": ""}
    d.audio(tones(880)).text({"eof": 1})
    assert [m["text"] for m in replies(d) if m.get("text")][-1].endswith("w880")
    assert d.close.code == CloseCode.NORMAL


def test_replies_stay_in_order_behind_a_reset_whose_final_is_still_coming() -> None:
    tone = pcm16((0.3 * np.sin(2 * np.pi * 600 * np.arange(8000) / 8000)).astype(np.float32))
    d = driver().audio(tone, chunk=1600)
    d.held = True
    d.text(RESET_LITERAL).audio(b"\0" * 3200)
    before = len(d.sent)
    d.release()
    assert [m.get("text") for m in replies(d)[before:]][:1] == ["w600"]
    assert set(replies(d)[-1]) == {"partial"}


def test_words_false_gives_text_only_and_diarization_adds_speakers() -> None:
    d = driver().text({"config": {"sample_rate": 8000, "words": False}}).audio(tones(440)).text(EOF_LITERAL)
    assert replies(d)[-1] == {"text": "w440"} or any(m == {"text": "w440"} for m in replies(d))
    d = driver(diarization=True).audio(tones(300, 700, seconds=2.0)).text(EOF_LITERAL)
    results = [m for m in replies(d) if m.get("text")]
    assert [m["text"] for m in results] == ["w300", "w700"]
    assert [m["speaker"] for m in results] == ["S1", "S2"]
    assert [[w["speaker"] for w in m["result"]] for m in results] == [["S1"], ["S2"]]


def test_eof_without_audio_is_an_empty_result_and_a_late_config_changes_nothing() -> None:
    d = driver().text(EOF_LITERAL)
    assert d.sent == [{"result": [], "text": ""}] and d.close.code == CloseCode.NORMAL
    d = driver().audio(b"\0" * 3200).text({"config": {"sample_rate": 16000}})
    assert d.protocol.session.config.audio.sample_rate == 8000


@pytest.mark.parametrize("message", ["hello", '{"config": 5}', '{"config": {"sample_rate": "fast"}}',
                                     '{"config": {"sample_rate": 8000.5}}', json.dumps({"eof": 2})])
def test_bad_messages_close_1008_with_the_reason(message: str) -> None:
    d = driver().text(message)
    assert d.sent == [] and d.close.code == CloseCode.POLICY_VIOLATION and d.close.reason


def test_a_client_without_config_takes_the_urls_sample_rate() -> None:
    from streaming.errors import InvalidMessage
    from streaming.protocols.vosk import parse_query

    assert parse_query({}) == 8000 and parse_query({"sample_rate": ["16000"]}) == 16000
    with pytest.raises(InvalidMessage):
        parse_query({"sample_rate": ["wideband"]})
    d = ProtocolDriver(VoskProtocol("v", Limits(session=SessionConfig(diarization=False)), 16000))
    d.audio(pcm16(tone_bursts([(440, 0.8)], gaps=0.9).audio)).text(EOF_LITERAL)
    assert [m["text"] for m in replies(d) if m.get("text")] == ["w440"]


def test_an_unsupported_rate_closes_1003() -> None:
    d = driver().text({"config": {"sample_rate": 4000}}).audio(b"\0" * 320)
    assert d.close.code == CloseCode.UNSUPPORTED_DATA and "sample_rate" in d.close.reason


def test_finals_held_for_a_reply_take_a_speaker_merge_that_comes_before_they_go_out() -> None:
    import dataclasses

    from streaming.config import DiarizationOptions, ms
    from tests.fakes_diarization import (SPREAD_MERGE, SPREAD_VOICE, SPREAD_VOICE_LENGTH, spread_voice_session_run,
                                         synthesize)

    audio = synthesize(SPREAD_VOICE, SPREAD_VOICE_LENGTH)  # one voice: its second sound founds S2, later merged
    options = dataclasses.replace(DiarizationOptions(), **SPREAD_MERGE)
    protocol = VoskProtocol("v1", Limits(session=SessionConfig(diarizer=options)), sample_rate=16000)
    first = pcm16(audio[:ms(14000)])  # w300 and w500 final: w300 answers this message, w500 waits (as S2) ...
    d = ProtocolDriver(protocol, spread_voice_session_run()).audio(first, chunk=len(first))
    d.audio(pcm16(audio[ms(14000):]), chunk=len(audio) * 2)  # ... while this message's audio merges S2 into S1
    d.text(EOF_LITERAL)
    results = [m for m in replies(d) if m.get("text")]
    assert " ".join(m["text"] for m in results) == "w300 w500 w300" and len(results) > 1
    assert [w["speaker"] for m in results for w in m["result"]] == ["S1"] * 3
    assert all(m.get("speaker") == "S1" for m in results)
