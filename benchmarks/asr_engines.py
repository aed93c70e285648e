"""GigaAM engines side by side in one run: torch fp32, torch dynamic int8, ONNX Runtime fp32 and int8.

    python -m benchmarks.asr_engines                       # full-size v2 CTC architecture, random weights, CPU
    python -m benchmarks.asr_engines --shapes 5x1,20x1,5x4 --repeats 5
    python -m benchmarks.asr_engines --variants torch-fp32,onnx-int8-conv,onnx-int8-taps

An ONNX variant may name the graph's form of the subsampling convolutions: ``-taps`` (one MatMul per kernel tap,
quantized with the rest: recipe ``masked-taps-v2``) or ``-conv`` (Conv ops, left fp32 by int8: ``masked-v1``);
without one it is the engine's default recipe for the precision.

All four adapters hold the same weights (one seeded random build, or ``--asr-model`` a checkpoint) and decode the
same real speech (``benchmarks.common.speech_corpus``); each shape (``SECONDSxBATCH``, a ragged batch: rows are
cut 0-15 % shorter) is timed with the variants interleaved round by round, so machine noise hits them alike; the
median of ``--repeats`` rounds is reported with its ratio to torch fp32. Accuracy against torch fp32 on the same
batch: max |Δ log-prob| over valid frames and the share of rows whose greedy text differs (random weights make the
texts meaningless, but any change of the argmax shows). Prints JSON, writes it and a plot to ``benchmarks/out/``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import OUT_DIR, SAMPLE_RATE, command_line, plot_panels, speech_corpus, write_result
from benchmarks.server_process import machine_info

VARIANTS = ("torch-fp32", "torch-int8", "onnx-fp32", "onnx-int8", "onnx-fp32-conv", "onnx-fp32-taps",
            "onnx-int8-conv", "onnx-int8-taps")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--asr-model", default="random:v2_ctc")
    p.add_argument("--shapes", default="5x1,20x1,5x4", help="SECONDSxBATCH, comma-separated")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    return p.parse_args(argv)


def build(variants: Sequence[str], model: str, threads: int) -> dict[str, Any]:
    import torch

    from server.models.asr import GigaAmAsr
    from server.models.asr_onnx import CONV_OPS, MATMUL_CONVS, OnnxGigaAmAsr

    torch.set_num_threads(threads)
    out: dict[str, Any] = {}
    for name in variants:
        torch.manual_seed(0)  # random:… builds: the same weights in every variant (and the same cached graph)
        engine, precision, *form = name.split("-")
        if engine == "torch":
            out[name] = GigaAmAsr(model, "cpu", 16, quantize="int8" if precision == "int8" else None)
        else:
            recipe = {"taps": MATMUL_CONVS, "conv": CONV_OPS}[form[0]] if form else None  # None: the default
            out[name] = OnnxGigaAmAsr(model, "cpu", 16, precision=precision, threads=threads, recipe=recipe)
    return out


def batch_of(audio: np.ndarray, seconds: float, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    n = int(seconds * SAMPLE_RATE)
    rows = []
    for i in range(batch):
        length = n if i == 0 else int(n * rng.uniform(0.85, 1.0))
        start = int(rng.integers(0, max(1, len(audio) - length)))
        rows.append(np.ascontiguousarray(audio[start:start + length], dtype=np.float32))
    return rows


def log_probs(asr: Any, rows: list[np.ndarray]) -> tuple[Any, Any]:
    import torch

    with torch.inference_mode():
        encoded, lengths = asr._encode([torch.from_numpy(r) for r in rows])
        return asr.model.head(encoder_output=encoded.transpose(1, 2)), lengths


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    started = time.time()
    adapters = build(variants, args.asr_model, args.threads)
    load_s = time.time() - started
    audio = speech_corpus().audio
    rng = np.random.default_rng(0)
    from streaming.work import AsrKind, AsrRequest

    shapes = []
    for spec in args.shapes.split(","):
        seconds, batch = spec.lower().split("x")
        rows = batch_of(audio, float(seconds), int(batch), rng)
        requests = [AsrRequest("b", i, 0, 0, r, i, AsrKind.FINAL) for i, r in enumerate(rows)]
        for adapter in adapters.values():
            adapter.run_batch(requests)  # warm-up
        times: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.repeats):
            for name in variants:
                t = time.perf_counter()
                adapters[name].run_batch(requests)
                times[name].append(time.perf_counter() - t)
        row: dict[str, Any] = {"shape": spec, "seconds": float(seconds), "batch": int(batch),
                               "median_ms": {v: 1000 * statistics.median(t) for v, t in times.items()}}
        if "torch-fp32" in adapters:
            base = row["median_ms"]["torch-fp32"]
            row["speedup_vs_torch_fp32"] = {v: base / ms for v, ms in row["median_ms"].items()}
            want, lengths = log_probs(adapters["torch-fp32"], rows)
            texts = [r.text for r in adapters["torch-fp32"].run_batch(requests)]
            row["max_abs_logprob_diff"], row["text_differs_share"] = {}, {}
            for name in variants:
                got, _ = log_probs(adapters[name], rows)
                row["max_abs_logprob_diff"][name] = max(
                    float((want[i, :n] - got[i, :n]).abs().max()) for i, n in enumerate(lengths.tolist()))
                other = [r.text for r in adapters[name].run_batch(requests)]
                row["text_differs_share"][name] = sum(a != b for a, b in zip(texts, other)) / len(texts)
        shapes.append(row)
        print(row, flush=True)
    result = {"benchmark": "asr_engines", "command": command_line("asr_engines"),
              "machine": machine_info(), "asr_model": args.asr_model, "threads": args.threads,
              "load_seconds": load_s, "graphs": {n: str(getattr(a, "graph", "")) for n, a in adapters.items()},
              "shapes": shapes}
    path = write_result("asr_engines", result, args.out_dir)
    plot_panels(path.with_suffix(".png"), f"GigaAM engines, {args.asr_model}, {args.threads} threads", [
        {"x": [row["shape"] for row in shapes], "series": {v: [row["median_ms"][v] for row in shapes] for v in variants},
         "xlabel": "seconds x batch", "ylabel": "median ms per batch"}])
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
