"""``rechka-transcribe``: whole files transcribed in this process, as fast as the machine allows, no server.

    rechka-transcribe meeting.mp3 call.wav --out-dir out/
    rechka-transcribe *.ogg --out-dir out/ --device cuda --formats srt,txt

Each file (anything ffmpeg reads, mixed to 16 kHz mono) goes through the same :class:`~streaming.session.Session`
and the same models as a live stream (Silero VAD, diarization, GigaAM), loaded once and audited as the server
does (:func:`server.models.registry.load_models`); :func:`server.offline.drive_whole` feeds the files side by side
in large chunks and batches every model's work across them (finals ``--asr-batch`` at a time), GigaAM and
diarization each in its own threads beside the VAD (:func:`thread_plan`; ``--sequential``: one after another, the
same results). Partials are off; every final is labelled by the finished diarization. Writes ``<stem>.json``, ``.srt``, ``.vtt``, ``.rttm`` and
``.txt`` per file, as ``rechka-stream`` does. Exit status: 0 done, 1 a file or model failed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from streaming import wire
from streaming.config import SessionConfig, ms

from clients.captions import LiveCaptions
from clients.sources import SourceError, decode_file
from clients.stream import OUTPUT_FORMATS, parse_formats, write_outputs
from server.models.gigaam_models import DEFAULT_MODEL

__all__ = ["main", "build_parser", "thread_plan", "transcribe"]

MAX_PARALLEL = 4  # files decoded and driven side by side (their audio is held in memory)
# Seconds between diarization windows of a whole file, on any device: twice the diarizer's 0.5 s (a live server's
# step on CUDA; a CPU server's default is 1 s too, server.config.CPU_DIARIZATION_STEP). On a composed 30-minute
# conversation of 5 real voices (docs/benchmarks.md, whole-file mode) it cut the process's CPU time by 20 % with the
# same 6 labels, DER .328 vs .326 (collar 0), confusion .0018 vs .0024 and 11 flips instead of 19;
# --diarization-step 0.5 is the finer step.
WHOLE_FILE_STEP = 1.0


@dataclass(frozen=True)
class ThreadPlan:
    """How a whole-file run spends its cores: torch's intra-op threads (the VAD, diarization, and GigaAM on the torch
    engine), GigaAM's ONNX Runtime intra-op threads, and GigaAM batches decoded at once (overlapped driver)."""

    torch: int
    asr: int
    asr_lanes: int


def thread_plan(cores: int, overlap: bool = True, own_asr_threads: bool = True) -> ThreadPlan:
    """The plan for ``cores``. Overlapped, with a GigaAM engine that takes its own thread count (ONNX Runtime on the
    CPU): every core for torch's models, and one GigaAM batch per core at once, one thread each — on a composed
    5-minute file (docs/benchmarks.md) 33.7 s against 38.3 s for one batch at a time on every core, and 46.8 s
    with the models one after another (every core for each call: the plan otherwise)."""
    if overlap and own_asr_threads:
        return ThreadPlan(cores, 1, cores)
    return ThreadPlan(cores, cores, 1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rechka-transcribe", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, help="audio/video files ffmpeg can read")
    p.add_argument("--out-dir", type=Path, required=True, help="where transcripts go")
    p.add_argument("--formats", default=",".join(OUTPUT_FORMATS),
                   help=f"comma-separated subset of {','.join(OUTPUT_FORMATS)}")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--asr-model", default=DEFAULT_MODEL,
                   help=f"GigaAM model name or checkpoint path (default {DEFAULT_MODEL}; see docs/models.md)")
    p.add_argument("--asr-engine", choices=("auto", "torch", "onnx"), default="auto",
                   help="GigaAM encoder engine (default auto: onnx on the CPU, as rechka-server)")
    p.add_argument("--asr-quantize", choices=("auto", "none", "int8"), default="auto",
                   help="int8 GigaAM on the CPU (default auto: int8 with the onnx engine)")
    p.add_argument("--segmentation-model", default=None, help="as rechka-server's flag (default: the server's)")
    p.add_argument("--embedding-model", default=None, help="as rechka-server's flag (default: the server's)")
    p.add_argument("--asr-batch", type=int, default=32, help="finals decoded per GigaAM batch (default 32)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="cores to keep busy (default: every core this process may use): each CPU model call's "
                        "intra-op threads, and with the ONNX engine as many GigaAM batches at once")
    p.add_argument("--sequential", action="store_true",
                   help="run the models one after another instead of side by side (same results, slower)")
    p.add_argument("--no-diarization", action="store_true", help="do not label speakers")
    p.add_argument("--diarization-step", type=float, default=WHOLE_FILE_STEP,
                   help=f"seconds between diarization windows (default {WHOLE_FILE_STEP:g}; live streams use 0.5, "
                        "which costs the diarization models twice as much)")
    p.add_argument("--max-speakers", type=int, help="upper bound on distinct speakers")
    p.add_argument("--allow-random-weights", action="store_true",
                   help="accept random:<name> models (speed measurements only: the text is garbage)")
    return p


