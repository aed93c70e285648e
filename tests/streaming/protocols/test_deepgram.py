"""Deepgram's live API as a sans-I/O object: query parameters, every client message, every server message's fields."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import numpy as np
import pytest

from streaming.config import SessionConfig, ms
from streaming.protocols.base import CloseCode, Limits
from streaming.protocols.deepgram import (DeepgramOptions, DeepgramProtocol, InvalidQuery, error_body, parse_query,
                                          speaker_number)
from tests.fakes import ProtocolDriver, pcm16, stereo_tones, tone_bursts

MODELS = {"asr": {"name": "fake-asr", "checkpoint": "/m/tiny.ckpt", "head": "ctc"}}
SID = "0f8b7a52-6a5e-4f57-9d36-0ad2b1a1c0de"


def options(query: str) -> DeepgramOptions:
    return parse_query(parse_qs(query))


def driver(query: str = "encoding=linear16&sample_rate=16000", **limits: Any) -> ProtocolDriver:
    settings: dict[str, Any] = {"session": SessionConfig(), "models": MODELS}
    settings.update(limits)
    return ProtocolDriver(DeepgramProtocol(SID, Limits(**settings), options(query), "2026-12-01T09:00:00.000Z"))


def tones(*freqs: float, gap: float = 0.9) -> bytes:
    return pcm16(tone_bursts([(f, 0.8) for f in freqs], gaps=gap).audio)


# --------------------------------------------------------------------------------------------- query
def test_the_query_livekit_sends_is_accepted_and_maps_to_the_session() -> None:
    query = ("model=nova-3&punctuate=true&smart_format=false&no_delay=true&interim_results=true&encoding=linear16"
             "&vad_events=true&sample_rate=24000&channels=1&endpointing=25&filler_words=true&profanity_filter=false"
             "&numerals=false&mip_opt_out=false&diarize=true&language=ru&keyterm=a&keyterm=b&utterance_end_ms=1000")
    got = options(query)
    assert (got.encoding, got.sample_rate, got.channels, got.interim_results, got.diarize, got.vad_events) == \
        ("linear16", 24000, 1, True, True, True)
    assert got.endpointing == 200 and got.utterance_end_ms == 1000  # 25 ms is raised to the 200 ms floor
    config = got.session_config(SessionConfig())
    assert config.audio.encoding == "pcm_s16le" and config.audio.sample_rate == 24000
    assert config.diarization and config.interim_results and config.vad.min_silence == ms(200)
    assert config.settled_speakers  # Deepgram has no revisions: a final's speakers are the settled ones


@pytest.mark.parametrize("query, field", [
    ("encoding=mulaw&sample_rate=8000&channels=2&multichannel=true", "multichannel"),
    ("encoding=alaw&sample_rate=8000&diarize_model=latest", "diarize"),
    ("encoding=linear16&endpointing=false", "speech_final"),
    ("encoding=linear16&endpointing=800", "endpointing"),
])
def test_deepgram_options_change_what_rechka_does(query: str, field: str) -> None:
    got = options(query)
    expected = {"multichannel": True, "diarize": True, "speech_final": False, "endpointing": 800}[field]
    assert getattr(got, field) == expected


@pytest.mark.parametrize("query, words", [
    ("sample_rate=16000", "encoding"),
    ("encoding=opus", "linear16, mulaw or alaw"),
    ("encoding=linear32&sample_rate=16000", "linear16, mulaw or alaw"),
    ("encoding=linear16&sample_rate=4000", "sample_rate"),
    ("encoding=linear16&channels=9", "channels"),
    ("encoding=linear16&interim_results=yes", "true or false"),
    ("encoding=linear16&language=en-US", "language=ru"),
    ("encoding=linear16&diarize_model=v2", "diarize_model"),
    ("encoding=linear16&redact=pci", "redact"),
    ("encoding=linear16&callback=https://x", "callback"),
    ("encoding=linear16&utterance_end_ms=300", "utterance_end_ms"),
    ("encoding=linear16&endpointing=soon", "endpointing"),
])
def test_values_rechka_cannot_honour_are_refused_naming_the_fix(query: str, words: str) -> None:
    with pytest.raises(InvalidQuery, match=words):
        options(query)


def test_the_error_body_has_deepgrams_shape() -> None:
    assert error_body("bad", "r1") == {"err_code": "Bad Request", "err_msg": "bad", "request_id": "r1"}


# --------------------------------------------------------------------------------------------- messages
def test_final_results_carry_every_field_the_sdk_reads_and_end_with_metadata_and_close_1000() -> None:
    d = driver("encoding=linear16&sample_rate=16000&diarize=true").audio(tones(440, 880))
    d.text({"type": "CloseStream"})
    finals = [m for m in d.of("Results") if m["is_final"]]
    assert [f["channel"]["alternatives"][0]["transcript"] for f in finals] == ["w440", "w880"]
    first = finals[0]
    assert first["channel_index"] == [0, 1] and first["speech_final"] is True and first["from_finalize"] is False
    assert first["start"] > 0 and first["duration"] > 0.5
    alternative = first["channel"]["alternatives"][0]
    assert alternative["confidence"] == 1.0
    word = alternative["words"][0]
    assert set(word) == {"word", "start", "end", "confidence", "punctuated_word", "speaker"}
    assert word["word"] == word["punctuated_word"] == "w440" and isinstance(word["speaker"], int)
    assert first["start"] <= word["start"] < word["end"] <= first["start"] + first["duration"] + 0.001
    assert first["metadata"]["request_id"] == SID and first["metadata"]["model_info"]["name"] == "fake-asr"
    assert set(first["metadata"]) == {"request_id", "model_info", "model_uuid"}
    metadata = d.sent[-1]
    assert metadata["type"] == "Metadata" and metadata["request_id"] == SID and metadata["channels"] == 1
    assert metadata["created"] == "2026-12-01T09:00:00.000Z" and len(metadata["sha256"]) == 64
    assert metadata["duration"] == pytest.approx(len(tones(440, 880)) / 32000, abs=0.01)
    assert d.close.code == CloseCode.NORMAL


def test_interim_results_only_when_asked_and_never_final() -> None:
    slow = driver().audio(tones(500), chunk=1600)
    assert not [m for m in slow.of("Results") if not m["is_final"]]
    fast = driver("encoding=linear16&interim_results=true").audio(tones(500), chunk=1600)
    interims = [m for m in fast.of("Results") if not m["is_final"]]
    assert interims and all(m["speech_final"] is False and m["channel"]["alternatives"][0]["words"] == []
                            for m in interims)


def test_finalize_marks_the_next_final_and_an_empty_finalize_is_answered_too() -> None:
    tone = pcm16((0.3 * np.sin(2 * np.pi * 600 * np.arange(16000) / 16000)).astype(np.float32))
    d = driver().audio(tone).text({"type": "Finalize"})
    final = d.of("Results")[-1]
    assert final["is_final"] and final["from_finalize"] is True and final["speech_final"] is False
    assert final["channel"]["alternatives"][0]["transcript"] == "w600" and d.close is None
    d.audio(pcm16(np.zeros(8000, np.float32))).text({"type": "Finalize"})  # silence: nothing to finalize
    empty = d.of("Results")[-1]
    assert empty["from_finalize"] is True and empty["channel"]["alternatives"][0]["transcript"] == ""
    d.audio(tones(700)).text({"type": "CloseStream"})
    assert [m["from_finalize"] for m in d.of("Results")][-1] is False  # later finals are ordinary again


def test_a_final_the_vad_ended_before_a_finalize_is_not_from_finalize() -> None:
    d = driver()
    d.held = True  # the final of the ended tone is still being decoded when the Finalize comes (LiveKit's flush)
    d.audio(tones(440)).text({"type": "Finalize"})
    d.release()
    final, answer = d.of("Results")[-2:]
    assert final["channel"]["alternatives"][0]["transcript"] == "w440" and final["from_finalize"] is False
    assert final["speech_final"] is True
    assert answer["from_finalize"] is True and answer["channel"]["alternatives"][0]["transcript"] == ""


def test_speech_started_and_utterance_end_when_asked() -> None:
    d = driver("encoding=linear16&vad_events=true&interim_results=true&utterance_end_ms=1000")
    d.audio(tones(440, 880, gap=1.5)).text({"type": "CloseStream"})
    started = d.of("SpeechStarted")
    assert len(started) == 2 and all(m["channel"] == [0, 1] for m in started)
    ends = d.of("UtteranceEnd")
    finals = [m for m in d.of("Results") if m["is_final"]]
    assert [e["last_word_end"] for e in ends] == [f["channel"]["alternatives"][0]["words"][-1]["end"] for f in finals]
    assert d.types.index("UtteranceEnd") > d.types.index("Results")
    quiet = driver().audio(tones(440)).text({"type": "CloseStream"})
    assert not quiet.of("SpeechStarted") and not quiet.of("UtteranceEnd")


def test_an_utterance_end_waits_for_the_gap_and_a_short_gap_gives_none() -> None:
    d = driver("encoding=linear16&interim_results=true&utterance_end_ms=2000")
    d.audio(tones(440, 880, gap=1.0)).text({"type": "CloseStream"})
    assert [e["last_word_end"] for e in d.of("UtteranceEnd")] == \
        [[m for m in d.of("Results") if m["is_final"]][-1]["channel"]["alternatives"][0]["words"][-1]["end"]]


def test_multichannel_results_carry_their_channel_and_no_speaker() -> None:
    pcm = stereo_tones()
    d = driver("encoding=linear16&channels=2&multichannel=true").audio(pcm)
    d.text({"type": "CloseStream"})
    by_channel = {tuple(m["channel_index"]): m["channel"]["alternatives"][0] for m in d.of("Results")}
    assert set(by_channel) == {(0, 2), (1, 2)}
    assert by_channel[(0, 2)]["transcript"] == "w400" and "speaker" not in by_channel[(0, 2)]["words"][0]


def test_keepalive_does_nothing_an_empty_binary_message_ends_and_bad_text_is_a_schema_error() -> None:
    d = driver().audio(tones(440)).text({"type": "KeepAlive"})
    assert d.close is None
    d.text("nonsense")
    assert d.sent[-1]["type"] == "Error" and d.sent[-1]["variant"] == "SchemaError" and d.close is None
    d.protocol.receive_bytes(b"")
    d.settle()
    assert d.sent[-1]["type"] == "Metadata" and d.close.code == CloseCode.NORMAL


def test_ten_seconds_without_audio_or_keepalive_close_1011_net_0001_after_the_finals() -> None:
    assert driver().protocol.idle_timeout == 10.0
    d = driver(idle_timeout=3.0)
    assert d.protocol.idle_timeout == 3.0  # a shorter server idle timeout wins
    d.audio(tones(440))
    d.protocol.timeout_idle()
    d.settle()
    assert d.close.code == CloseCode.INTERNAL_ERROR and d.close.reason.startswith("NET-0001")
    assert d.of("Results")[-1]["channel"]["alternatives"][0]["transcript"] == "w440"


def test_undecodable_audio_and_server_failures_are_errors_with_deepgrams_close_codes() -> None:
    d = driver()
    d.protocol.fail_internal()
    d.settle()
    assert d.sent[-1]["type"] == "Error" and d.close.code == CloseCode.INTERNAL_ERROR
    d = driver().audio(tones(440)).text({"type": "CloseStream"})
    assert d.close.code == CloseCode.NORMAL
    d = driver()
    d.held = True
    d.audio(tones(440)).text({"type": "CloseStream"}).audio(b"\0\0")  # audio after CloseStream
    assert d.sent[-1]["type"] == "Error" and d.close.code == CloseCode.POLICY_VIOLATION


def test_speaker_labels_become_deepgram_integers() -> None:
    assert [speaker_number(s) for s in ("S1", "S2", "S12", None, "ch0")] == [0, 1, 11, 0, 0]


def test_two_speakers_get_deepgram_speakers_0_and_1_on_every_word() -> None:
    pcm = pcm16(tone_bursts([(300, 2.0), (700, 2.0)], gaps=0.9).audio)  # the fake diarization: one voice per tone
    d = driver("encoding=linear16&diarize=true").audio(pcm)
    d.text({"type": "CloseStream"})
    finals = [m["channel"]["alternatives"][0] for m in d.of("Results") if m["is_final"]]
    assert [f["transcript"] for f in finals] == ["w300", "w700"]
    assert [[w["speaker"] for w in f["words"]] for f in finals] == [[0], [1]]


def test_a_speaker_merge_has_no_deepgram_message_and_results_already_sent_keep_their_speaker() -> None:
    import dataclasses

    from streaming.config import DiarizationOptions
    from tests.fakes_diarization import (SPREAD_MERGE, SPREAD_VOICE, SPREAD_VOICE_LENGTH, spread_voice_session_run,
                                         synthesize)

    session = SessionConfig(diarizer=dataclasses.replace(DiarizationOptions(), **SPREAD_MERGE))
    d = ProtocolDriver(DeepgramProtocol(SID, Limits(session=session, models=MODELS),
                                        options("encoding=linear16&diarize=true"), "2026-12-01T09:00:00.000Z"),
                       spread_voice_session_run())
    d.audio(pcm16(synthesize(SPREAD_VOICE, SPREAD_VOICE_LENGTH)), chunk=8000).text({"type": "CloseStream"})
    assert set(d.types) <= {"Results", "Metadata"}  # the merge was dropped
    finals = [m["channel"]["alternatives"][0] for m in d.of("Results") if m["is_final"]]
    assert [f["transcript"] for f in finals] == ["w300", "w500", "w300"]
    assert [[w["speaker"] for w in f["words"]] for f in finals] == [[0], [1], [0]]  # S2 (1) went out before it
