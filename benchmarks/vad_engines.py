"""Silero VAD engines side by side in one run: torch (``server.models.vad``) and ONNX Runtime (``server.models.vad_onnx``).

    python -m benchmarks.vad_engines                         # shapes 1x1,3x1,1x4,3x4,128x1,128x4, 1 thread
    python -m benchmarks.vad_engines --shapes 1x4,3x4 --rounds 10 --calls 200

A shape ``CHUNKSxBATCH`` is a batch of BATCH streams' requests of CHUNKS 512-sample chunks each (live streams send
1-3 chunks a request; a replay or a backlog up to 128, ``streaming.session.MAX_VAD_CHUNKS``), cut from pyannote's
``sample.wav`` (real speech) with each stream's state chained from call to call. Per shape the engines alternate in
``--rounds`` blocks of ``--calls`` calls, so machine noise hits them alike; each block's process CPU time
(``time.process_time``: every thread of the process) gives CPU ms per call and CPU-s per audio second, reported as
the median block with its ratio torch / onnx. Accuracy: max |Δ probability| between the engines on the same calls.
Both engines run on one intra-op thread (the server's default ``--model-threads 1``). Prints JSON, writes it and a
plot to ``benchmarks/out/``.
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

from benchmarks.common import OUT_DIR, SAMPLE_RATE, command_line, plot_panels, read_wav, write_result
from benchmarks.server_process import machine_info


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="1x1,3x1,1x4,3x4,128x1,128x4", help="CHUNKSxBATCH, comma-separated")
    p.add_argument("--rounds", type=int, default=7, help="alternated blocks per engine and shape")
    p.add_argument("--calls", type=int, default=100, help="calls per block (128-chunk shapes: a tenth)")
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    return p.parse_args(argv)


def sample_audio() -> np.ndarray:
    import pyannote.audio

    return read_wav(Path(pyannote.audio.__file__).parent / "sample" / "sample.wav").astype(np.float32) / 32768


def block(model: Any, audio: np.ndarray, chunks: int, batch: int, calls: int, states: list) -> tuple[float, list]:
    """``calls`` consecutive batches (stream i reads the file from its own offset, wrapping); CPU seconds, probs."""
    from streaming.config import VAD_CHUNK
    from streaming.work import VadRequest

    size = chunks * VAD_CHUNK
    span = len(audio) // size
    probs = []
    started = time.process_time()
    for call in range(calls):
        requests = [VadRequest(f"s{i}", call, 0, 0, audio[((call + 7 * i) % span) * size:][:size], states[i])
                    for i in range(batch)]
        results = model.run_batch(requests)
        states = [r.state for r in results]
        probs.append(np.concatenate([r.probs for r in results]))
    return time.process_time() - started, probs


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    from server.models.vad import VadModel
    from server.models.vad_onnx import OnnxVadModel
    from streaming.config import VAD_CHUNK

    torch.set_num_threads(1)
    engines = {"torch": VadModel("cpu"), "onnx": OnnxVadModel("cpu", threads=1)}
    audio = sample_audio()
    rows = []
    for spec in args.shapes.split(","):
        chunks, batch = (int(v) for v in spec.lower().split("x"))
        calls = max(1, args.calls // 10) if chunks >= 64 else args.calls
        cpu: dict[str, list[float]] = {name: [] for name in engines}
        for name, model in engines.items():
            block(model, audio, chunks, batch, 3, [None] * batch)  # warm-up
        diff = 0.0
        for _ in range(args.rounds):
            outputs = {}
            for name, model in engines.items():
                seconds, outputs[name] = block(model, audio, chunks, batch, calls, [None] * batch)
                cpu[name].append(seconds)
            diff = max(diff, max(float(np.abs(a - b).max()) for a, b in zip(outputs["torch"], outputs["onnx"])))
        audio_s = calls * batch * chunks * VAD_CHUNK / SAMPLE_RATE
        row: dict[str, Any] = {"shape": spec, "chunks": chunks, "batch": batch, "calls_per_block": calls,
                               "cpu_ms_per_call": {n: 1000 * statistics.median(v) / calls for n, v in cpu.items()},
                               "cpu_s_per_audio_s": {n: statistics.median(v) / audio_s for n, v in cpu.items()},
                               "max_abs_prob_diff": diff}
        row["torch_over_onnx"] = row["cpu_ms_per_call"]["torch"] / row["cpu_ms_per_call"]["onnx"]
        rows.append(row)
    result = {"benchmark": "vad_engines", "command": command_line("vad_engines"), "machine": machine_info(),
              "threads": 1, "rounds": args.rounds, "shapes": rows}
    path = write_result("vad-engines", result, args.out_dir)
    plot_panels(path.with_suffix(".png"), "Silero VAD: torch vs ONNX Runtime (CPU, 1 thread)", [
        {"x": list(range(len(rows))), "xlabel": "shape " + " ".join(r["shape"] for r in rows),
         "ylabel": "CPU ms per call", "series": {n: [r["cpu_ms_per_call"][n] for r in rows] for n in engines}},
        {"x": list(range(len(rows))), "xlabel": "shape " + " ".join(r["shape"] for r in rows),
         "ylabel": "CPU-s per audio second", "series": {n: [r["cpu_s_per_audio_s"][n] for r in rows]
                                                        for n in engines}}])
    return 0


if __name__ == "__main__":
    sys.exit(main())
