"""Backpressure, not loss (issue #13): a client faster than real time is slowed by not reading its socket; a client
at real-time pace whose server fell behind loses its oldest audio, reported exactly, with bounded lag."""

from __future__ import annotations

import dataclasses
import time

import pytest

from server.backpressure import ClientPace, ReadGate
from streaming.config import SessionConfig, ms
from tests.fakes import pcm16, tone_bursts
from tests.server.conftest import Received, http_get, metric_value, run, serving, stream
from tests.server.fake_models import fake_models


def test_client_pace_marks_a_client_ahead_of_the_wall_clock_for_good() -> None:
    pace = ClientPace(margin=2.0)
    assert not pace.note(0.1, 100.0) and not pace.note(5.0, 103.5)  # 1.5 s ahead: jitter
    assert pace.note(8.0, 105.0)  # 3 s ahead: a file
    assert pace.note(8.1, 200.0)  # stays unpaced
    with pytest.raises(ValueError, match="margin"):
        ClientPace(-1)


def test_read_gate_reports_new_pauses_only() -> None:
    gate = ReadGate()
    assert gate.is_open and gate.set(False) and not gate.set(False) and not gate.is_open
    assert not gate.set(True) and gate.is_open and gate.pauses == 1


def test_a_15_minute_file_at_full_speed_arrives_whole() -> None:
    tones = [(300 + 10 * (k % 40), 0.8) for k in range(530)]
    b = tone_bursts(tones, gaps=0.9, tail=0.5)
    duration = len(b.audio) / 16000
    assert duration >= 15 * 60
    session = dataclasses.replace(SessionConfig(diarization=False), max_pending_audio=ms(5_000))

    async def main() -> tuple[Received, str]:
        # a slowish VAD: the file outruns it, so the bound is reached again and again
        async with serving(fake_models(delay=0.01), session=session, overload_lag=3600.0) as server:
            got = await stream(server.url, pcm16(b.audio), start={"diarization": False, "interim_results": False},
                               chunk=32_000)
            metrics = (await http_get(server.port, "/metrics")).body.decode()
            return got, metrics

    got, metrics = run(main(), timeout=300)
    assert got.close_code == 1000 and got.types[-1] == "end"
    (end,) = got.of("end")
    assert end["audio_seconds"] == pytest.approx(duration, abs=0.001)
    assert end["dropped_seconds"] == 0 and end["processed_seconds"] == end["audio_seconds"]
    assert [w["code"] for w in got.of("warning") if w["code"] in ("audio_dropped", "utterance_truncated")] == []
    assert [f["text"] for f in got.of("final")] == list(b.words)  # every tone transcribed
    assert metric_value(metrics, "rechka_read_pauses_total") >= 5  # the socket was held back, repeatedly
    assert metric_value(metrics, "rechka_audio_dropped_seconds_total") == 0


def test_a_real_time_client_on_an_overloaded_server_gets_bounded_lag_with_the_drop_reported() -> None:
    b = tone_bursts([(440, 0.6)] * 5, gaps=0.4, tail=0.4)
    session = dataclasses.replace(SessionConfig(diarization=False), max_pending_audio=ms(1_000))

    async def main() -> tuple[Received, float, str]:
        # every model call takes 1.5 s: the server processes about 0.7 s of this stream per second
        async with serving(fake_models(delay=1.5), session=session, overload_lag=0.5) as server:
            began = time.monotonic()
            got = await stream(server.url, pcm16(b.audio), start={"diarization": False, "interim_results": False},
                               chunk=3200, pace=0.1)
            metrics = (await http_get(server.port, "/metrics")).body.decode()
            return got, time.monotonic() - began, metrics

    got, took, metrics = run(main(), timeout=60)
    assert got.close_code == 1000 and got.types[-1] == "end"
    (end,) = got.of("end")
    audio = len(b.audio) / 16000
    reported = sum(w["dropped_seconds"] for w in got.of("warning") if w["code"] == "audio_dropped")
    assert end["audio_seconds"] == pytest.approx(audio, abs=0.001)
    assert end["dropped_seconds"] > 0 and reported == pytest.approx(end["dropped_seconds"], abs=0.002)
    assert end["processed_seconds"] + end["dropped_seconds"] == pytest.approx(end["audio_seconds"], abs=0.002)
    assert metric_value(metrics, "rechka_read_pauses_total") == 0  # a live client is never held back
    assert metric_value(metrics, "rechka_audio_dropped_seconds_total") == pytest.approx(reported, abs=0.002)
    received = metric_value(metrics, "rechka_audio_received_seconds_total")
    processed = metric_value(metrics, "rechka_audio_processed_seconds_total")
    assert received == pytest.approx(audio, abs=0.001)
    assert processed == pytest.approx(end["processed_seconds"], abs=0.002)  # dropped audio is not "processed"
    assert processed + metric_value(metrics, "rechka_audio_dropped_seconds_total") == pytest.approx(received,
                                                                                                   abs=0.003)
    # bounded lag: the stream ends within the pending bound plus a few model calls after real time
    assert took < audio + 1.0 + 4 * 1.5 + 2.0
