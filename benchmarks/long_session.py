"""One long stream (60+ minutes of looped real speech with pauses) paced faster than real time.

    python -m benchmarks.long_session                       # 60 min of audio at 4x: ~15 min of wall time
    python -m benchmarks.long_session --minutes 20 --speed 4
    python -m benchmarks.long_session --device cuda --minutes 120 --speed 8

Reports final latency and server RSS over the session and their linear-fit slopes (per hour of audio): a server
that leaks memory or falls behind shows a positive slope. RSS slopes are fitted after ``--warmup-minutes`` of audio
(allocator pools and caches fill first). Writes JSON to stdout and ``benchmarks/out/long-<time>.json`` and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Optional, Sequence

if __package__ in (None, ""):  # run as a file: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import (OUT_DIR, SAMPLE_RATE, StreamLog, analyze_session, asr_weights, command_line,
                               linear_fit, plot_panels, speech_corpus, stream_session, summarize, write_result)
from benchmarks.server_process import (ResourceSampler, connect_or_start, counter_delta, histogram_delta,
                                       machine_info, scrape)
from server.models.gigaam_models import DEFAULT_MODEL


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="connect to this running server instead of starting one")
    p.add_argument("--server-pid", type=int, help="pid of the --url server for RSS (default: found by port)")
    p.add_argument("--asr-model", default=f"random:{DEFAULT_MODEL}", help="--asr-model of the started server")
    p.add_argument("--device", default="cpu", help="--device of the started server: cpu, cuda, cuda:N")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG", help="extra server argument (repeat)")
    p.add_argument("--token", help="bearer token for servers that require one")
    p.add_argument("--minutes", type=float, default=60.0, help="minutes of audio in the session")
    p.add_argument("--speed", type=float, default=4.0, help="pacing: 4 = four times real time")
    p.add_argument("--chunk-ms", type=float, default=100.0, help="audio per websocket message")
    p.add_argument("--no-diarization", action="store_true")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS/CPU samples")
    p.add_argument("--warmup-minutes", type=float, default=5.0, help="audio minutes left out of the RSS fit")
    p.add_argument("--grace", type=float, default=120.0, help="seconds the session may run past its audio")
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    p.add_argument("--speech-dir", type=Path)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.speed <= 0:
        p.error("--minutes and --speed must be positive")
    if args.warmup_minutes >= args.minutes:
        args.warmup_minutes = args.minutes / 4
    return args


def audio_position(log: StreamLog, t: float) -> float:
    """Audio seconds sent by monotonic time ``t`` (interpolated between chunk send times)."""
    if not log.marks:
        return 0.0
    samples = np.array([m[0] for m in log.marks], dtype=np.float64)
    times = np.array([m[1] for m in log.marks], dtype=np.float64)
    return float(np.interp(t, times, samples, left=0.0)) / SAMPLE_RATE


def per_hour(fit: Optional[tuple[float, float]], unit_seconds: float = 3600.0) -> Optional[float]:
    """A slope per audio second → per audio hour (rounded)."""
    return round(fit[0] * unit_seconds, 4) if fit else None


def analyze_long(log: StreamLog, samples: Sequence[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    """Latency and RSS series against audio time, with their slopes per audio hour."""
    m = analyze_session(log)
    rss = [(audio_position(log, s["t"]), s["rss_mb"]) for s in samples
           if s["rss_mb"] is not None and log.t_start is not None and s["t"] >= log.t_start]
    rss_late = [(x, y) for x, y in rss if x >= warmup_s]
    cpu = [s["cpu_percent"] for s in samples if s["cpu_percent"] is not None]
    lat_fit = linear_fit(m["final_end_s"], m["final_latency"])
    return {
        "completed": m["completed"],
        "error": m["error"],
        "audio_s_sent": round(log.marks[-1][0] / SAMPLE_RATE, 1) if log.marks else 0.0,
        "wall_s": round((log.t_end or time.monotonic()) - (log.t_start or time.monotonic()), 1),
        "wall_per_audio": m["wall_per_audio"],
        "finals": m["finals"],
        "partials": m["partials"],
        "partials_dropped_warnings": m["partials_dropped"],
        "overloaded_warnings": m["overloaded"],
        "audio_dropped_s": round(m["audio_dropped_s"], 3),
        "final_latency_s": summarize(m["final_latency"]),
        "final_latency_slope_s_per_hour": per_hour(lat_fit),
        "first_partial_s": summarize(m["first_partial"]),
        "rss_mb_first": round(rss[0][1], 1) if rss else None,
        "rss_mb_last": round(rss[-1][1], 1) if rss else None,
        "rss_mb_max": round(max(y for _, y in rss), 1) if rss else None,
        "rss_slope_mb_per_hour": per_hour(linear_fit(*zip(*rss_late)) if len(rss_late) >= 2 else None),
        "rss_slope_mb_per_hour_all": per_hour(linear_fit(*zip(*rss)) if len(rss) >= 2 else None),
        "server_cpu_percent_mean": round(float(np.mean(cpu)), 1) if cpu else None,
        "series": {"final_end_s": [round(x, 2) for x in m["final_end_s"]],
                   "final_latency_s": [round(y, 3) for y in m["final_latency"]],
                   "rss_audio_s": [round(x, 1) for x, _ in rss], "rss_mb": [round(y, 1) for _, y in rss]},
    }


def plot_long(report: dict[str, Any], path: Path, title: str) -> Path:
    s = report["series"]
    lat_x = [x / 60 for x in s["final_end_s"]]
    rss_x = [x / 60 for x in s["rss_audio_s"]]
    return plot_panels(path, title, [
        {"x": lat_x, "series": {"final latency (s)": s["final_latency_s"]}, "marker": ".",
         "xlabel": "audio time (min)", "ylabel": "final latency (s)", "hline": ("1 s", 1.0)},
        {"x": rss_x, "series": {"server RSS (MiB)": s["rss_mb"]}, "marker": ".",
         "xlabel": "audio time (min)", "ylabel": "RSS (MiB)"},
    ])


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    corpus = speech_corpus(args.speech_dir, seed=args.seed)
    samples = int(args.minutes * 60 * SAMPLE_RATE)
    audio = corpus.excerpt(0, samples)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    server_args = ["--asr-model", args.asr_model, "--device", args.device, *args.server_arg]
    if args.asr_model.startswith("random:"):
        server_args.append("--allow-random-weights")
    result: dict[str, Any] = {"benchmark": "long_session", "time": stamp, "command": command_line("long_session"),
                              "machine": machine_info(), "minutes": args.minutes, "speed": args.speed,
                              "corpus": {"source": corpus.source, "seconds": round(corpus.seconds, 1)}}
    next_report = [0]

    def progress(sent: int) -> None:
        if sent >= next_report[0]:
            print(f"[long] {sent / SAMPLE_RATE / 60:.1f} / {args.minutes:.0f} min of audio sent",
                  file=sys.stderr, flush=True)
            next_report[0] += 5 * 60 * SAMPLE_RATE

    with ExitStack() as stack:
        url, pid, http_base, result["server"] = connect_or_start(
            stack, args.url, args.server_pid, server_args, args.out_dir / f"long-{stamp}-server.log")
        sampler = stack.enter_context(ResourceSampler(pid, interval=args.sample_every))
        before = scrape(http_base)
        start = {"diarization": False} if args.no_diarization else {}
        log = asyncio.run(stream_session(url, audio, speed=args.speed, chunk=int(args.chunk_ms * SAMPLE_RATE / 1000),
                                         start=start, token=args.token, finish_timeout=args.grace,
                                         on_chunk=progress))
        after = scrape(http_base)
    result["server"]["models"] = (log.ready or {}).get("models")
    result["asr_weights"] = asr_weights(log.ready)
    report = analyze_long(log, sampler.samples, args.warmup_minutes * 60)
    report["batch_size"] = {k: v["mean"] for k, v in histogram_delta(before, after, "rechka_batch_size").items()}
    busy = counter_delta(before, after, "rechka_model_busy_seconds_total")
    processed = counter_delta(before, after, "rechka_audio_processed_seconds_total").get("all", 0.0)
    report["compute_rtf"] = round(sum(busy.values()) / processed, 4) if processed else None
    result.update(report)
    png = plot_long(report, args.out_dir / f"long-{stamp}.png",
                    f"rechka long session: {args.minutes:.0f} min at {args.speed}x ({result['asr_weights']} ASR "
                    f"weights, {args.device})")
    result["plot"] = str(png)
    write_result("long", result, args.out_dir, stamp)
    return 0 if report["completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
