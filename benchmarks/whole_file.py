"""Whole-file mode speed: a composed recording of real voices through ``rechka-transcribe``'s path, timed per model.

    python -m benchmarks.whole_file                                    # 30 min, 5 real speakers, random:v2_ctc
    python -m benchmarks.whole_file --minutes 3 --asr-engine onnx --asr-quantize int8

The recording is composed by :mod:`benchmarks.compose` from ``/work/shared/speech/speakers`` (real voices, known
turns; written under ``benchmarks/out/composed``, never into the repository) and transcribed by
:func:`clients.transcribe.transcribe` (VAD + diarization + GigaAM, in-process, large batches). Reports wall time,
RTF (wall / audio), each model's busy seconds and batch sizes, and the DER of the settled speakers the output files
carry against the composed reference. Prints JSON and writes it to ``benchmarks/out/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import OUT_DIR, command_line, write_result
from benchmarks.server_process import machine_info
from clients.transcribe import WHOLE_FILE_STEP


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--speakers", type=int, default=5)
    p.add_argument("--seed", type=int, default=300)
    p.add_argument("--asr-model", default="random:v2_ctc")
    p.add_argument("--asr-engine", choices=("auto", "torch", "onnx"), default="auto")
    p.add_argument("--asr-quantize", choices=("auto", "none", "int8"), default="auto")
    p.add_argument("--asr-batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--diarization-step", type=float, default=WHOLE_FILE_STEP,
                   help=f"seconds (default rechka-transcribe's {WHOLE_FILE_STEP:g}; the live step is 0.5)")
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    return p.parse_args(argv)


class Timed:
    """A batch function that adds up its busy seconds, calls and requests."""

    def __init__(self, run: Callable[[list], list]) -> None:
        self.run, self.seconds, self.calls, self.requests = run, 0.0, 0, 0

    def __call__(self, requests: list) -> list:
        started = time.perf_counter()
        try:
            return self.run(requests)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1
            self.requests += len(requests)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    from benchmarks.compose import OUT_DIR as COMPOSED, compose
    from benchmarks.der import load_reference, score, to_annotation
    from clients.transcribe import session_config, transcribe
    from server.models.registry import load_models
    from streaming.config import SAMPLE_RATE

    name = f"real_{args.speakers}spk_{args.minutes:g}min_s{args.seed}"
    wav = COMPOSED / f"{name}.wav"
    if not wav.is_file():
        compose(args.speakers, args.minutes, args.seed, source="real", name=name).write(COMPOSED)
    started = time.perf_counter()
    torch.manual_seed(0)
    models = load_models(args.asr_model, device="cpu", max_batch=args.asr_batch, asr_engine=args.asr_engine,
                         asr_quantize=None if args.asr_quantize == "none" else args.asr_quantize,
                         threads=args.threads)
    load_s = time.perf_counter() - started
    timers = {kind: Timed(models.models[kind].run_batch) for kind in models.models}
    for kind, timer in timers.items():
        models.models[kind].run_batch = timer  # type: ignore[method-assign]
    config = session_config(models, step=args.diarization_step)
    started, cpu_started = time.perf_counter(), time.process_time()
    (captions,) = transcribe([wav], models, config, args.asr_batch)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    audio_s = (captions.end.audio_samples if captions.end else 0) / SAMPLE_RATE
    turns = [(t.speaker, t.start / SAMPLE_RATE, t.end / SAMPLE_RATE) for t in captions.speaker_turns()]
    result: dict[str, Any] = {
        "benchmark": "whole_file", "command": command_line("whole_file"), "machine": machine_info(),
        "recording": str(wav), "audio_seconds": audio_s, "wall_seconds": wall, "rtf": wall / audio_s,
        "cpu_seconds": cpu, "cpu_seconds_per_audio_second": cpu / audio_s,
        "mean_cores_used": cpu / wall,
        "load_seconds": load_s, "threads": args.threads, "finals": len(captions.finals), "revisions": captions.revisions,
        "speakers": len(captions.speakers), "diarization_step_s": config.diarizer.step / SAMPLE_RATE,
        "models": {k: {"busy_seconds": t.seconds, "rtf": t.seconds / audio_s, "calls": t.calls,
                       "mean_batch": t.requests / max(t.calls, 1)} for k, t in timers.items()},
        "asr": models.asr.describe(),
        "diarization": score(load_reference(wav.with_suffix(".rttm")), to_annotation(turns), audio_s),
    }
    write_result("whole_file", result, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
