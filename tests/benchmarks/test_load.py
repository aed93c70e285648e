"""benchmarks/load.py without a server: client plans, pooling sessions of a step and judging it."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.common import SAMPLE_RATE, StreamLog, compose
from benchmarks.load import client_plan, final_breakdown, markdown_table, parse_args, summarize_step


def _session(t0: float, latencies: list[float], done: bool = True, dropped: float = 0.0) -> StreamLog:
    """A session whose k-th final (end at 2k+2 s of audio) arrives ``latencies[k]`` after its end was sent."""
    seconds = 2 * len(latencies) + 1
    log = StreamLog(audio_samples=seconds * SAMPLE_RATE, speed=1.0, t_start=t0,
                    t_end=t0 + seconds + 1 if done else None)
    log.marks = [(b, t0 + b / SAMPLE_RATE) for b in range(1600, seconds * SAMPLE_RATE + 1, 1600)]
    for k, latency in enumerate(latencies):
        end = 2.0 * k + 2.0
        log.events.append((t0 + end + latency, {"type": "final", "utterance_id": k, "start": end - 1.5, "end": end}))
    if dropped:
        log.events.append((t0 + 1.0, {"type": "warning", "code": "audio_dropped", "message": "",
                                      "dropped_seconds": dropped}))
    return log


def test_a_step_that_keeps_up_passes() -> None:
    args = parse_args(["--streams", "2"])
    logs = [_session(100.0, [0.5, 0.6, 0.55, 0.5, 0.6] * 4), _session(100.3, [0.6, 0.5, 0.5, 0.6, 0.55] * 4)]
    step = summarize_step(2, logs, 100.0, args)
    assert step["passed"], step["why_failed"]
    assert step["completed"] == 2 and step["finals"] == 40
    assert 0.5 <= step["final_latency_s"]["p50"] <= step["final_latency_s"]["p95"] <= 0.6
    assert abs(step["lag_slope"]) < 0.005


def test_growing_lag_fails_even_under_the_latency_bound() -> None:
    args = parse_args(["--streams", "1", "--target-p95", "5"])
    step = summarize_step(1, [_session(0.0, [0.2 + 0.05 * k for k in range(30)])], 0.0, args)
    assert step["lag_slope"] == pytest.approx(0.025, abs=1e-3)  # 0.05 s more every 2 s
    assert not step["passed"] and any("lag grows" in why for why in step["why_failed"])


def test_high_latency_drops_and_incomplete_sessions_fail() -> None:
    args = parse_args(["--streams", "2"])
    slow = summarize_step(1, [_session(0.0, [1.5] * 10)], 0.0, args)
    assert not slow["passed"] and "p95 final latency 1.5 s > 1.0 s" in slow["why_failed"]
    dropped = summarize_step(1, [_session(0.0, [0.3] * 10, dropped=2.0)], 0.0, args)
    assert not dropped["passed"] and dropped["audio_dropped_s"] == 2.0
    broken = summarize_step(2, [_session(0.0, [0.3] * 10), _session(0.0, [0.3] * 3, done=False)], 0.0, args)
    assert broken["completed"] == 1 and not broken["passed"]
    assert "1 sessions did not complete" in broken["why_failed"]


def test_client_plan_spreads_offsets_and_staggers_starts() -> None:
    corpus = compose([np.ones(60 * SAMPLE_RATE, np.int16)], (1.0, 1.0), seed=0, source="test")
    plan = client_plan(corpus, 8, stagger=2.0, seed=0)
    offsets = sorted(o for o, _ in plan)
    spacing = len(corpus.audio) // 8
    assert all(b - a > spacing - SAMPLE_RATE for a, b in zip(offsets, offsets[1:]))
    assert all(0.0 <= d < 2.0 for _, d in plan) and len({d for _, d in plan}) == 8
    assert client_plan(corpus, 8, stagger=2.0, seed=0) == plan


def test_parse_args_rejects_bad_sweeps() -> None:
    assert parse_args(["--streams", "8,1,2,2"]).stream_counts == [1, 2, 8]
    with pytest.raises(SystemExit):
        parse_args(["--streams", "0,2"])


def test_markdown_table_has_one_sorted_row_per_step() -> None:
    args = parse_args(["--streams", "1,2"])
    steps = [summarize_step(n, [_session(0.0, [0.3 * n] * 5) for _ in range(n)], 0.0, args) for n in (4, 1)]
    for step in steps:
        step["server"] = {"cpu_percent_mean": 50.0}
    lines = markdown_table(steps).splitlines()
    assert len(lines) == 4 and lines[0].startswith("| streams |")
    assert lines[2].startswith("| 1 | 1 | 0.3 / 0.3 / 0.3 |") and lines[2].endswith("| yes |")
    assert lines[3].startswith("| 4 | 4 | 1.2 / 1.2 / 1.2 |") and lines[3].endswith("| no |")


def test_final_breakdown_takes_the_steps_finals_and_their_slowest_tenth() -> None:
    def trace(total: float, at: float) -> dict:
        return {"total": total, "silence": 0.4, "vad": 0.01, "asr_wait": total - 0.41, "send": 0.0, "queued": None,
                "at": at}

    traces = [trace(0.5 + i / 10, 10.0 + i) for i in range(20)] + [trace(9.0, 5.0)]  # the last: an earlier step
    out = final_breakdown(traces, 10.0, 40.0)
    assert out["n"] == 20 and out["tail_n"] == 2 and len(out["finals"]) == 20
    assert out["tail_median"]["total"] == 2.35 and out["tail_median"]["asr_wait"] == 1.94
    assert out["all_median"]["silence"] == 0.4 and out["all_median"]["queued"] is None
    assert final_breakdown(traces, 100.0, 200.0) == {}
