"""Concurrent real-time streams against one server: latency percentiles, lag, CPU/GPU/RSS, batch sizes.

    python -m benchmarks.load --streams 1,2,4,8                   # sweep, server started here (random:v2_ctc, cpu)
    python -m benchmarks.load --search                            # most streams with p95 final <= 1 s, no lag growth
    python -m benchmarks.load --url ws://127.0.0.1:8000/v1/stream --streams 4   # an already running server
    python -m benchmarks.load --device cuda --search --search-start 64          # the same on a GPU

Each step streams ``--duration`` seconds of real speech per client (the shared recordings joined with pauses, each
client from another offset, starts staggered) at real time over protocol v1 with the server's default session
configuration (diarization and partials on). Writes JSON to stdout and ``benchmarks/out/load-<time>.json`` and a
PNG of latency percentiles vs streams beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Optional, Sequence

if __package__ in (None, ""):  # run as a file: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import (OUT_DIR, SAMPLE_RATE, CapacitySearch, Corpus, StreamLog, analyze_session,
                               asr_weights, command_line, linear_fit, plot_panels, speech_corpus, stream_session,
                               summarize, write_result)
from benchmarks.server_process import (ResourceSampler, connect_or_start, counter_delta, final_traces,
                                       histogram_delta, histogram_quantile, machine_info, scrape)
from server.models.gigaam_models import DEFAULT_MODEL


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_argument_group("server")
    where.add_argument("--url", help="a running server (ws://HOST:PORT/v1/stream) to use instead of starting one")
    where.add_argument("--server-pid", type=int, help="pid of the --url server for CPU/RSS (default: found by port)")
    where.add_argument("--asr-model", default=f"random:{DEFAULT_MODEL}",
                       help="--asr-model of the started server (random:* adds --allow-random-weights)")
    where.add_argument("--device", default="cpu", help="--device of the started server: cpu, cuda, cuda:N")
    where.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                       help="extra argument for the started server (repeat: --server-arg=--max-batch --server-arg=32)")
    where.add_argument("--token", help="bearer token for servers that require one")
    what = p.add_argument_group("load")
    what.add_argument("--streams", default="1,2,4,8", help="comma-separated stream counts to sweep")
    what.add_argument("--search", action="store_true", help="find the most streams meeting --target-p95 and "
                      "--max-lag-slope (doubling, then bisection) instead of sweeping --streams")
    what.add_argument("--search-start", type=int, default=1)
    what.add_argument("--search-limit", type=int, default=1024)
    what.add_argument("--duration", type=float, default=60.0, help="seconds of audio per stream per step")
    what.add_argument("--speed", type=float, default=1.0, help="pacing: 1 = real time")
    what.add_argument("--chunk-ms", type=float, default=50.0, help="audio per websocket message")
    what.add_argument("--stagger", type=float, default=2.0, help="clients start uniformly within this many seconds")
    what.add_argument("--no-diarization", action="store_true", help="start sessions with diarization off")
    what.add_argument("--no-partials", action="store_true", help="start sessions with interim_results off")
    what.add_argument("--client-procs", type=int, default=0,
                      help="client processes (0: one per 100 streams, at most half the cores)")
    what.add_argument("--grace", type=float, default=60.0, help="seconds a step may run past its audio")
    crit = p.add_argument_group("pass criteria")
    crit.add_argument("--target-p95", type=float, default=1.0, help="p95 final latency bound, seconds")
    crit.add_argument("--max-lag-slope", type=float, default=0.01,
                      help="bound on the growth of output lag over a step (s per s); ~0 when the server keeps up")
    out = p.add_argument_group("output")
    out.add_argument("--out-dir", type=Path, default=OUT_DIR)
    out.add_argument("--speech-dir", type=Path, help="recordings (default: shared/speech beside the repo)")
    out.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.stream_counts = sorted({int(n) for n in args.streams.split(",") if n.strip()})
    if not args.stream_counts or min(args.stream_counts) < 1:
        p.error("--streams needs positive integers, e.g. 1,2,4,8")
    if args.duration < 5 or args.speed <= 0 or args.chunk_ms < 10:
        p.error("--duration must be >= 5 s, --speed > 0 and --chunk-ms >= 10")
    return args


def session_start(args: argparse.Namespace) -> dict[str, Any]:
    """The ``start`` message fields this benchmark sends (empty = the server's defaults)."""
    start: dict[str, Any] = {}
    if args.no_diarization:
        start["diarization"] = False
    if args.no_partials:
        start["interim_results"] = False
    return start


def client_plan(corpus: Corpus, streams: int, stagger: float, seed: int) -> list[tuple[int, float]]:
    """(corpus offset, start delay) per client: offsets spread over the corpus, delays uniform in [0, stagger)."""
    rng = random.Random(seed * 7919 + streams)
    n = len(corpus.audio)
    return [((i * n) // streams + rng.randrange(SAMPLE_RATE), rng.uniform(0.0, stagger)) for i in range(streams)]


async def _run_clients(url: str, corpus_audio: np.ndarray, plan: Sequence[tuple[int, float]], samples: int,
                       opts: dict[str, Any]) -> list[StreamLog]:
    corpus = Corpus(corpus_audio, (), "")

    async def one(offset: int, delay: float) -> StreamLog:
        await asyncio.sleep(delay)
        return await stream_session(url, corpus.excerpt(offset, samples), **opts)

    return list(await asyncio.gather(*(one(o, d) for o, d in plan)))


def _client_shard(url: str, corpus_audio: np.ndarray, plan: Sequence[tuple[int, float]], samples: int,
                  opts: dict[str, Any]) -> list[StreamLog]:
    """Entry point of a client process: its share of the clients on its own event loop."""
    return asyncio.run(_run_clients(url, corpus_audio, plan, samples, opts))


def run_clients(url: str, corpus: Corpus, plan: list[tuple[int, float]], samples: int, opts: dict[str, Any],
                procs: int) -> list[StreamLog]:
    """All clients of a step, in this process or split over ``procs`` processes (monotonic clocks are shared)."""
    if procs <= 1:
        return asyncio.run(_run_clients(url, corpus.audio, plan, samples, opts))
    shards = [plan[i::procs] for i in range(procs)]
    with ProcessPoolExecutor(max_workers=procs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_client_shard, url, corpus.audio, shard, samples, opts) for shard in shards if shard]
        return [log for f in futures for log in f.result()]


def summarize_step(streams: int, logs: Sequence[StreamLog], t0: float, args: argparse.Namespace) -> dict[str, Any]:
    """Pool the sessions of one step and judge it against the pass criteria."""
    per = [analyze_session(log) for log in logs]
    pooled = lambda key: [v for m in per for v in m[key]]  # noqa: E731
    lag_fit = linear_fit([t - t0 for t in pooled("lag_at")], pooled("lag"))
    final_fit = linear_fit([t - t0 for t in pooled("final_at")], pooled("final_latency"))
    completed = sum(m["completed"] for m in per)
    step: dict[str, Any] = {
        "streams": streams,
        "completed": completed,
        "errors": sorted({m["error"] for m in per if m["error"]})[:5],
        "final_latency_s": summarize(pooled("final_latency")),
        "first_partial_s": summarize(pooled("first_partial")),
        "partial_interval_s": summarize(pooled("partial_interval")),
        "lag_slope": round(lag_fit[0], 5) if lag_fit else None,
        "final_latency_slope": round(final_fit[0], 5) if final_fit else None,
        "wall_per_audio": summarize([m["wall_per_audio"] for m in per if m["wall_per_audio"] is not None]),
        "finals": sum(m["finals"] for m in per),
        "partials": sum(m["partials"] for m in per),
        "partials_dropped_warnings": sum(m["partials_dropped"] for m in per),
        "overloaded_warnings": sum(m["overloaded"] for m in per),
        "audio_dropped_s": round(sum(m["audio_dropped_s"] for m in per), 3),
    }
    why = []
    if completed < streams:
        why.append(f"{streams - completed} sessions did not complete")
    p95 = step["final_latency_s"]["p95"]
    if p95 is None or p95 > args.target_p95:
        why.append(f"p95 final latency {p95} s > {args.target_p95} s" if p95 is not None else "no finals")
    if step["lag_slope"] is not None and step["lag_slope"] > args.max_lag_slope:
        why.append(f"lag grows {step['lag_slope']} s/s > {args.max_lag_slope}")
    if step["audio_dropped_s"] > 0:
        why.append(f"{step['audio_dropped_s']} s of audio dropped")
    step["passed"], step["why_failed"] = not why, why
    return step


BREAKDOWN_STAGES = ("silence", "vad", "asr_wait", "send", "queued", "behind_own", "behind_other", "compute",
                    "submitted", "batch", "audio", "beside_asr", "beside_asr_partials", "beside_segmentation",
                    "beside_embedding", "beside_vad")


def final_breakdown(traces: Sequence[dict[str, Any]], t0: float, t1: float) -> dict[str, Any]:
    """Where the step's finals' latency went (the server's ``/debug/finals`` sent in ``[t0, t1]``): the median of
    each stage over all finals and over the slowest tenth (the tail, which sets the p95)."""
    rows = sorted((t for t in traces if t0 <= t.get("at", -1.0) <= t1), key=lambda t: t["total"])
    if not rows:
        return {}
    tail = rows[int(len(rows) * 0.9):]

    def medians(group: Sequence[dict[str, Any]]) -> dict[str, Optional[float]]:
        out: dict[str, Optional[float]] = {}
        for stage in ("total", *BREAKDOWN_STAGES):
            values = [t[stage] for t in group if t.get(stage) is not None]
            out[stage] = round(float(np.median(values)), 3) if values else None
        return out

    return {"n": len(rows), "all_median": medians(rows), "tail_n": len(tail), "tail_median": medians(tail),
            "finals": rows}


def server_side(before: dict, after: dict, sampler: Optional[ResourceSampler], t0: float, t1: float,
                streams: int) -> dict[str, Any]:
    """CPU/GPU/RSS over the step from the sampler, and batch sizes and other histograms from two /metrics scrapes."""
    out: dict[str, Any] = {}
    if sampler is not None:
        idle = [s["rss_mb"] for s in sampler.samples if s["t"] < t0 and s["rss_mb"] is not None]
        out.update(sampler.window(t0, t1))
        if idle and out.get("rss_mb_max") is not None:
            out["rss_mb_idle"] = round(idle[-1], 1)
            out["rss_per_session_mb"] = round((out["rss_mb_max"] - idle[-1]) / streams, 2)
    if not after:
        return out
    out["batch_size"] = {k: v["mean"] for k, v in histogram_delta(before, after, "rechka_batch_size").items()}
    out["queue_wait_s"] = histogram_delta(before, after, "rechka_queue_wait_seconds")  # count, sum, mean
    busy = counter_delta(before, after, "rechka_model_busy_seconds_total")
    processed = counter_delta(before, after, "rechka_audio_processed_seconds_total").get("all", 0.0)
    out["model_busy_fraction"] = {k: round(v / (t1 - t0), 3) for k, v in busy.items()}
    cpu = counter_delta(before, after, "rechka_model_cpu_seconds_total")
    if processed:  # CPU-seconds per second of a stream's audio, per model (its inference thread)
        out["model_cpu_per_audio_s"] = {k: round(v / processed, 4) for k, v in cpu.items()}
        if out.get("cpu_percent_mean") is not None:  # the rest: event loop, a model's extra intra-op threads, …
            out["other_cpu_per_audio_s"] = round(
                (out["cpu_percent_mean"] / 100 * (t1 - t0) - sum(cpu.values())) / processed, 4)
    out["compute_rtf"] = round(sum(busy.values()) / processed, 4) if processed else None
    out["final_latency_server_p95_s"] = histogram_quantile(before, after, "rechka_final_latency_seconds", 0.95)
    out["first_partial_server_p95_s"] = histogram_quantile(before, after, "rechka_time_to_first_partial_seconds",
                                                           0.95)
    out["calls_interrupted"] = counter_delta(before, after, "rechka_model_calls_interrupted_total")
    out["audio_dropped_server_s"] = counter_delta(before, after, "rechka_audio_dropped_seconds_total").get("all")
    out["partials_dropped_server"] = counter_delta(before, after, "rechka_partials_dropped_total").get("all")
    return out


def run_step(url: str, http_base: Optional[str], corpus: Corpus, streams: int, sampler: Optional[ResourceSampler],
             args: argparse.Namespace) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
    samples = int(args.duration * SAMPLE_RATE)
    plan = client_plan(corpus, streams, args.stagger, args.seed)
    opts = {"speed": args.speed, "chunk": int(args.chunk_ms * SAMPLE_RATE / 1000), "start": session_start(args),
            "token": args.token, "finish_timeout": args.grace}
    procs = args.client_procs or min(max(1, (os.cpu_count() or 1) // 2), math.ceil(streams / 100))
    before = scrape(http_base) if http_base else {}
    print(f"[load] {streams} streams × {args.duration:.0f} s of audio ({procs} client process(es))…",
          file=sys.stderr, flush=True)
    t0 = time.monotonic()
    logs = run_clients(url, corpus, plan, samples, opts, procs)
    t1 = time.monotonic()
    after = scrape(http_base) if http_base else {}
    traces = final_traces(http_base) if http_base else []
    step = summarize_step(streams, logs, t0, args)
    step["final_breakdown"] = final_breakdown(traces, t0, t1)
    step["wall_s"] = round(t1 - t0, 1)
    step["server"] = server_side(before, after, sampler, t0, t1, streams)
    print(f"[load] {streams} streams: p95 final {step['final_latency_s']['p95']} s, lag slope {step['lag_slope']}, "
          f"{'PASS' if step['passed'] else 'FAIL: ' + '; '.join(step['why_failed'])}", file=sys.stderr, flush=True)
    if step["final_breakdown"]:
        print(f"[load] {streams} streams: slowest tenth of finals, medians: {step['final_breakdown']['tail_median']}",
              file=sys.stderr, flush=True)
    ready = next((log.ready for log in logs if log.ready), None)
    return step, ready


def markdown_table(steps: Sequence[dict[str, Any]]) -> str:
    """The steps as a markdown table (for docs/benchmarks.md)."""
    head = ("| streams | done | final p50 / p95 / p99 (s) | first partial p50 / p95 (s) | lag slope (s/s) "
            "| server CPU (% of 1 core) | machine CPU (%) | RSS/session (MiB) | audio dropped (s) | pass |\n"
            "|---:|---:|---|---|---:|---:|---:|---:|---:|---|")
    rows = []
    for s in sorted(steps, key=lambda s: s["streams"]):
        f, p, sv = s["final_latency_s"], s["first_partial_s"], s["server"]
        rows.append(f"| {s['streams']} | {s['completed']} | {f['p50']} / {f['p95']} / {f['p99']} "
                    f"| {p['p50']} / {p['p95']} | {s['lag_slope']} | {sv.get('cpu_percent_mean')} "
                    f"| {sv.get('machine_cpu_percent_mean')} | {sv.get('rss_per_session_mb')} | {s['audio_dropped_s']} "
                    f"| {'yes' if s['passed'] else 'no'} |")
    return "\n".join([head, *rows])


def plot_steps(steps: Sequence[dict[str, Any]], path: Path, title: str, target: float) -> Path:
    rows = sorted(steps, key=lambda s: s["streams"])
    x = [s["streams"] for s in rows]
    lat = {f"final {q}": [s["final_latency_s"][q] for s in rows] for q in ("p50", "p95", "p99")}
    first = {f"first partial {q}": [s["first_partial_s"][q] for s in rows] for q in ("p50", "p95")}
    cpu = {"server CPU mean (% of 1 core)": [s["server"].get("cpu_percent_mean") for s in rows],
           "machine CPU mean (% of all cores)": [s["server"].get("machine_cpu_percent_mean") for s in rows]}
    if any(s["server"].get("gpu_util_mean") is not None for s in rows):
        cpu["GPU utilisation mean (%)"] = [s["server"].get("gpu_util_mean") for s in rows]
    return plot_panels(path, title, [
        {"x": x, "series": lat, "xlabel": "concurrent streams", "ylabel": "final latency (s)",
         "hline": (f"target p95 {target} s", target), "logx": True},
        {"x": x, "series": first, "xlabel": "concurrent streams", "ylabel": "time to first partial (s)", "logx": True},
        {"x": x, "series": cpu, "xlabel": "concurrent streams", "ylabel": "%", "logx": True},
    ])


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    corpus = speech_corpus(args.speech_dir, seed=args.seed)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    counts = [args.search_limit] if args.search else args.stream_counts
    server_args = ["--asr-model", args.asr_model, "--device", args.device,
                   "--max-sessions", str(max(counts) + 8), *args.server_arg]
    if args.asr_model.startswith("random:"):
        server_args.append("--allow-random-weights")
    result: dict[str, Any] = {"benchmark": "load", "time": stamp, "command": command_line("load"),
                              "machine": machine_info(), "corpus": {"source": corpus.source,
                                                                    "seconds": round(corpus.seconds, 1)},
                              "session_start": session_start(args),
                              "criteria": {"p95_final_latency_s": args.target_p95, "max_lag_slope": args.max_lag_slope}}
    steps: list[dict[str, Any]] = []
    ready: Optional[dict[str, Any]] = None
    with ExitStack() as stack:
        url, pid, http_base, result["server"] = connect_or_start(
            stack, args.url, args.server_pid, server_args, args.out_dir / f"load-{stamp}-server.log")
        sampler = stack.enter_context(ResourceSampler(pid)) if pid else None
        time.sleep(2.0)  # an idle RSS sample before the first step
        search = CapacitySearch(args.search_start, args.search_limit) if args.search else None
        todo = iter(args.stream_counts)
        while (n := (search.next() if search else next(todo, None))) is not None:
            step, step_ready = run_step(url, http_base, corpus, n, sampler, args)
            ready = ready or step_ready
            steps.append(step)
            if search:
                search.record(n, step["passed"])
    result["server"]["models"] = (ready or {}).get("models")
    result["asr_weights"] = asr_weights(ready)
    result["steps"] = steps
    if search:
        result["search"] = {"max_streams": search.best, "tried": search.tried}
    png = plot_steps(steps, args.out_dir / f"load-{stamp}.png",
                     f"rechka load ({result['asr_weights']} ASR weights, {args.device}, "
                     f"{result['machine'].get('cpu_model', '?')})", args.target_p95)
    result["plot"] = str(png)
    write_result("load", result, args.out_dir, stamp)
    print(markdown_table(steps), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
