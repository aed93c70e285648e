"""Soak: an hour of sessions arriving and leaving on one server, several at once, some rude.

    python -m benchmarks.soak                       # 60 min, up to 3 sessions at once, tiny GigaAM on CPU
    python -m benchmarks.soak --minutes 5 --max-concurrent 2
    python -m benchmarks.soak --url ws://host:8000/v1/stream --server-pid 1234

Sessions arrive at random (exponential gaps, ``--mean-gap`` seconds) while fewer than ``--max-concurrent`` run;
each streams 1-5 minutes (``--session-minutes``) of looped real speech in one of three manners: ``realtime``
(paced at 1x), ``fast`` (unpaced: the server's backpressure sets the pace) or ``abrupt`` (1x, then the TCP
connection is aborted at a random point without ``stop``). Diarization is on for about half of them.

Reports: server RSS over time and its slope (MiB per hour, after ``--warmup-minutes``), final latency of the
real-time sessions (arrival of the final minus when its last audio was sent) and its slope (s per hour), whether
``rechka_sessions_active`` went back to 0, ERROR lines and tracebacks in the server log, and per-session
accounting: for every session that ended, ``end.audio_seconds`` equals the audio sent and processed + dropped equals
received. Prints JSON (also ``benchmarks/out/soak-<time>.json``) and draws a PNG. Exit status 0 when all checks pass.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

if __package__ in (None, ""):  # run as a file: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import (OUT_DIR, REPO_ROOT, SAMPLE_RATE, command_line, linear_fit, plot_panels,
                               speech_corpus, summarize, write_result)
from benchmarks.server_process import ResourceSampler, connect_or_start, machine_info, scrape

TINY_ASR = REPO_ROOT / "tests" / "assets" / "tiny_gigaam_ctc.ckpt"
MANNERS = ("realtime", "fast", "abrupt")
ACCOUNTING_TOLERANCE = 0.0015  # seconds: three values each rounded to 1 ms on the wire


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=60.0, help="how long sessions keep arriving (default 60)")
    p.add_argument("--max-concurrent", type=int, default=3, help="sessions open at once at most (default 3)")
    p.add_argument("--session-minutes", type=float, nargs=2, default=(1.0, 5.0), metavar=("MIN", "MAX"),
                   help="audio per session, uniform (default 1 5)")
    p.add_argument("--mean-gap", type=float, default=15.0, help="mean seconds between arrivals (default 15)")
    p.add_argument("--url", help="connect to this running server instead of starting one")
    p.add_argument("--server-pid", type=int, help="pid of the --url server for RSS (default: found by port)")
    p.add_argument("--asr-model", default=str(TINY_ASR), help="--asr-model of the started server (tiny GigaAM)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG", help="extra server argument (repeat)")
    p.add_argument("--speech-dir", type=Path, help="recordings (default shared/speech; espeak-ng without)")
    p.add_argument("--warmup-minutes", type=float, default=5.0, help="RSS slope fitted after this (default 5)")
    p.add_argument("--sample-every", type=float, default=5.0, help="RSS sampling interval, seconds (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = p.parse_args(argv)
    lo, hi = args.session_minutes
    if not 0 < lo <= hi:
        p.error("--session-minutes MIN MAX needs 0 < MIN <= MAX")
    if args.minutes <= 0 or args.max_concurrent < 1 or args.mean_gap <= 0:
        p.error("--minutes, --max-concurrent and --mean-gap must be positive")
    return args


@dataclass
class SoakSession:
    """One session of the soak and what its client saw."""

    index: int
    manner: str
    diarization: bool
    samples: int  # audio it was to send
    abort_at: Optional[int] = None  # abrupt: sample at which the connection is aborted
    started: float = 0.0
    finished: float = 0.0
    sent: int = 0
    marks: list[tuple[int, float]] = field(default_factory=list)  # (samples sent so far, when)
    finals: list[tuple[float, float]] = field(default_factory=list)  # (final end in seconds, arrival time)
    warnings: dict[str, float] = field(default_factory=dict)  # code -> count
    end: Optional[dict[str, Any]] = None
    close_code: Optional[int] = None
    error: Optional[str] = None

    def latencies(self) -> list[tuple[float, float]]:
        """(arrival time, latency) of each final whose last audio was sent at real-time pace."""
        if self.manner == "fast" or not self.marks:
            return []
        ends = np.array([m[0] for m in self.marks], dtype=np.int64)
        out = []
        for end_s, arrived in self.finals:
            i = int(np.searchsorted(ends, max(1, round(end_s * SAMPLE_RATE)), side="left"))
            if i < len(ends):
                out.append((arrived, arrived - self.marks[i][1]))
        return out

    def accounting(self) -> dict[str, Any]:
        """Whether the ``end`` event accounts for exactly the audio sent (None for aborted sessions)."""
        if self.manner == "abrupt":
            return {"exact": None}
        end = self.end or {}
        audio, processed, dropped = (end.get(k) for k in ("audio_seconds", "processed_seconds", "dropped_seconds"))
        if audio is None or processed is None or dropped is None:
            return {"exact": False, "why": "no end event with processed/dropped seconds"}
        sent_s = self.sent / SAMPLE_RATE
        exact = (abs(audio - sent_s) <= ACCOUNTING_TOLERANCE
                 and abs(processed + dropped - audio) <= ACCOUNTING_TOLERANCE)
        return {"exact": exact, "sent_s": round(sent_s, 3), "audio_s": audio, "processed_s": processed,
                "dropped_s": dropped}


async def run_session(url: str, session: SoakSession, audio: np.ndarray, chunk: int = 1600) -> None:
    """Stream ``audio`` as the session's manner says; everything seen goes into ``session``."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, WebSocketException

    pcm = np.ascontiguousarray(audio, dtype="<i2").tobytes()
    session.started = time.monotonic()

    async def receive(ws: Any) -> None:
        try:
            async for message in ws:
                event = json.loads(message)
                kind = event.get("type")
                if kind == "final":
                    session.finals.append((float(event["end"]), time.monotonic()))
                elif kind == "warning":
                    session.warnings[event["code"]] = session.warnings.get(event["code"], 0) + 1
                elif kind == "end":
                    session.end = event
                elif kind == "error":
                    session.error = f"{event.get('code')}: {event.get('message')}"
        except ConnectionClosed:
            pass

    try:
        async with connect(url, open_timeout=30, max_size=None, ping_interval=None) as ws:
            await ws.send(json.dumps({"type": "start", "diarization": session.diarization}))
            receiver = asyncio.create_task(receive(ws))
            t0 = time.monotonic()
            for a in range(0, len(audio), chunk):
                b = min(len(audio), a + chunk)
                if session.manner != "fast":
                    delay = t0 + b / SAMPLE_RATE - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                if session.abort_at is not None and b >= session.abort_at:
                    ws.transport.abort()  # the client vanishes: no stop, no close handshake
                    break
                await ws.send(pcm[2 * a:2 * b])
                session.sent = b
                session.marks.append((b, time.monotonic()))
            else:
                await ws.send(json.dumps({"type": "stop"}))
            await asyncio.wait_for(receiver, 600)
            session.close_code = ws.close_code
    except (OSError, WebSocketException, asyncio.TimeoutError) as exc:
        if session.manner != "abrupt":
            session.error = session.error or f"{type(exc).__name__}: {exc}"
    session.finished = time.monotonic()


