"""Cached partials of several streams in one chunk-graph run against one run each, side by side in one run.

    python -m benchmarks.partial_rows                                  # full size int8, 1, 2, 4, 8 streams
    python -m benchmarks.partial_rows --rows 1,4 --rounds 20 --asr-model tests/assets/tiny_gigaam_ctc.ckpt

At the server a batch of the partial lane holds the cached partials of every stream whose window was due while the
lane was busy; :func:`server.models.asr_cache_onnx.step_encoders` runs them as rows of one chunk-graph run (the int8
weights are read once per run, ~25 ms of a one-frame run on a 2-core CPU). Here ``N`` streams each push a window of
``--window`` seconds (±20 %, so rows differ in every axis) per round into two sets of encoders: *together* (one run
of ``N`` rows) and *alone* (``N`` runs), alternating which goes first; each stream starts with a different amount of
cached audio and starts a new utterance after ``--max-utterance`` seconds. Compute does not depend on the audio's
content: the streams are seeded noise. Reports per ``N`` the median round wall time of both and their ratio, JSON
to stdout and ``benchmarks/out/partial-rows-<time>.json``, with a PNG beside it; also the largest log-prob
difference between the two ways (fp32: float rounding; int8: the rows share the activations' dynamic quantization).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import OUT_DIR, command_line, plot_panels, write_result
from streaming.config import SAMPLE_RATE


class Stream:
    """One stream's utterance on two encoders fed the same audio: one stepped with others, one alone."""

    def __init__(self, asr: Any, lookahead: int, rng: np.random.Generator, cached_s: float) -> None:
        self.asr, self.lookahead, self.rng = asr, lookahead, rng
        self.restart()
        if cached_s:
            prefix = self.audio(cached_s)
            self.together.step(prefix)
            self.alone.step(prefix)
            self.length = len(prefix)

    def restart(self) -> None:
        self.together = self.asr.chunk_encoder(self.lookahead)
        self.alone = self.asr.chunk_encoder(self.lookahead)
        self.length = 0

    def audio(self, seconds: float) -> np.ndarray:
        return (self.rng.standard_normal(int(seconds * SAMPLE_RATE)) * 0.05).astype(np.float32)


def measure(asr: Any, rows: int, rounds: int, window: float, max_utterance: float, lookahead: int,
            seed: int) -> dict[str, Any]:
    from server.models.asr_cache_onnx import step_encoders

    rng = np.random.default_rng(seed)
    streams = [Stream(asr, lookahead, np.random.default_rng(seed + i), cached_s=(i * 1.7) % max_utterance)
               for i in range(rows)]
    together_s, alone_s, diffs = [], [], [0.0]
    for k in range(rounds + 1):  # round 0 warms up
        chunks = [s.audio(window * rng.uniform(0.8, 1.2)) for s in streams]

        outs: dict[str, list[np.ndarray]] = {}

        def run_together() -> float:
            t = time.perf_counter()
            outs["together"] = step_encoders([s.together for s in streams], chunks, [False] * rows)
            return time.perf_counter() - t

        def run_alone() -> float:
            t = time.perf_counter()
            outs["alone"] = [s.alone.step(c) for s, c in zip(streams, chunks)]
            return time.perf_counter() - t

        first, second = (run_together, run_alone) if k % 2 else (run_alone, run_together)
        times = {first: first(), second: second()}
        diffs += [float(np.abs(a - b).max()) for a, b in zip(outs["together"], outs["alone"]) if a.size]
        if k:
            together_s.append(times[run_together])
            alone_s.append(times[run_alone])
        for s, c in zip(streams, chunks):
            s.length += len(c)
            if s.length >= max_utterance * SAMPLE_RATE:
                s.restart()
    t, a = float(np.median(together_s)), float(np.median(alone_s))
    return {"rows": rows, "together_ms": round(1000 * t, 1), "alone_ms": round(1000 * a, 1),
            "per_row_together_ms": round(1000 * t / rows, 1), "ratio": round(t / a, 3),
            "ratio_per_round": {"median": round(float(np.median(np.array(together_s) / np.array(alone_s))), 3)},
            "max_abs_logprob_diff": float(f"{max(diffs):.3g}")}  # int8: rows share activation quantization


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--asr-model", default="random:v2_ctc")
    p.add_argument("--asr-quantize", choices=("none", "int8"), default="int8")
    p.add_argument("--threads", type=int, default=1, help="the chunk graph's intra-op threads (server default 1)")
    p.add_argument("--rows", default="1,2,4,8", help="streams per run, comma-separated")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--window", type=float, default=1.0, help="seconds per partial window (the default cadence)")
    p.add_argument("--lookahead", type=int, default=2)
    p.add_argument("--max-utterance", type=float, default=8.0, help="seconds before a stream starts a new utterance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = p.parse_args(argv)

    from server.models.asr_onnx import OnnxGigaAmAsr

    asr = OnnxGigaAmAsr(args.asr_model, "cpu", 16, precision="fp32" if args.asr_quantize == "none" else "int8",
                        threads=args.threads)
    results = [measure(asr, int(n), args.rounds, args.window, args.max_utterance, args.lookahead, args.seed)
               for n in args.rows.split(",")]
    result = {"benchmark": "partial_rows", "command": command_line("partial_rows"),
              "asr_model": args.asr_model, "chunk_graph": asr.chunk_graph.name, "threads": args.threads,
              "window_s": args.window, "results": results}
    path = write_result("partial-rows", result, args.out_dir)
    result["path"] = str(path)
    x = [r["rows"] for r in results]
    plot_panels(path.with_suffix(".png"), "cached partials: N streams in one chunk run vs N runs", [
        {"x": x, "series": {"one run of N rows": [r["together_ms"] for r in results],
                            "N runs of one row": [r["alone_ms"] for r in results]},
         "xlabel": "streams (rows)", "ylabel": "ms per round (median)"},
        {"x": x, "series": {"together / alone": [r["ratio"] for r in results]}, "xlabel": "streams (rows)",
         "ylabel": "wall ratio", "hline": ("1.0", 1.0)}])
    return result


if __name__ == "__main__":
    main()
