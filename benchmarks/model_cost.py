"""Where a stream's compute goes: each model's ``run_batch`` timed in-process, turned into cost per stream-second.

    python -m benchmarks.model_cost                               # cpu, full-size GigaAM with random weights
    python -m benchmarks.model_cost --device cuda --batch 1,16,64

Loads the four adapters as the server does (``server.models.registry.load_models``), times ``run_batch`` on typical
requests (real speech) at each ``--batch`` size, and combines them with the request rates one stream causes at the
default session configuration (``streaming.config`` defaults):

- VAD: one request per ``--vad-chunks`` × 512 samples (what a client sending 50-100 ms messages causes);
- segmentation: one 5 s window every ``DiarizationOptions.step``;
- embedding: one per window and active speaker (``--speakers-per-window``), on ``--speech-fraction`` of the window;
- ASR: finals over the speech (``--utterance`` s each) and partials up to ``PartialOptions.budget_ratio`` × the speech
  in windows of at most ``max_window``.

``device_seconds_per_stream_second`` is the busy time one real-time stream adds; its inverse is the number of streams
one device could carry with perfect batching and nothing else running (an upper bound for ``load.py --search``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

if __package__ in (None, ""):  # run as a file: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import OUT_DIR, SAMPLE_RATE, command_line, speech_corpus, write_result
from benchmarks.server_process import machine_info
from server.models.gigaam_models import DEFAULT_MODEL


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--asr-model", default=f"random:{DEFAULT_MODEL}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", default="1,4", help="batch sizes to time, comma-separated")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per model and batch size (median kept)")
    p.add_argument("--vad-chunks", type=int, default=2, help="512-sample chunks per VAD request")
    p.add_argument("--utterance", type=float, default=5.0, help="seconds per final")
    p.add_argument("--speech-fraction", type=float, default=0.8, help="share of the audio that is speech")
    p.add_argument("--speakers-per-window", type=float, default=1.0)
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    p.add_argument("--speech-dir", type=Path)
    args = p.parse_args(argv)
    args.batches = sorted({int(b) for b in args.batch.split(",") if b.strip()})
    if not args.batches or args.batches[0] < 1 or not 0 < args.speech_fraction <= 1:
        p.error("--batch needs positive integers and --speech-fraction must be in (0, 1]")
    return args


def workload(args: argparse.Namespace) -> dict[str, tuple[float, int]]:
    """Per model: (requests per stream-second, samples per request) at the default session configuration."""
    from streaming.config import VAD_CHUNK, DiarizationOptions, PartialOptions

    diar, partials, f = DiarizationOptions(), PartialOptions(), args.speech_fraction
    utterance = int(args.utterance * SAMPLE_RATE)
    partial_window = min(partials.max_window, utterance)
    return {
        "vad": (SAMPLE_RATE / (args.vad_chunks * VAD_CHUNK), args.vad_chunks * VAD_CHUNK),
        "segmentation": (SAMPLE_RATE / diar.step, diar.window),
        "embedding": (SAMPLE_RATE / diar.step * args.speakers_per_window, int(diar.window * f)),
        "asr_final": (f * SAMPLE_RATE / utterance, utterance),
        "asr_partial": (partials.budget_ratio * f * SAMPLE_RATE / partial_window, partial_window),
    }


def make_requests(kind: str, batch: int, samples: int, audio: np.ndarray) -> list[Any]:
    """``batch`` requests of ``kind`` over different excerpts of ``audio`` (float32 at 16 kHz)."""
    from streaming.work import (AsrKind, AsrRequest, EmbeddingRequest, Priority, SegmentationRequest,
                                VadRequest)

    out: list[Any] = []
    for i in range(batch):
        start = (i * 7919 * SAMPLE_RATE // 10) % (len(audio) - samples)
        x = np.ascontiguousarray(audio[start:start + samples])
        sid = f"cost-{i}"
        if kind == "vad":
            out.append(VadRequest(sid, i, 0, 0, x))
        elif kind == "segmentation":
            out.append(SegmentationRequest(sid, i, 0, 0, x))
        elif kind == "embedding":
            out.append(EmbeddingRequest(sid, i, 0, 0, x))
        else:
            final = kind == "asr_final"
            out.append(AsrRequest(sid, i, 0, 0, x, utterance_id=0, kind=AsrKind.FINAL if final else AsrKind.PARTIAL,
                                  priority=Priority.FINAL if final else Priority.PARTIAL))
    return out


def time_call(call: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of ``call`` over ``repeats`` runs after one untimed run."""
    call()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from server.models.registry import load_models

    corpus = speech_corpus(args.speech_dir)
    audio = corpus.excerpt(0, 120 * SAMPLE_RATE).astype(np.float32) / 32768.0
    models = load_models(args.asr_model, device=args.device, max_batch=max(args.batches)).models
    rates = workload(args)
    table: dict[str, dict[str, Any]] = {}
    for kind, (rate, samples) in rates.items():
        model = models["asr" if kind.startswith("asr") else kind]
        per_request = {}
        for b in args.batches:
            requests = make_requests(kind, b, samples, audio)
            per_request[b] = time_call(lambda: model.run_batch(requests), args.repeats) / b
            print(f"[cost] {kind:12s} batch {b:3d}: {per_request[b] * 1000:8.1f} ms per request "
                  f"({samples / SAMPLE_RATE:.2f} s of audio)", file=sys.stderr, flush=True)
        table[kind] = {"requests_per_stream_second": round(rate, 3), "audio_s_per_request": samples / SAMPLE_RATE,
                       "ms_per_request": {b: round(t * 1000, 2) for b, t in per_request.items()},
                       "device_s_per_stream_second": {b: round(rate * t, 4) for b, t in per_request.items()}}
    totals = {b: round(sum(row["device_s_per_stream_second"][b] for row in table.values()), 4) for b in args.batches}
    result = {"benchmark": "model_cost", "command": command_line("model_cost"), "machine": machine_info(),
              "asr_model": args.asr_model, "asr_weights": "random" if args.asr_model.startswith("random:") else
              "trained", "device": args.device, "speech_fraction": args.speech_fraction, "models": table,
              "device_seconds_per_stream_second": totals,
              "streams_per_device_upper_bound": {b: round(1 / t, 2) if t else None for b, t in totals.items()}}
    write_result("model-cost", result, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