async def soak(url: str, http_base: str, args: argparse.Namespace, corpus_audio: np.ndarray) -> list[SoakSession]:
    """Start sessions at random until ``--minutes`` have passed; wait for the last ones."""
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.minutes * 60
    sessions: list[SoakSession] = []
    running: set[asyncio.Task[None]] = set()
    offset = 0
    while time.monotonic() < deadline:
        if len(running) < args.max_concurrent:
            minutes = rng.uniform(*args.session_minutes)
            samples = int(minutes * 60 * SAMPLE_RATE)
            manner = rng.choice(MANNERS)
            session = SoakSession(len(sessions), manner, rng.random() < 0.5, samples)
            if manner == "abrupt":
                session.abort_at = int(samples * rng.uniform(0.2, 0.8))
            audio = corpus_audio[np.arange(offset, offset + samples) % len(corpus_audio)]
            offset += samples
            sessions.append(session)
            task = asyncio.create_task(run_session(url, session, audio))
            running.add(task)
            task.add_done_callback(running.discard)
            print(f"[soak] {time.strftime('%H:%M:%S')} session {session.index}: {manner}, {minutes:.1f} min, "
                  f"diarization {session.diarization}; {len(running)} open", file=sys.stderr, flush=True)
        gap = rng.expovariate(1.0 / args.mean_gap)
        await asyncio.sleep(min(gap, max(0.0, deadline - time.monotonic())))
        if running and len(running) >= args.max_concurrent:
            await asyncio.wait(running, timeout=max(0.1, deadline - time.monotonic()),
                               return_when=asyncio.FIRST_COMPLETED)
    if running:
        await asyncio.wait(running)
    return sessions


def sessions_back_to_zero(http_base: str, timeout: float = 30.0) -> Optional[float]:
    """``rechka_sessions_active`` once it reads 0 (polling up to ``timeout``), else its last value."""
    value: Optional[float] = None
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        value = scrape(http_base).get(("rechka_sessions_active", ()))
        if value == 0:
            return 0.0
        time.sleep(0.5)
    return value


def log_errors(log_path: Optional[Path]) -> dict[str, Any]:
    """ERROR lines and tracebacks in the server log (the first few quoted)."""
    if log_path is None or not log_path.is_file():
        return {"checked": False}
    lines = log_path.read_text(errors="replace").splitlines()
    bad = [line for line in lines if " ERROR " in line or "Traceback" in line or "CRITICAL" in line]
    return {"checked": True, "count": len(bad), "first": bad[:5]}


def per_hour(fit: Optional[tuple[float, float]]) -> Optional[float]:
    return round(fit[0] * 3600, 3) if fit else None


