"""benchmarks/soak.py for a few seconds against the in-process server with fake models: sessions come and go in all
three manners, the accounting of each is checked, the report has its slopes."""

from __future__ import annotations

import argparse
import asyncio

import numpy as np
import pytest

from benchmarks.soak import SoakSession, analyze, parse_args, soak
from tests.fakes import tone_bursts
from tests.server.conftest import run, serving


def test_a_short_soak_with_churn_accounts_for_every_session_exactly() -> None:
    audio = (tone_bursts([(300 + 40 * k, 0.5) for k in range(8)], gaps=0.6).audio * 32767).astype(np.int16)
    args = argparse.Namespace(minutes=0.12, max_concurrent=3, session_minutes=(0.03, 0.06), mean_gap=0.3, seed=3)

    async def main() -> tuple[list[SoakSession], float]:
        async with serving() as server:
            sessions = await soak(server.url, f"http://127.0.0.1:{server.port}", args, audio)
            for _ in range(100):  # the server notices an aborted TCP connection a moment later
                if server.metrics.sessions_active._value.get() == 0:
                    break
                await asyncio.sleep(0.05)
            return sessions, server.metrics.sessions_active._value.get()

    sessions, active = run(main(), timeout=120)
    assert active == 0  # aborted clients left no session behind
    assert {s.manner for s in sessions} == {"realtime", "fast", "abrupt"}
    report = analyze(sessions, [{"t": float(t), "rss_mb": 100.0 + t} for t in range(10)], 0.0, warmup_s=2.0)
    assert report["session_errors"] == [] and report["accounting_inexact"] == []
    assert report["ended_ok"] == report["ended_expected"] > 0
    assert report["accounting_exact"] == report["ended_expected"]
    assert report["finals"] > 0 and report["final_latency_s"]["n"] > 0
    assert report["rss_slope_mb_per_hour"] == pytest.approx(3600.0)


def test_accounting_flags_an_end_that_does_not_add_up() -> None:
    session = SoakSession(0, "fast", False, 16000, sent=16000)
    session.end = {"audio_seconds": 1.0, "processed_seconds": 0.5, "dropped_seconds": 0.0}
    assert session.accounting()["exact"] is False
    session.end["dropped_seconds"] = 0.5
    assert session.accounting()["exact"] is True
    assert SoakSession(1, "abrupt", False, 16000).accounting()["exact"] is None


def test_options_are_validated() -> None:
    assert parse_args(["--minutes", "2"]).minutes == 2
    with pytest.raises(SystemExit):
        parse_args(["--session-minutes", "3", "1"])
