"""Partials with left context at no re-encoding: a cached chunked GigaAM encoder against today's policies.

    python -m benchmarks.partial_cache --held-out 60 --asr-model tests/assets/tiny_gigaam_ctc.ckpt

At ``budget_ratio`` 1.0 every partial window after an utterance's first one starts where the last one ended, so
today each decodes its audio without left context (docs/benchmarks.md, cheaper partials). Here a *cached* variant
(``PartialOptions.cached_context``) sends the same windows, but the ASR keeps one
:class:`~server.models.asr_cache.ChunkedEncoder` per utterance (``--asr-engine onnx``/``auto``: the ONNX Runtime
chunk graph's :class:`~server.models.asr_cache_onnx.OnnxChunkedEncoder`):
each window's new frames attend to every earlier frame's cached keys and values, its convolutions see the cached
left frames, and the partial text is the greedy CTC decode of all frames so far (so no word is cut at a window
edge). The final is the ordinary whole-utterance decode, unchanged; the cache is dropped there.
``CADENCE:LOOKAHEAD``: the last LOOKAHEAD encoder frames (40 ms each) of a window are provisional and pass the layers
again with the next window (right context, at a cost above 1.0); ``CADENCE:0:HIDE``: the newest HIDE frames' labels
are left out of the text shown (no compute; they show with the next decode); ``:LAG``: ``lookahead_lag`` in ms
(default the option's: lookahead is budget-aware, its repeats paid by ending windows earlier).

Variants (one run, interleaved per stream, the same 60 finals in all): the defaults (budget 1.5), budget 1.0
without context at cadence 1 s and 0.5 s, and the cached ones (``--cached CADENCE[:LOOKAHEAD]``, samples and
frames). Metrics as ``benchmarks/partials.py --speech`` (``benchmarks/partial_quality.py``), plus, for cached
variants, encoder frames passed through the Conformer layers per final frame (lookahead repeats included). Prints
JSON and writes ``benchmarks/out/partial-cache-<time>.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks.common import OUT_DIR, command_line, summarize, write_result
from benchmarks.partial_quality import SessionRun, final_wer, partial_quality
from benchmarks.partials import TimedAsr, speech_inputs, speech_utterances, variant_options
from server.models.asr_partials import PartialCaches
from streaming.config import PartialOptions
from streaming.work import AsrKind, AsrRequest, AsrResult


class CachedAsr:
    """What ``GigaAmAsr.run_batch`` does with cached partials (:class:`~server.models.asr_partials.PartialCaches`,
    one chunked encoder per utterance; finals through ``asr`` unchanged), counting each utterance's frames. ``frames``: per finished utterance, ``(Conformer frames encoded by
    its partials, frames of its final)``."""

    def __init__(self, asr: Any, hide: int = 0) -> None:
        self.asr = asr
        self.caches = PartialCaches(asr, hide=hide)
        self.frames: list[tuple[int, int]] = []

    @property
    def restarts(self) -> int:
        return self.caches.restarts

    def run_batch(self, requests: Sequence[AsrRequest]) -> list[AsrResult]:
        finals = [r for r in requests if r.kind == AsrKind.FINAL]
        done = {r.seq: res for r, res in zip(finals, self.asr.run_batch(finals))} if finals else {}
        for r in finals:
            encoder = self.caches.finished(r)
            if encoder is not None:
                self.frames.append((encoder.frames_encoded, self.asr.spec.frontend.frames(len(r.audio))
                                    // self.asr.spec.encoder.subsampling_factor))
        for r in requests:
            if r.kind == AsrKind.PARTIAL:
                assert r.cache_lookahead is not None, "a cached variant's partials carry cache_lookahead"
                done[r.seq] = self.caches.decode(r, r.cache_lookahead)
        return [done[r.seq] for r in requests]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--asr-model", default="tests/assets/tiny_gigaam_ctc.ckpt")
    p.add_argument("--asr-engine", choices=("auto", "torch", "onnx"), default="torch",
                   help="GigaAM's engine (auto: ONNX Runtime on the CPU); the cached variants use its chunk encoder")
    p.add_argument("--asr-quantize", choices=("auto", "none", "int8"), default="none")
    p.add_argument("--held-out", type=int, default=60, metavar="N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speech", action="store_true", help="the shared recordings instead of --held-out")
    p.add_argument("--speech-dir", type=Path, default=None)
    p.add_argument("--max-files", type=int, default=23)
    p.add_argument("--cached", action="append", default=None, metavar="CADENCE_MS[:LOOKAHEAD[:HIDE[:LAG_MS]]]",
                   help="a cached variant at budget 1.0 (repeatable; default 500, 1000, 500:2)")
    p.add_argument("--compare", action="append", default=None, metavar="FIELD=VALUE[,...]",
                   help="an uncached variant as in benchmarks.partials (default: budget 1.0 at cadence 1 s, 0.5 s)")
    p.add_argument("--wall", metavar="SECONDS", type=float, default=0,
                   help="instead: wall time of one utterance of SECONDS (noise) as cached chunks, as context-free "
                        "windows of the same sizes and as one final pass, with --asr-model (e.g. random:v2_ctc)")
    p.add_argument("--repeats", type=int, default=5, help="--wall: interleaved repeats (median reported)")
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    return p.parse_args(argv)


def wall_times(asr: Any, seconds: float, cadences: Sequence[int], repeats: int) -> dict[str, Any]:
    """Median wall seconds of one utterance's encoder work on the adapter's engine: the final pass; per cadence
    (ms) the same audio in first-partial + cadence pieces as cached chunks and as context-free windows (encoder
    only, log-mels included; the cached chunks include the CTC head)."""
    import time

    audio = (np.random.default_rng(0).standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)
    first = PartialOptions().first_partial

    def pieces(cadence: int) -> list[np.ndarray]:
        cuts = [0, first, *range(first + cadence * 16, len(audio), cadence * 16)]
        return [audio[a:b] for a, b in zip(cuts, cuts[1:] + [len(audio)])]

    def final() -> None:
        asr._encode([torch.from_numpy(audio)])

    def chunked(cadence: int) -> None:
        encoder = asr.chunk_encoder(0)  # torch ChunkedEncoder or the ONNX chunk graph's (CTC head included)
        for piece in pieces(cadence):
            encoder.step(piece)

    def windows(cadence: int) -> None:
        for piece in pieces(cadence):
            asr._encode([torch.from_numpy(piece)])

    runs: dict[str, Any] = {"final": final}
    for c in cadences:
        runs[f"cached chunks, cadence {c} ms"] = lambda c=c: chunked(c)
        runs[f"context-free windows, cadence {c} ms"] = lambda c=c: windows(c)
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for _ in range(repeats):
            for name, run in runs.items():
                began = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - began)
    med = {name: float(np.median(t)) for name, t in times.items()}
    return {name: {"median_s": round(t, 4), "over_final": round(t / med["final"], 3)} for name, t in med.items()}


Plan = dict[str, tuple[PartialOptions, Optional[int]]]


def variants(args: argparse.Namespace) -> Plan:
    """name → (options, ``hide`` of a cached variant or ``None``)."""
    out: Plan = {"defaults": (PartialOptions(), None)}
    for spec in args.compare or ["budget_ratio=1.0,cadence=16000", "budget_ratio=1.0,cadence=8000"]:
        out[f"no context, {spec}"] = (variant_options(spec)[0], None)
    for spec in args.cached or ["500", "1000", "500:2"]:
        given = spec.split(":")
        cadence, lookahead, hide, lag = given + ["1000", "0", "0", str(PartialOptions().lookahead_lag // 16)][len(given):]
        options = PartialOptions(budget_ratio=1.0, cadence=int(cadence) * 16, cached_context=True,
                                 cached_lookahead=int(lookahead), lookahead_lag=int(lag) * 16)
        name = f"cached, budget 1.0, cadence {cadence} ms, lookahead {lookahead}" + (f", hide {hide}" if int(hide) else "")
        name += f", lag {lag} ms" if int(lookahead) else ""
        out[name] = (options, int(hide))
    return out


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    from server.models.registry import asr_engine_for, load_asr
    from server.models.vad import VadModel

    torch.set_num_threads(1)
    engine, quantize = asr_engine_for("cpu", args.asr_engine, None if args.asr_quantize == "none" else args.asr_quantize)
    asr = load_asr(args.asr_model, "cpu", 1, quantize, engine)
    asr.warmup()
    if args.wall:
        result = {"benchmark": "partial-cache-wall", "command": command_line("partial_cache"), "asr": asr.describe(),
                  "seconds": args.wall, "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
                  "wall": wall_times(asr, args.wall, (500, 1000), args.repeats)}
        write_result("partial-cache-wall", result, args.out_dir)
        return result
    vad = VadModel("cpu")
    if not args.speech and not args.held_out:
        raise SystemExit("pass --held-out N or --speech")
    args.held_out = 0 if args.speech else args.held_out
    source, streams = speech_inputs(args)
    plan = variants(args)
    backends = {name: (CachedAsr(asr, hide) if hide is not None else asr) for name, (_, hide) in plan.items()}
    timers = {name: TimedAsr(backends[name].run_batch) for name in plan}
    rows: dict[str, list[dict]] = {name: [] for name in plan}
    runs: dict[str, list[SessionRun]] = {name: [] for name in plan}
    spoken = []
    for file, audio, clips in streams:
        for name, (options, _) in plan.items():
            utts, record = speech_utterances(audio, options, vad, asr, timers[name])
            rows[name] += [dict(u, file=file) for u in utts]
            runs[name].append(record)
        spoken.append((runs["defaults"][-1].finals, clips))
    summary: dict[str, Any] = {}
    for name, utts in rows.items():
        ratios = [u["partial_over_final"] for u in utts]
        delays = [u["first_partial_delay"] for u in utts if u["first_partial_delay"] is not None]
        entry: dict[str, Any] = {
            "utterances": len(utts), "partial_over_final": summarize(ratios),
            "max_partial_over_final": round(max(ratios), 4), "over_1": sum(r > 1.0 for r in ratios),
            "first_partial_delay_s": summarize(delays),
            "decodes_per_utterance_second": round(sum(u["decodes"] for u in utts) / sum(u["seconds"] for u in utts), 3),
            "quality": partial_quality(runs[name]),
        }
        backend = backends[name]
        if isinstance(backend, CachedAsr):
            frames = [a / b for a, b in backend.frames if b]
            entry["encoded_frames_over_final_frames"] = summarize(frames)
            entry["max_encoded_frames_over_final_frames"] = round(max(frames), 4) if frames else None
            entry["frames_over_1"] = sum(f > 1.0 for f in frames)
            entry["cache_restarts"] = backend.restarts
        summary[name] = entry
    result = {"benchmark": "partial-cache", "command": command_line("partial_cache"), "speech": source,
              "streams": len(streams), "asr": asr.describe(),
              "final_wer_vs_spoken": final_wer(spoken) if any(c for _, c in spoken) else None,
              "variants": summary}
    write_result("partial-cache", result, args.out_dir)
    return result


if __name__ == "__main__":
    main()
