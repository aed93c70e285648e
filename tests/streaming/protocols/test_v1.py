"""Protocol v1 as a sans-I/O object: every client message, error path, close code and timer decision, no socket."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from streaming.config import SessionConfig
from streaming.protocols.base import CloseCode, Limits, Phase
from streaming.protocols.v1 import V1Protocol
from tests.fakes import ProtocolDriver, pcm16, tone_bursts

START = {"type": "start", "diarization": False}
MODELS = {"asr": {"name": "fake-asr", "device": "cpu"}}


def driver(**limits: Any) -> ProtocolDriver:
    options: dict[str, Any] = {"session": SessionConfig(), "models": MODELS, "idle_timeout": 7.0,
                               "flush_timeout": 9.0, "max_message_bytes": 4096}
    options.update(limits)
    return ProtocolDriver(V1Protocol("sid-1", Limits(**options)))


def tones(*freqs: float) -> bytes:
    return pcm16(tone_bursts([(f, 0.8) for f in freqs], gaps=0.9).audio)


def test_start_opens_the_session_and_ready_carries_the_effective_config_limits_and_models() -> None:
    d = driver().text({"type": "start", "sample_rate": 8000, "encoding": "mulaw", "diarization": False})
    ready = d.sent[0]
    assert ready["type"] == "ready" and ready["session_id"] == "sid-1" and ready["models"] == MODELS
    assert ready["config"] == {"encoding": "mulaw", "sample_rate": 8000, "channels": 1, "multichannel": False,
                               "diarization": False, "max_speakers": None, "min_speakers": None,
                               "num_speakers": None, "interim_results": True, "speaker_turns": False,
                               "settled_speakers": False, "max_message_bytes": 4096, "idle_timeout": 7.0}
    assert d.protocol.phase == Phase.STREAMING and d.protocol.session.config.audio.sample_rate == 8000


def test_a_whole_stream_gives_finals_then_end_then_close_1000_and_no_speech_started() -> None:
    d = driver().text(START).audio(tones(440, 880)).text({"type": "stop"})
    assert [m["text"] for m in d.of("final")] == ["w440", "w880"]
    assert d.types[-1] == "end" and d.sent[-1]["utterances"] == 2
    assert "speech_started" not in json.dumps(d.sent) and all(t in {"ready", "partial", "final", "end"}
                                                                for t in d.types)
    assert d.close.code == CloseCode.NORMAL and d.close.error is None
    assert d.protocol.phase == Phase.CLOSING and d.protocol.work_to_run() == []


def test_finalize_closes_the_open_utterance_while_the_stream_goes_on() -> None:
    tone = (0.3 * np.sin(2 * np.pi * 600 * np.arange(16000) / 16000)).astype(np.float32)
    d = driver().text(START).audio(pcm16(tone)).text({"type": "finalize"})
    assert [m["text"] for m in d.of("final")] == ["w600"] and d.close is None


def test_keepalive_is_allowed_before_start_and_does_nothing() -> None:
    d = driver().text({"type": "keepalive"})
    assert d.sent == [] and d.close is None and d.protocol.phase == Phase.AWAITING_START


@pytest.mark.parametrize("message, code", [
    ("not json", "invalid_message"),
    ('["start"]', "invalid_message"),
    ('{"type": "hello"}', "invalid_message"),
    ('{"no_type": 1}', "invalid_message"),
    ('{"type": "start", "colour": "red"}', "invalid_message"),
    ('{"type": "start", "sample_rate": "16k"}', "invalid_message"),
    ('{"type": "start", "max_speakers": 0}', "invalid_message"),
    ('{"type": "finalize"}', "invalid_state"),
    ('{"type": "stop"}', "invalid_state"),
])
def test_bad_text_messages_get_an_error_and_close_1008(message: str, code: str) -> None:
    d = driver().text(message)
    assert d.types == ["error"] and d.sent[0]["code"] == code and d.sent[0]["message"]
    assert d.close.code == CloseCode.POLICY_VIOLATION and d.close.error == code


@pytest.mark.parametrize("messages, code", [
    ([b"\x00\x01" * 100], "invalid_audio"),
    ([{"type": "start", "encoding": "mp3"}], "unsupported_format"),
    ([{"type": "start", "sample_rate": 1000}], "unsupported_format"),
    ([{"type": "start", "channels": 9}], "unsupported_format"),
    ([{"type": "start", "encoding": "pcm_f32le"}, np.array([np.nan] * 64, "<f4").tobytes()], "invalid_audio"),
])
def test_bad_audio_gets_an_error_and_close_1003(messages: list[Any], code: str) -> None:
    d = driver()
    for message in messages:
        d.audio(message) if isinstance(message, bytes) else d.text(message)
    assert d.types[-1] == "error" and d.sent[-1]["code"] == code
    assert d.close.code == CloseCode.UNSUPPORTED_DATA
    assert "ready" not in d.types or messages[0].get("encoding") == "pcm_f32le"


def test_a_second_start_is_invalid_state_and_a_second_stop_is_harmless() -> None:
    assert driver().text(START).text(START).types == ["ready", "error"]
    d = driver().text(START)
    d.held = True  # the finals cannot flush: the stream is still ENDING when the second stop comes
    d.audio(tones(440)).text({"type": "stop"}).text({"type": "stop"})
    assert "error" not in d.types
    d.release()
    assert d.types[-2:] == ["final", "end"] and d.of("final")[0]["text"] == "w440"  # the pending final is not lost
    assert d.close.code == CloseCode.NORMAL


def test_audio_after_stop_is_invalid_state() -> None:
    d = driver().text(START)
    d.held = True
    d.audio(tones(440)).text({"type": "stop"}).audio(b"\0\0")
    assert d.sent[-1]["code"] == "invalid_state" and d.close.code == CloseCode.POLICY_VIOLATION


def test_the_idle_timeout_is_the_servers_until_the_end_then_flushes_and_closes_1001() -> None:
    d = driver(idle_timeout=3.5).text(START)
    assert d.protocol.idle_timeout == 3.5
    tone = (0.3 * np.sin(2 * np.pi * 750 * np.arange(12000) / 16000)).astype(np.float32)
    d.held = True
    d.audio(pcm16(tone))
    d.protocol.timeout_idle()
    assert d.protocol.idle_timeout is None and d.protocol.flush_timeout == 9.0  # flushing: no idle limit
    d.text({"type": "stop"})  # a late client message after a server-initiated end is ignored
    d.release()
    assert [m["text"] for m in d.of("final")] == ["w750"] and d.types[-1] == "end"
    assert (d.close.code, d.close.reason) == (CloseCode.GOING_AWAY, "idle timeout")


def test_a_connection_that_never_starts_is_closed_1001_at_the_idle_timeout() -> None:
    d = driver()
    d.protocol.timeout_idle()
    d.settle()
    assert d.sent == [] and d.close.code == CloseCode.GOING_AWAY


def test_a_drain_during_a_stop_keeps_the_finals_but_closes_1001() -> None:
    d = driver().text(START)
    d.held = True
    d.audio(tones(440)).text({"type": "stop"})
    d.protocol.begin_drain()
    d.release()
    assert d.types[-1] == "end" and (d.close.code, d.close.reason) == (CloseCode.GOING_AWAY, "server shutting down")


def test_finals_not_flushed_in_time_close_1013_and_results_after_the_close_are_ignored() -> None:
    d = driver().text(START)
    d.held = True
    d.audio(tones(440)).text({"type": "stop"})
    d.protocol.timeout_flush()
    d.settle()
    assert d.sent[-1]["code"] == "overloaded" and d.close.code == CloseCode.TRY_AGAIN_LATER
    sent = len(d.sent)
    d.release()  # the held model work answers after the close: nothing more goes out
    assert len(d.sent) == sent and d.protocol.work_to_run() == []


def test_an_internal_failure_says_nothing_of_the_internals_and_closes_1011() -> None:
    d = driver().text(START)
    d.protocol.fail_internal()
    d.settle()
    assert d.sent[-1] == {"type": "error", "code": "internal",
                          "message": "internal server error; the stream was closed"}
    assert d.close.code == CloseCode.INTERNAL_ERROR


def test_overload_warnings_go_out_only_while_streaming() -> None:
    d = driver().text(START)
    d.protocol.warn_overloaded(6.0)
    d.settle()
    assert d.sent[-1]["code"] == "overloaded" and "6.0 s behind" in d.sent[-1]["message"]


def test_a_close_reason_fits_a_close_frame_even_with_cyrillic() -> None:
    d = driver()
    d.protocol._fail("invalid_message", "слово " * 60, CloseCode.POLICY_VIOLATION)
    reason = d.close.reason
    assert len(reason.encode()) <= 123 and reason and "слово" in reason


def test_speaker_count_hints_reach_the_tracker_and_bad_ones_close_1008() -> None:
    d = driver().text({"type": "start", "min_speakers": 2, "max_speakers": 3})
    assert d.sent[0]["config"]["min_speakers"] == 2
    options = d.protocol.session.config.diarizer
    assert (options.min_speakers, options.max_speakers) == (2, 3)
    exact = driver().text({"type": "start", "num_speakers": 4}).protocol.session.config.diarizer
    assert (exact.min_speakers, exact.max_speakers) == (4, 4)
    bad = driver().text({"type": "start", "num_speakers": 2, "min_speakers": 3})
    assert bad.sent[0]["type"] == "error" and bad.sent[0]["code"] == "invalid_message"
    assert "contradicts" in bad.sent[0]["message"] and bad.close.code == CloseCode.POLICY_VIOLATION


def test_a_speaker_merge_is_sent_and_nothing_after_it_carries_the_retired_label() -> None:
    import dataclasses

    from streaming.config import DiarizationOptions
    from tests.fakes_diarization import (SPREAD_MERGE, SPREAD_VOICE, SPREAD_VOICE_LENGTH, spread_voice_session_run,
                                         synthesize)

    options = dataclasses.replace(DiarizationOptions(), **SPREAD_MERGE)
    d = ProtocolDriver(V1Protocol("sid-1", Limits(session=SessionConfig(diarizer=options), models=MODELS)),
                       spread_voice_session_run())
    d.text({"type": "start", "speaker_turns": True, "interim_results": False})
    d.audio(pcm16(synthesize(SPREAD_VOICE, SPREAD_VOICE_LENGTH)), chunk=8000).text({"type": "stop"})
    (merge,) = d.of("speaker_merge")
    assert (merge["channel"], merge["from"], merge["into"]) == (0, "S2", "S1") and 12.0 < merge["at"] < 25.0
    cut = d.sent.index(merge)
    assert "S2" in json.dumps(d.sent[:cut]) and "S2" not in json.dumps(d.sent[cut + 1:])
    assert d.of("end")[0]["speakers"] == ["S1"] and d.close.code == CloseCode.NORMAL
