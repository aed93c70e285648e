"""benchmarks/long_session.py without a server: latency and RSS series against audio time, and their slopes."""

from __future__ import annotations

import pytest

from benchmarks.common import SAMPLE_RATE, StreamLog
from benchmarks.long_session import analyze_long, audio_position


def _long_log(minutes: int, speed: float, latency_growth_per_hour: float) -> StreamLog:
    """Audio paced at ``speed`` from t=50; a final every 10 s of audio whose latency grows linearly with audio time."""
    seconds = minutes * 60
    log = StreamLog(audio_samples=seconds * SAMPLE_RATE, speed=speed, t_start=50.0, t_end=50.0 + seconds / speed + 1)
    log.marks = [(b, 50.0 + b / SAMPLE_RATE / speed)
                 for b in range(SAMPLE_RATE, seconds * SAMPLE_RATE + 1, SAMPLE_RATE)]
    for k in range(1, seconds // 10):
        end = 10.0 * k
        latency = 0.4 + latency_growth_per_hour * end / 3600
        event = {"type": "final", "utterance_id": k, "start": end - 3, "end": end}
        log.events.append((50.0 + end / speed + latency, event))
    return log


def test_audio_position_follows_the_pacing() -> None:
    log = _long_log(minutes=2, speed=4.0, latency_growth_per_hour=0.0)
    assert audio_position(log, 50.0 + 10.0) == pytest.approx(40.0)  # 10 s of wall time at 4x
    assert audio_position(log, 0.0) == 0.0
    assert audio_position(log, 1e9) == pytest.approx(120.0)


def test_slopes_are_per_hour_of_audio_and_rss_skips_the_warmup() -> None:
    log = _long_log(minutes=20, speed=4.0, latency_growth_per_hour=0.6)
    # RSS: +300 MiB during the first 2 audio minutes (warm-up), then +90 MiB per audio hour
    samples = []
    for i in range(0, 301, 5):  # every 5 s of wall time = 20 s of audio
        audio_s = i * 4.0
        rss = 1000 + min(audio_s, 120) * 2.5 + max(0.0, audio_s - 120) * 90 / 3600
        samples.append({"t": 50.0 + i, "rss_mb": rss, "cpu_percent": 50.0})
    report = analyze_long(log, samples, warmup_s=120.0)
    assert report["completed"]
    assert report["final_latency_slope_s_per_hour"] == pytest.approx(0.6, rel=0.01)
    assert report["rss_slope_mb_per_hour"] == pytest.approx(90, rel=0.02)
    assert report["rss_slope_mb_per_hour_all"] > 200  # the warm-up inflates a fit over everything
    assert report["rss_mb_first"] == 1000 and report["rss_mb_max"] == pytest.approx(1300 + 90 * 18 / 60, abs=0.2)
    assert len(report["series"]["final_end_s"]) == len(report["series"]["final_latency_s"]) == 119
    assert report["server_cpu_percent_mean"] == 50.0


def test_a_flat_session_has_flat_slopes() -> None:
    log = _long_log(minutes=10, speed=2.0, latency_growth_per_hour=0.0)
    samples = [{"t": 50.0 + i, "rss_mb": 800.0, "cpu_percent": None} for i in range(0, 300, 5)]
    report = analyze_long(log, samples, warmup_s=60.0)
    assert report["final_latency_slope_s_per_hour"] == pytest.approx(0.0, abs=1e-6)
    assert report["rss_slope_mb_per_hour"] == pytest.approx(0.0, abs=1e-6)
    assert report["server_cpu_percent_mean"] is None