def analyze(sessions: Sequence[SoakSession], rss: Sequence[dict[str, Any]], t0: float,
            warmup_s: float) -> dict[str, Any]:
    """Slopes, latency summary and per-session accounting of a finished soak (times relative to ``t0``)."""
    latencies = sorted((t - t0, lat) for s in sessions for t, lat in s.latencies())
    rss_points = [(r["t"] - t0, r["rss_mb"]) for r in rss if r.get("rss_mb") is not None]
    late = [(t, v) for t, v in rss_points if t >= warmup_s] or rss_points
    accounting = [s.accounting() for s in sessions]
    ended = [s for s in sessions if s.manner != "abrupt"]
    return {
        "sessions": len(sessions),
        "by_manner": {m: sum(1 for s in sessions if s.manner == m) for m in MANNERS},
        "ended_ok": sum(1 for s in ended if s.close_code == 1000 and s.end is not None),
        "ended_expected": len(ended),
        "session_errors": [f"{s.index} ({s.manner}): {s.error}" for s in sessions if s.error],
        "close_codes": sorted({str(s.close_code) for s in ended}),
        "accounting_exact": sum(1 for a in accounting if a["exact"] is True),
        "accounting_inexact": [dict(a, session=s.index) for s, a in zip(sessions, accounting) if a["exact"] is False],
        "audio_dropped_warnings": sum(s.warnings.get("audio_dropped", 0) for s in sessions),
        "dropped_seconds_fast": round(sum((s.end or {}).get("dropped_seconds", 0.0) for s in sessions
                                          if s.manner == "fast"), 3),
        "audio_minutes_sent": round(sum(s.sent for s in sessions) / SAMPLE_RATE / 60, 1),
        "finals": sum(len(s.finals) for s in sessions),
        "final_latency_s": summarize([lat for _, lat in latencies]),
        "final_latency_slope_s_per_hour": per_hour(linear_fit([t for t, _ in latencies],
                                                              [lat for _, lat in latencies])),
        "rss_mb_first": rss_points[0][1] if rss_points else None,
        "rss_mb_last": rss_points[-1][1] if rss_points else None,
        "rss_mb_max": max((v for _, v in rss_points), default=None),
        "rss_slope_mb_per_hour": per_hour(linear_fit([t for t, _ in late], [v for _, v in late])),
        "series": {"latency_t_s": [round(t, 1) for t, _ in latencies],
                   "latency_s": [round(v, 3) for _, v in latencies],
                   "rss_t_s": [round(t, 1) for t, _ in rss_points], "rss_mb": [round(v, 1) for _, v in rss_points]},
    }


def plot(report: dict[str, Any], path: Path, title: str) -> Path:
    s = report["series"]
    return plot_panels(path, title, [
        {"x": [t / 60 for t in s["rss_t_s"]], "series": {"server RSS": s["rss_mb"]}, "xlabel": "minutes",
         "ylabel": "MiB", "marker": ""},
        {"x": [t / 60 for t in s["latency_t_s"]], "series": {"final latency (real-time sessions)": s["latency_s"]},
         "xlabel": "minutes", "ylabel": "seconds", "marker": "."},
    ])


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    corpus = speech_corpus(args.speech_dir, seed=args.seed)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    server_args = ["--asr-model", args.asr_model, "--max-sessions", str(args.max_concurrent + 2), *args.server_arg]
    result: dict[str, Any] = {"benchmark": "soak", "time": stamp, "command": command_line("soak"),
                              "machine": machine_info(), "minutes": args.minutes,
                              "max_concurrent": args.max_concurrent, "session_minutes": list(args.session_minutes),
                              "corpus": {"source": corpus.source, "seconds": round(corpus.seconds, 1)}}
    log_path = None if args.url else args.out_dir / f"soak-{stamp}-server.log"
    with ExitStack() as stack:
        url, pid, http_base, result["server"] = connect_or_start(stack, args.url, args.server_pid, server_args,
                                                                 log_path or Path("unused"))
        sampler = stack.enter_context(ResourceSampler(pid, interval=args.sample_every))
        t0 = time.monotonic()
        sessions = asyncio.run(soak(url, http_base, args, corpus.audio))
        result["wall_minutes"] = round((time.monotonic() - t0) / 60, 1)
        result["sessions_active_after"] = sessions_back_to_zero(http_base)
    result["server_log_errors"] = log_errors(log_path)
    report = analyze(sessions, sampler.samples, t0, args.warmup_minutes * 60)
    result.update(report)
    checks = {
        "sessions_back_to_zero": result["sessions_active_after"] == 0,
        "no_errors_in_log": result["server_log_errors"].get("count", 0) == 0,
        "every_ended_session_exact": not report["accounting_inexact"],
        "every_ended_session_closed_1000": report["ended_ok"] == report["ended_expected"],
        "no_drop_for_fast_sessions": report["dropped_seconds_fast"] == 0,
    }
    result["checks"] = checks
    result["passed"] = all(checks.values())
    png = plot(report, args.out_dir / f"soak-{stamp}.png",
               f"rechka soak: {args.minutes:.0f} min, up to {args.max_concurrent} sessions ({Path(args.asr_model).name})")
    result["plot"] = str(png)
    write_result("soak", result, args.out_dir, stamp)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
