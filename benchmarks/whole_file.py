"""Whole-file mode speed: a composed recording of real voices through ``rechka-transcribe``'s path, timed per model.

    python -m benchmarks.whole_file                                    # 30 min, 5 real speakers, random:v2_ctc
    python -m benchmarks.whole_file --minutes 3 --asr-engine onnx --asr-quantize int8
    python -m benchmarks.whole_file --minutes 5 --variant sequential --variant overlap,asr=1,torch=1,lanes=2 --repeat 2

The recording is composed by :mod:`benchmarks.compose` from ``/work/shared/speech/speakers`` (real voices, known
turns; written under ``benchmarks/out/composed``, never into the repository) and transcribed by
:func:`clients.transcribe.transcribe` (VAD + diarization + GigaAM, in-process, large batches). Reports wall time,
RTF (wall / audio), each model's busy seconds and batch sizes, and the DER of the settled speakers the output files
carry against the composed reference. Prints JSON and writes it to ``benchmarks/out/``.

``--variant overlap|sequential[,asr=N][,torch=N][,lanes=N][,lead=SECONDS]`` (repeatable) compares drivers side by
side in one process, the models loaded once: ``overlap`` (rechka-transcribe's default: GigaAM beside diarization
and the VAD) or ``sequential``, with GigaAM's ONNX Runtime intra-op threads, torch's (the other models'), the
overlapped driver's GigaAM batches at once and its ``diarization_lead`` (default
``server.offline.DIARIZATION_LEAD``); variants run
interleaved, ``--repeat`` rounds, and each run's output files are compared with the first run's
(``same_outputs``). ``summary`` gives each variant's median and its ratio to the first variant.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import OUT_DIR, command_line, write_result
from benchmarks.server_process import machine_info
from clients.transcribe import WHOLE_FILE_STEP, thread_plan
from server.offline import DIARIZATION_LEAD


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--speakers", type=int, default=5)
    p.add_argument("--seed", type=int, default=300)
    p.add_argument("--asr-model", default="random:v2_ctc")
    p.add_argument("--asr-engine", choices=("auto", "torch", "onnx"), default="auto")
    p.add_argument("--asr-quantize", choices=("auto", "none", "int8"), default="auto")
    p.add_argument("--asr-batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="cores (rechka-transcribe's --threads)")
    p.add_argument("--variant", action="append", dest="variants", metavar="MODE[,KEY=VALUE...]",
                   help=f"{Variant.FORM} (default: one overlap run as rechka-transcribe's); repeat to compare")
    p.add_argument("--repeat", type=int, default=1, help="rounds of the variants, interleaved")
    p.add_argument("--diarization-step", type=float, default=WHOLE_FILE_STEP,
                   help=f"seconds (default rechka-transcribe's {WHOLE_FILE_STEP:g}; the live step is 0.5)")
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = p.parse_args(argv)
    try:
        args.variants = [Variant.parse(v, args.threads) for v in args.variants or ["overlap"]]
    except ValueError as e:
        p.error(str(e))
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    return args


@dataclass(frozen=True)
class Variant:
    """One way to drive the file: ``overlap`` or not, GigaAM's intra-op threads (``asr``), torch's (``torch``: the
    other models'), GigaAM batches at once (``lanes``) and the diarization lead in seconds (``lead``)."""

    overlap: bool
    asr: int
    torch: int
    lanes: int = 1
    lead: float = DIARIZATION_LEAD

    FORM = "overlap|sequential[,asr=N][,torch=N][,lanes=N][,lead=SECONDS]"

    @classmethod
    def parse(cls, text: str, threads: int) -> "Variant":
        """Unset values are rechka-transcribe's (:func:`clients.transcribe.thread_plan` for ``threads`` cores)."""
        mode, *pairs = text.split(",")
        plan = thread_plan(threads, overlap=mode == "overlap")
        values: dict[str, float] = {"asr": plan.asr, "torch": plan.torch, "lanes": plan.asr_lanes,
                                    "lead": DIARIZATION_LEAD}
        try:
            for pair in pairs:
                key, value = pair.split("=")
                if key not in values or float(value) < (0 if key == "lead" else 1):
                    raise ValueError(pair)
                values[key] = float(value) if key == "lead" else int(value)
        except ValueError:
            raise ValueError(f"--variant {text!r}: use {cls.FORM}") from None
        if mode not in ("overlap", "sequential") or (mode == "sequential" and values["lanes"] != 1):
            raise ValueError(f"--variant {text!r}: use {cls.FORM} (lanes only with overlap)")
        return cls(mode == "overlap", int(values["asr"]), int(values["torch"]), int(values["lanes"]),
                   float(values["lead"]))

    @property
    def name(self) -> str:
        if not self.overlap:
            return f"sequential,asr={self.asr},torch={self.torch}"
        return f"overlap,asr={self.asr},torch={self.torch},lanes={self.lanes},lead={self.lead:g}"


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


def run_variant(variant: Variant, models: Any, timers: dict[str, Timed], wav: Path, config: Any,
                asr_batch: int) -> tuple[dict[str, Any], str, list]:
    """One timed run; returns its row, the digest of its output files' content, and its speaker turns."""
    import torch

    from clients import formats
    from clients.transcribe import transcribe
    from streaming.config import SAMPLE_RATE

    torch.set_num_threads(variant.torch)
    set_threads = getattr(models.asr, "set_threads", None)
    if set_threads is not None:
        set_threads(variant.asr)
    elif variant.asr != variant.torch:
        raise SystemExit("GigaAM's own thread count needs the onnx engine (--asr-engine onnx)")
    for timer in timers.values():
        timer.seconds, timer.calls, timer.requests = 0.0, 0, 0
    started, cpu_started = time.perf_counter(), time.process_time()
    driver = {"diarization_lead": variant.lead, "asr_lanes": variant.lanes} if variant.overlap else {}
    (captions,) = transcribe([wav], models, config, asr_batch, overlap=variant.overlap, **driver)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    audio_s = (captions.end.audio_samples if captions.end else 0) / SAMPLE_RATE
    finals = sorted(captions.finals, key=lambda f: (f.start, f.channel))
    turns = captions.speaker_turns()
    digest = hashlib.sha256("\n".join((formats.to_json(finals, turns, captions.end), formats.to_srt(finals),
                                        formats.to_rttm(turns, "x"))).encode()).hexdigest()
    row = {"variant": variant.name, "overlap": variant.overlap, "asr_threads": variant.asr,
           "torch_threads": variant.torch, "asr_lanes": variant.lanes, "diarization_lead_s": variant.lead,
           "audio_seconds": audio_s, "wall_seconds": wall,
           "rtf": wall / audio_s, "cpu_seconds": cpu, "cpu_seconds_per_audio_second": cpu / audio_s,
           "mean_cores_used": cpu / wall, "finals": len(captions.finals), "revisions": captions.revisions,
           "speakers": len(captions.speakers), "outputs_sha256": digest,
           "finals_without_speaker": sum(1 for f in captions.finals if not f.speaker),
           "peak_rss_mb_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "models": {k: {"busy_seconds": t.seconds, "rtf": t.seconds / audio_s, "calls": t.calls,
                          "mean_batch": t.requests / max(t.calls, 1)} for k, t in timers.items()}}
    return row, digest, [(t.speaker, t.start / SAMPLE_RATE, t.end / SAMPLE_RATE) for t in turns]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    from benchmarks.compose import OUT_DIR as COMPOSED, compose
    from benchmarks.der_scoring import load_reference, score, to_annotation
    from clients.transcribe import session_config
    from server.models.registry import load_models

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
    reference = load_reference(wav.with_suffix(".rttm"))
    runs: list[dict[str, Any]] = []
    first: Optional[str] = None
    for round_ in range(args.repeat):
        for variant in args.variants:
            row, digest, turns = run_variant(variant, models, timers, wav, config, args.asr_batch)
            first = first or digest
            row.update(round=round_, same_outputs=digest == first,
                       diarization=score(reference, to_annotation(turns), row["audio_seconds"]))
            runs.append(row)
            print(f"{row['variant']}: wall {row['wall_seconds']:.1f} s, RTF {row['rtf']:.4f}, "
                  f"{row['cpu_seconds_per_audio_second']:.3f} CPU-s/s, same outputs {row['same_outputs']}",
                  file=sys.stderr)
    summary = {}
    base = None
    for variant in args.variants:
        mine = [r for r in runs if r["variant"] == variant.name]
        wall = statistics.median(r["wall_seconds"] for r in mine)
        base = base or wall
        summary[variant.name] = {"median_wall_seconds": wall, "median_rtf": wall / mine[0]["audio_seconds"],
                                 "median_cpu_seconds_per_audio_second":
                                     statistics.median(r["cpu_seconds_per_audio_second"] for r in mine),
                                 "wall_ratio_to_first": wall / base}
    result: dict[str, Any] = {
        "benchmark": "whole_file", "command": command_line("whole_file"), "machine": machine_info(),
        "recording": str(wav), "load_seconds": load_s, "threads": args.threads,
        "diarization_step_s": config.diarizer.step / 16000, "asr": models.asr.describe(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **{k: runs[0][k] for k in ("audio_seconds", "wall_seconds", "rtf", "cpu_seconds_per_audio_second",
                                   "mean_cores_used", "finals", "speakers", "diarization")},
        "all_same_outputs": all(r["same_outputs"] for r in runs), "summary": summary, "runs": runs,
    }
    write_result("whole_file", result, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
