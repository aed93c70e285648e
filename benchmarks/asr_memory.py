"""RSS and time of the ONNX Runtime GigaAM encoder over many request shapes: rechka's session options vs ORT's
defaults.

    python -m benchmarks.asr_memory                        # full-size v2 CTC architecture, random weights, int8
    python -m benchmarks.asr_memory --asr-model tests/assets/tiny_gigaam_ctc.ckpt --requests 300

A server's ASR requests each have their own shape (batch 1-4, 1-12 s of audio, ragged). ORT's defaults cache a
memory pattern per input shape and keep a CPU arena that grows by powers of two and never gives memory back;
:func:`server.models.asr_onnx.session_options` turns the pattern off and keeps the arena. Each variant runs in its own process (RSS is
per process) over the same seeded sequence of shapes, and the processes alternate, so machine noise hits both.
Reports RSS every 10 requests, its growth after the first 20 requests, and the total run time. Prints JSON, writes
it and a plot to ``benchmarks/out/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import OUT_DIR, REPO_ROOT, command_line, plot_panels, write_result
from benchmarks.server_process import jemalloc_library, machine_info
from server.models.gigaam_models import DEFAULT_MODEL

VARIANTS = ("rechka", "ort-defaults")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--asr-model", default=f"random:{DEFAULT_MODEL}")
    p.add_argument("--precision", default="int8", choices=("int8", "fp32"))
    p.add_argument("--requests", type=int, default=100, help="requests per variant and round (default 100)")
    p.add_argument("--rounds", type=int, default=1, help="rounds, variants alternating (default 1)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.requests < 30:
        p.error("--requests must be >= 30 (growth is measured after the first 20)")
    return args


def shapes(requests: int, seed: int) -> list[tuple[int, list[int]]]:
    """``(frames, row lengths)`` per request: batch 1-4, 1-12 s at 100 frames per second, rows cut up to half."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(requests):
        frames = int(rng.integers(100, 1200))
        lengths = [frames] + [int(v) for v in rng.integers(frames // 2, frames + 1, size=int(rng.integers(0, 4)))]
        out.append((frames, lengths))
    return out


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Run the requests through one session made with the variant's options; RSS every 10 requests."""
    import numpy as np
    import onnxruntime as ort
    import psutil
    import torch

    from server.models.asr_onnx import OnnxGigaAmAsr, session_options

    torch.manual_seed(0)
    asr = OnnxGigaAmAsr(args.asr_model, "cpu", 16, precision=args.precision, threads=args.threads)
    features = asr.spec.frontend.features
    if args.child == "rechka":
        session = asr.session
    else:
        options = session_options(args.threads)
        options.enable_mem_pattern = True  # ORT's default
        session = ort.InferenceSession(str(asr.graph), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(args.seed + 1)
    proc = psutil.Process()
    rss, busy = [], 0.0
    for k, (frames, lengths) in enumerate(shapes(args.requests, args.seed)):
        x = rng.standard_normal((len(lengths), frames, features)).astype(np.float32)
        began = time.perf_counter()
        session.run(None, {"features": x, "lengths": np.asarray(lengths, np.int64)})
        busy += time.perf_counter() - began
        if k % 10 == 9:
            rss.append(proc.memory_info().rss / 2**20)
    return {"variant": args.child, "rss_mb": [round(v, 1) for v in rss], "seconds": round(busy, 2),
            "growth_mb_after_20": round(rss[-1] - rss[1], 1)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    runs: list[dict[str, Any]] = []
    base = [sys.executable, "-m", "benchmarks.asr_memory", "--asr-model", args.asr_model, "--precision",
            args.precision, "--requests", str(args.requests), "--threads", str(args.threads), "--seed", str(args.seed)]
    env = dict(os.environ)
    jemalloc = jemalloc_library()
    if jemalloc is not None:  # the allocator the server runs on (scripts/serve.sh)
        env["LD_PRELOAD"] = f"{jemalloc}:{env['LD_PRELOAD']}" if env.get("LD_PRELOAD") else str(jemalloc)
    for round_ in range(args.rounds):
        order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            out = subprocess.run([*base, "--child", variant], cwd=REPO_ROOT, capture_output=True, text=True,
                                 check=True, env=env)
            runs.append({"round": round_, **json.loads(out.stdout.strip().splitlines()[-1])})
            print(f"[asr_memory] round {round_} {variant}: {runs[-1]['growth_mb_after_20']} MiB growth, "
                  f"{runs[-1]['seconds']} s", file=sys.stderr, flush=True)
    result: dict[str, Any] = {"benchmark": "asr_memory", "command": command_line("asr_memory"),
                              "machine": machine_info(), "asr_model": args.asr_model, "precision": args.precision,
                              "requests": args.requests, "allocator": "jemalloc" if jemalloc else "glibc",
                              "runs": runs}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    x = [10 * (k + 1) for k in range(len(runs[0]["rss_mb"]))]
    result["plot"] = str(plot_panels(args.out_dir / f"asr_memory-{stamp}.png", "ONNX Runtime encoder RSS",
                                     [{"x": x, "xlabel": "requests", "ylabel": "RSS (MiB)",
                                       "series": {f"{r['variant']} #{r['round']}": r["rss_mb"] for r in runs}}]))
    write_result("asr_memory", result, args.out_dir, stamp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
