"""Diarization's models on both engines side by side in one run: torch (``server.models.segmentation``,
``embedding``, ``campplus``) and ONNX Runtime (``server.models.diarization_onnx``).

    python -m benchmarks.diarization_engines                       # every model, default shapes, 1 thread
    python -m benchmarks.diarization_engines --models pyannet,campplus --rounds 5

Models: ``pyannet`` (the whisperx PyanNet, 5 s windows), ``seg30`` (segmentation-3.0, 10 s windows), ``resemblyzer``
and ``campplus``. A segmentation shape is ``BATCH`` windows of the model's length per call (the server batches the
windows of concurrent streams, 2 per stream-second at the 0.5 s step); an embedding shape ``BATCHxSECONDS`` is BATCH
requests of SECONDS each, lengths spread ±40 % around it (ragged, as the diarizer's segments are), cut from
pyannote's ``sample.wav``. ``pyannet-streams`` compares two ONNX Runtime variants of PyanNet instead of the engines:
``whole`` (one whole-window graph) and ``reuse`` (the sinc filterbank once per stream,
:mod:`server.models.sinc_reuse`); its shape is STREAMS, each call one window per stream, every call's windows 0.5 s
after the last's (as the diarizer asks), so the comparison includes the per-stream reuse. Per model and shape the
two alternate in ``--rounds`` blocks of ``--calls`` calls, so machine noise hits them alike; each block's process
CPU time (``time.process_time``) gives CPU ms per call and per request, reported as the median block with the ratio
first / second (torch / onnx, whole / reuse). Accuracy: max |Δ| between the two's outputs on the same calls
(probabilities; embedding entries). Both run on one intra-op thread (``--model-threads 1``, the server's default).
Prints JSON, writes it and a plot to ``benchmarks/out/``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import OUT_DIR, SAMPLE_RATE, command_line, plot_panels, write_result
from benchmarks.server_process import machine_info
from benchmarks.vad_engines import sample_audio

MODELS = ("pyannet", "seg30", "resemblyzer", "campplus", "pyannet-streams")
SHAPES = {"pyannet": "1,2,4,8", "seg30": "1,2,4,8", "resemblyzer": "1x1.5,4x1.5,4x3,8x2",
          "campplus": "1x1.5,4x1.5,4x3,8x2", "pyannet-streams": "1,2,4,8"}
STEP = SAMPLE_RATE // 2  # the diarizer's default window step


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    for model in MODELS:
        p.add_argument(f"--{model}-shapes", default=SHAPES[model], help=f"{model}'s shapes (default {SHAPES[model]})")
    p.add_argument("--rounds", type=int, default=5, help="alternated blocks per engine and shape")
    p.add_argument("--calls", type=int, default=8, help="calls per block")
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    return p.parse_args(argv)


def load(model: str) -> dict[str, Any]:
    """The torch and the onnx adapter of ``model``."""
    from server.models.cache import CAMPPLUS, EMBEDDING_DEFAULT, SEGMENTATION_3, SEGMENTATION_DEFAULT
    from server.models.diarization_onnx import OnnxSegmentationModel, load_embedding, load_segmentation

    if model == "pyannet-streams":
        return {"whole": OnnxSegmentationModel(max_batch=64, reuse_sinc=False),
                "reuse": OnnxSegmentationModel(max_batch=64)}
    if model in ("pyannet", "seg30"):
        name = SEGMENTATION_DEFAULT if model == "pyannet" else SEGMENTATION_3
        return {engine: load_segmentation(name, "cpu", 64, engine) for engine in ("torch", "onnx")}
    name = EMBEDDING_DEFAULT if model == "resemblyzer" else CAMPPLUS
    return {engine: load_embedding(name, "cpu", 64, engine) for engine in ("torch", "onnx")}


def requests_for(model: str, adapter: Any, shape: str, audio: np.ndarray, call: int) -> list[Any]:
    """One call's requests: windows (segmentation) or ragged segments (embeddings), from the call's own offsets."""
    from streaming.work import EmbeddingRequest, SegmentationRequest

    rng = np.random.default_rng(call)
    if model == "pyannet-streams":  # stream i reads the sample from offset i * 7.3 s on, wrapping around
        streams, length = int(shape), adapter.window
        span = (len(audio) - length) // STEP
        starts = [((call + 15 * i) % span) * STEP for i in range(streams)]
        return [SegmentationRequest(f"s{i}", i, 0, s, audio[s:s + length]) for i, s in enumerate(starts)]
    if model in ("pyannet", "seg30"):
        batch, length = int(shape), adapter.window
        starts = rng.integers(0, len(audio) - length, batch)
        return [SegmentationRequest("s", i, 0, int(s), audio[s:s + length]) for i, s in enumerate(starts)]
    batch, seconds = shape.split("x")
    lengths = (float(seconds) * SAMPLE_RATE * rng.uniform(0.6, 1.4, int(batch))).astype(int)
    starts = [int(rng.integers(0, len(audio) - n)) for n in lengths]
    return [EmbeddingRequest("s", i, 0, s, audio[s:s + n]) for i, (s, n) in enumerate(zip(starts, lengths))]


def outputs(results: list[Any]) -> np.ndarray:
    return np.concatenate([np.ravel(r.scores if hasattr(r, "scores") else r.embedding) for r in results])


def block(run: Callable[[list[Any]], list[Any]], calls: list[list[Any]]) -> tuple[float, list[np.ndarray]]:
    started = time.process_time()
    out = [outputs(run(requests)) for requests in calls]
    return time.process_time() - started, out


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    audio = sample_audio()
    rows = []
    for model in args.models.split(","):
        engines = load(model)
        for shape in getattr(args, f"{model.replace('-', '_')}_shapes").split(","):
            cpu: dict[str, list[float]] = {name: [] for name in engines}
            diff = 0.0
            first, second = engines
            for name, adapter in engines.items():  # warm-up
                adapter.run_batch(requests_for(model, adapter, shape, audio, 0))
            for round_ in range(args.rounds):
                calls = [requests_for(model, engines[first], shape, audio,
                                      1 + args.calls * round_ + c if model == "pyannet-streams" else 1000 * round_ + c)
                         for c in range(args.calls)]
                out = {}
                for name, adapter in engines.items():
                    seconds, out[name] = block(adapter.run_batch, calls)
                    cpu[name].append(seconds)
                diff = max(diff, max(float(np.abs(a - b).max()) for a, b in zip(out[first], out[second])))
            batch = int(shape.split("x")[0])
            row: dict[str, Any] = {
                "model": model, "shape": shape, "batch": batch, "calls_per_block": args.calls,
                "cpu_ms_per_call": {n: 1000 * statistics.median(v) / args.calls for n, v in cpu.items()},
                "cpu_ms_per_request": {n: 1000 * statistics.median(v) / args.calls / batch for n, v in cpu.items()},
                "max_abs_diff": diff}
            row["variants"] = [first, second]
            row[f"{first}_over_{second}"] = row["cpu_ms_per_call"][first] / row["cpu_ms_per_call"][second]
            print(f"{model:15s} {shape:8s} {first} {row['cpu_ms_per_call'][first]:8.2f} ms  {second} "
                  f"{row['cpu_ms_per_call'][second]:8.2f} ms  x{row[f'{first}_over_{second}']:.2f}  max|d| {diff:.1e}",
                  file=sys.stderr, flush=True)
            rows.append(row)
    result = {"benchmark": "diarization_engines", "command": command_line("diarization_engines"),
              "machine": machine_info(), "threads": 1, "rounds": args.rounds, "shapes": rows}
    path = write_result("diarization-engines", result, args.out_dir)
    panels = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        panels.append({"x": list(range(len(mine))), "xlabel": f"{model}: " + " ".join(r["shape"] for r in mine),
                       "ylabel": "CPU ms per call", "series": {n: [r["cpu_ms_per_call"][n] for r in mine]
                                                              for n in mine[0]["variants"]}})
    plot_panels(path.with_suffix(".png"), "Diarization models: torch vs ONNX Runtime (CPU, 1 thread)", panels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