def session_config(models: Any, diarization: bool = True, max_speakers: Optional[int] = None,
                   step: Optional[float] = WHOLE_FILE_STEP) -> SessionConfig:
    """The session of a whole file: no partials and no speculative finals (nobody waits for a final: a missed
    speculation would only cost), diarization fitted to the models as the server fits it, final speaker turns kept
    (the ``.rttm`` is diarization's, not the words'), and every final turn (``history=None``: the finals come at
    the end, :func:`server.offline.drive_whole`); ``step`` in seconds (``None``: the live step)."""
    from server.models.registry import fit_diarizer

    base = SessionConfig(interim_results=False, speculative_finals=False, diarization=diarization,
                         speaker_turns=diarization)
    diarizer = dataclasses.replace(fit_diarizer(base.diarizer, models.segmentation, models.embedding), history=None)
    if max_speakers is not None:
        diarizer = dataclasses.replace(diarizer, max_speakers=max_speakers)
    if step is not None:
        diarizer = diarizer.at_step(ms(1000 * step))
    return dataclasses.replace(base, diarizer=diarizer)


def transcribe(paths: Sequence[Path], models: Any, config: SessionConfig, asr_batch: int = 32,
               parallel: int = MAX_PARALLEL, overlap: bool = True, **driver: Any) -> list[LiveCaptions]:
    """Transcribe ``paths`` with loaded ``models`` (a :class:`~server.models.registry.Models`); one
    :class:`LiveCaptions` per file, in order (their ``finals`` carry the settled speakers). ``overlap``: GigaAM,
    diarization and the VAD run side by side (``drive_whole(overlap=True)``: the same batches, so the same
    results); ``False`` runs them one after another. ``driver``: more of ``drive_whole``'s options."""
    from server.offline import drive_whole, run_requests_by_kind
    from streaming.session import Session
    from streaming.work import AsrRequest, EmbeddingRequest, SegmentationRequest, VadRequest

    run = run_requests_by_kind({VadRequest: models.vad.run_batch, SegmentationRequest: models.segmentation.run_batch,
                                EmbeddingRequest: models.embedding.run_batch, AsrRequest: models.asr.run_batch})
    out: list[LiveCaptions] = []
    for first in range(0, len(paths), parallel):
        group = paths[first:first + parallel]
        audios = [decode_file(p) for p in group]
        sessions = [Session(f"file-{first + i}", config) for i in range(len(group))]
        for events in drive_whole(sessions, audios, run, asr_batch=asr_batch, overlap=overlap, **driver):
            captions = LiveCaptions()
            captions.new_session(0)
            for event in events:
                captions.receive(event)
            out.append(captions)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        which = parse_formats(args.formats)
    except ValueError as e:
        parser.error(str(e))
    if args.asr_batch < 1:
        parser.error("--asr-batch must be >= 1")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.max_speakers is not None and not 1 <= args.max_speakers <= 32:
        parser.error("--max-speakers must be between 1 and 32")
    missing = [str(p) for p in args.files if not p.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    from server.models.registry import load_models

    started = time.perf_counter()
    chosen = {k: v for k, v in (("segmentation", args.segmentation_model), ("embedding", args.embedding_model)) if v}
    try:
        models = load_models(args.asr_model, device=args.device, max_batch=args.asr_batch,
                             asr_quantize=None if args.asr_quantize == "none" else args.asr_quantize,
                             asr_engine=args.asr_engine, threads=args.threads, **chosen)
    except Exception as exc:  # weights, device or placement: the message says what to do
        print(f"rechka-transcribe: the models cannot be loaded:\n\n{exc}", file=sys.stderr)
        return 1
    set_threads = getattr(models.asr, "set_threads", None) if models.asr.device.type == "cpu" else None
    plan = thread_plan(args.threads, not args.sequential, set_threads is not None)
    if set_threads is not None:
        set_threads(plan.asr)
    if models.asr.describe().get("random_weights") and not args.allow_random_weights:
        print("rechka-transcribe: the ASR model has random weights (garbage text); pass --allow-random-weights "
              "to run it anyway (speed measurements only)", file=sys.stderr)
        return 1
    loaded = time.perf_counter()
    try:
        base = session_config(models, not args.no_diarization, args.max_speakers, args.diarization_step)
    except ValueError as e:
        parser.error(str(e))
    try:
        results = transcribe(args.files, models, base, args.asr_batch, overlap=not args.sequential,
                             **({"asr_lanes": plan.asr_lanes} if not args.sequential else {}))
    except SourceError as exc:
        print(f"rechka-transcribe: {exc}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - loaded
    audio = sum((c.end.audio_samples if c.end else 0) for c in results) / wire.SAMPLE_RATE
    for path, captions in zip(args.files, results):
        extra = {"source": str(path), "mode": "whole-file", "models": {k: m.describe() for k, m in
                                                                        models.models.items()}}
        written = write_outputs(captions, args.out_dir, path.stem, which, extra)
        print(f"{path}: {len(captions.finals)} finals, {len(captions.speakers)} speakers -> "
              f"{', '.join(str(p) for p in written)}", file=sys.stderr)
    print(f"rechka-transcribe: {audio:.1f} s of audio in {wall:.1f} s (RTF {wall / max(audio, 1e-9):.3f}; "
          f"models loaded in {loaded - started:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
