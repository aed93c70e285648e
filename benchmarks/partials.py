"""Partial-transcript compute against utterance length, and on real speech before/after a policy change.

    python -m benchmarks.partials                                  # fake ASR counting encoded samples
    python -m benchmarks.partials --asr-model tests/assets/tiny_gigaam_ctc.ckpt --device cpu
    python -m benchmarks.partials --lengths 2 5 10 20 --budget-ratio 1.5
    python -m benchmarks.partials --speech --baseline 1872441 --asr-model tests/assets/tiny_gigaam_ctc.ckpt
    python -m benchmarks.partials --speech --asr-model random:v2_ctc --asr-engine auto --max-files 8 \
        --compare budget_ratio=1.0 --compare budget_ratio=1.0,cadence=16000
    python -m benchmarks.partials --speech --held-out 40 --asr-model tests/assets/tiny_gigaam_ctc.ckpt \
        --compare budget_ratio=1.0,cadence=16000

``--speech``: the shared real recordings (``ru/`` and ``speakers/``, see ``benchmarks.common.default_speech_dir``)
each streamed in 20 ms messages through a session with the real Silero VAD, every request answered at once, by the
current policy at its defaults and (``--baseline REF``) by ``streaming/partials.py`` as of git ``REF`` at
``--baseline-budget`` and with the defaults changed as each ``--compare FIELD=VALUE[,FIELD=VALUE]`` says
(:class:`~streaming.config.PartialOptions` fields, sample counts for durations), interleaved per recording. Per utterance: partial samples / final samples, and the first
partial's delay after speech starts (the utterance's start + ``speech_pad``): the audio received when its request
was issued minus that onset, plus the decode's measured wall time (0 with the fake ASR). Per variant ``quality``:
the partial text against the final of its utterance (``benchmarks/partial_quality.py``: share of partial words
the final confirms, WER/CER against the final's words heard so far, the same for the text shown on a 100 ms clock,
share of decodes without left context). Partial quality needs a model that gives real text: ``--held-out N``
streams N espeak-ng utterances the tiny GigaAM models never trained on (5 per stream, 1-1.6 s pauses) instead of
the recordings, which are outside the tiny models' domain; ``final_wer_vs_spoken`` says how good the finals are.

For each length, one continuous utterance (300 ms tones, 150 ms pauses: shorter than min_silence) is streamed in
100 ms messages through a :class:`~streaming.session.Session` with the fake energy VAD, every request answered at
once (``server.offline.drive_session``). Reported per length: encoder-seconds spent on partials per second of
utterance (counted samples: exact and machine-independent), the same relative to the one final pass, the number
of partial decodes and events, and the mean time between partial events. With ``--asr-model`` the real GigaAM
decodes instead and the wall time of its partial and final batches is reported too (the encoder dominates it).

Goal: partial compute ≤ 1.0 × one final pass per utterance, first partial ≤ 0.5 s after speech starts (p50). Writes JSON to stdout and
``benchmarks/out/partials-<time>.json`` with a PNG beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import streaming.session
from benchmarks.common import (OUT_DIR, REPO_ROOT, SAMPLE_RATE, command_line, compose, default_speech_dir,
                               plot_panels, read_wav, summarize, write_result)
from benchmarks.partial_quality import SessionRun, final_wer, held_out_speech, partial_quality
from server.offline import drive_session, pump, run_requests_by_kind
from streaming import wire
from streaming.config import PartialOptions, SessionConfig, VadOptions
from streaming.session import Session
from streaming.work import AsrKind, AsrRequest, Request, Result, VadRequest
from tests.fakes import FakeAsr, FakeVad, pcm16, tone_bursts


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=float, nargs="+", default=[2, 4, 6, 8, 10, 12, 14, 16, 18, 20],
                   help="utterance lengths in seconds (at most 20: the VAD cuts longer ones)")
    p.add_argument("--asr-model", help="GigaAM name or checkpoint: decode with it and time the batches")
    p.add_argument("--device", default="cpu", help="device of --asr-model: cpu, cuda, cuda:N")
    p.add_argument("--asr-engine", choices=("auto", "torch", "onnx"), default="torch",
                   help="engine of --asr-model (auto: the server's default for the device)")
    p.add_argument("--asr-quantize", choices=("auto", "none", "int8"), default="none")
    p.add_argument("--budget-ratio", type=float, default=PartialOptions().budget_ratio)
    p.add_argument("--no-speculative-finals", dest="speculative", action="store_false",
                   help="sessions without speculative finals (their missed speculations count as partial compute)")
    p.add_argument("--speech", action="store_true", help="real recordings, per-utterance ratios and first partials")
    p.add_argument("--speech-dir", type=Path, default=None, help="default: benchmarks.common.default_speech_dir()")
    p.add_argument("--max-files", type=int, default=23, help="--speech: at most this many recordings")
    p.add_argument("--held-out", type=int, default=0, metavar="N",
                   help="--speech on N espeak-ng utterances the tiny GigaAM models never trained on (real text "
                        "from tests/assets/tiny_gigaam_ctc.ckpt) instead of the recordings")
    p.add_argument("--seed", type=int, default=0, help="--held-out: which utterances")
    p.add_argument("--baseline", help="--speech: also run streaming/partials.py as of this git ref")
    p.add_argument("--baseline-budget", type=float, default=1.5, help="budget_ratio of the --baseline runs")
    p.add_argument("--baseline-set", metavar="FIELD=VALUE[,FIELD=VALUE]", help="other PartialOptions of the baseline")
    p.add_argument("--compare", action="append", default=[], metavar="FIELD=VALUE[,FIELD=VALUE]",
                   help="--speech: also run the current policy with these PartialOptions changed (repeatable)")
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    return p.parse_args(argv)


class TimedAsr:
    """Wraps a batch function, accumulating samples and wall seconds per request kind.

    A speculative final request whose pause ended in speech (``SessionConfig.speculative_finals``: another final
    request of the same utterance follows; the last one is the final) is counted as partial compute."""

    def __init__(self, run_batch: Callable[[list[Request]], Sequence[Result]]) -> None:
        self.run_batch = run_batch
        self.samples = {AsrKind.FINAL: 0, AsrKind.PARTIAL: 0}
        self.seconds = {AsrKind.FINAL: 0.0, AsrKind.PARTIAL: 0.0}
        self.calls = {AsrKind.FINAL: 0, AsrKind.PARTIAL: 0}
        self.missed_seconds = 0.0  # of the partial seconds: missed speculations (the finals' cost, see docs)
        self.log: list[tuple[AsrRequest, float, int]] = []  # (request, wall seconds, audio fed when it ran)
        self.fed = 0
        self.finals: dict[tuple[str, int], tuple[int, float]] = {}  # the last final request per utterance

    def __call__(self, requests: list[Request]) -> list[Result]:
        results: list[Result] = []
        for kind in (AsrKind.FINAL, AsrKind.PARTIAL):  # one batch per kind, so each is timed on its own
            batch = [r for r in requests if isinstance(r, AsrRequest) and r.kind == kind]
            if batch:
                began = time.perf_counter()
                out = list(self.run_batch(batch))
                took = time.perf_counter() - began
                self.seconds[kind] += took
                self.log += [(r, took / len(batch), self.fed) for r in batch if isinstance(r, AsrRequest)]
                self.samples[kind] += sum(len(r.audio) for r in batch)
                self.calls[kind] += len(batch)
                results += out
                for r in batch if kind == AsrKind.FINAL else ():
                    missed = self.finals.get((r.session_id, r.utterance_id))
                    self.finals[(r.session_id, r.utterance_id)] = (len(r.audio), took / len(batch))
                    if missed is not None:  # a speculation speech resumed after: partial compute
                        self._move(missed)
        order = {r.seq: i for i, r in enumerate(requests)}
        return sorted(results, key=lambda r: order[r.seq])


    def _move(self, request: tuple[int, float]) -> None:
        samples, seconds = request
        self.missed_seconds += seconds
        for kind, sign in ((AsrKind.FINAL, -1), (AsrKind.PARTIAL, 1)):
            self.samples[kind] += sign * samples
            self.seconds[kind] += sign * seconds
            self.calls[kind] += sign


def utterance(seconds: float) -> Any:
    """One utterance of at most ``seconds`` (padding included): 300 ms tones with 150 ms pauses, 12 pitches."""
    n = max(1, int((seconds - 0.4 + 0.15) / 0.45))
    return tone_bursts([(300 + 60 * (k % 12), 0.3) for k in range(n)], gaps=0.15, lead=0.5, tail=1.0)


def measure(seconds: float, budget_ratio: float, asr: Optional[Any], speculative: bool = True) -> dict[str, Any]:
    timed = TimedAsr(asr.run_batch if asr is not None else FakeAsr())
    config = SessionConfig(diarization=False, partials=PartialOptions(budget_ratio=budget_ratio),
                           speculative_finals=speculative)
    events = drive_session(Session("bench", config), run_requests_by_kind({VadRequest: FakeVad(), AsrRequest: timed}),
                           pcm16(utterance(seconds).audio), chunk_bytes=3200)
    finals = [e for e in events if isinstance(e, wire.Final)]
    partials = [e for e in events if isinstance(e, wire.Partial)]
    length = sum(f.end - f.start for f in finals)
    final_samples, partial_samples = timed.samples[AsrKind.FINAL], timed.samples[AsrKind.PARTIAL]
    ends = [p.end for p in partials]
    row: dict[str, Any] = {
        "utterance_seconds": round(length / SAMPLE_RATE, 3),
        "finals": len(finals),
        "partial_decodes": timed.calls[AsrKind.PARTIAL],
        "partial_events": len(partials),
        "partial_encoder_seconds_per_audio_second": round(partial_samples / length, 4),
        "partial_over_final_pass": round(partial_samples / final_samples, 4),
        "mean_partial_interval_seconds": round((ends[-1] - ends[0]) / (len(ends) - 1) / SAMPLE_RATE, 3)
        if len(ends) > 1 else None,
    }
    if asr is not None:
        row["partial_wall_seconds"] = round(timed.seconds[AsrKind.PARTIAL], 4)
        row["final_wall_seconds"] = round(timed.seconds[AsrKind.FINAL], 4)
        row["partial_wall_over_final"] = round(timed.seconds[AsrKind.PARTIAL] / timed.seconds[AsrKind.FINAL], 4)
    return row


def baseline_policy(ref: str) -> type:
    """``PartialPolicy`` as ``streaming/partials.py`` was at git ``ref``."""
    source = subprocess.run(["git", "-C", str(REPO_ROOT), "show", f"{ref}:streaming/partials.py"], check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"partials_at_{ref}")
    exec(compile(source, f"{ref}:streaming/partials.py", "exec"), module.__dict__)
    return module.PartialPolicy


@contextlib.contextmanager
def policy_class(cls: Optional[type]) -> Any:
    """Sessions built inside use ``cls`` (``None``: the current one) as their partial policy."""
    current = streaming.session.PartialPolicy
    streaming.session.PartialPolicy = cls or current
    try:
        yield
    finally:
        streaming.session.PartialPolicy = current


def speech_utterances(audio: Any, options: PartialOptions, vad: Any, asr: Any, timed: TimedAsr,
                      speculative: bool = True, chunk: int = 320,
                      session_changes: Optional[dict[str, Any]] = None) -> tuple[list[dict], SessionRun]:
    """Stream int16 ``audio`` through one session; per utterance: samples (partial decodes and missed speculations
    apart), partial decodes, first-partial delay; and the events and windows the quality measures need. ``timed``
    (wrapping the ASR) accumulates wall seconds per request kind; ``session_changes``: other SessionConfig fields."""
    timed.log, timed.fed, timed.finals = [], 0, {}
    # a baseline policy from before speculative finals cannot take their results (PartialPolicy.adopt)
    speculate = speculative and hasattr(streaming.session.PartialPolicy, "adopt")
    session = Session("bench", SessionConfig(diarization=False, partials=options, speculative_finals=speculate,
                                             **(session_changes or {})))
    run = run_requests_by_kind({VadRequest: vad.run_batch, AsrRequest: timed})
    data = audio.astype("<i2").tobytes()
    events: list[wire.ServerEvent] = []
    for offset in range(0, len(data), 2 * chunk):
        session.receive_audio(data[offset:offset + 2 * chunk])
        timed.fed = min(offset + 2 * chunk, len(data)) // 2
        events += pump(session, run)
    session.receive_end()
    events += pump(session, run)
    pad = VadOptions().speech_pad
    rows: dict[int, dict] = {}
    record = SessionRun([e for e in events if isinstance(e, wire.Partial)],
                        [e for e in events if isinstance(e, wire.Final)])
    for request, wall, fed in timed.log:
        row = rows.setdefault(request.utterance_id,
                              {"final": 0, "partial": 0, "missed": 0, "misses": 0, "decodes": 0, "first": None})
        if request.kind == AsrKind.FINAL:  # the last one is the final, earlier ones missed speculations
            row["partial"] += row["final"]
            row["missed"] += row["final"]
            row["misses"] += row["final"] > 0
            row["final"] = len(request.audio)
            row["start"], row["onset"] = request.start, request.start + (pad if request.start > 0 else 0)
        else:
            row["partial"] += len(request.audio)
            row["decodes"] += 1
            row.setdefault("windows", []).append((request.start, request.start + len(request.audio)))
            if row["first"] is None:
                row["first"] = (fed, wall)
                row["first_window"] = len(request.audio)
    out = []
    for row in rows.values():
        if not row["final"]:
            continue
        record.windows[row["start"]], record.onsets[row["start"]] = row.get("windows", []), row["onset"]
        first = None if row["first"] is None else (row["first"][0] - row["onset"]) / SAMPLE_RATE + row["first"][1]
        out.append({"seconds": row["final"] / SAMPLE_RATE, "partial_over_final": row["partial"] / row["final"],
                    "missed_over_final": row["missed"] / row["final"], "misses": row["misses"],
                    "first_window_over_final": row.get("first_window", 0) / row["final"],
                    "decodes": row["decodes"], "first_partial_delay": first})
    return out, record


SESSION_FIELDS = ("speculation_budget",)  # SessionConfig fields a FIELD=VALUE spec may also change


def variant_options(spec: str) -> tuple[PartialOptions, dict[str, Any]]:
    """``FIELD=VALUE[,FIELD=VALUE]`` → the default :class:`PartialOptions` with those fields changed, and the
    changes to :class:`SessionConfig` fields named in ``SESSION_FIELDS`` (each value parsed as its default's type)."""
    defaults, session = PartialOptions(), SessionConfig()
    changes: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for item in spec.split(","):
        field, _, value = (x.strip() for x in item.partition("="))
        owner, into = (session, extra) if field in SESSION_FIELDS else (defaults, changes)
        if not hasattr(owner, field) or not value:
            raise SystemExit(f"--compare {spec!r}: {item!r} is not FIELD=VALUE of a PartialOptions field "
                             f"(or of {', '.join(SESSION_FIELDS)})")
        kind = type(getattr(owner, field))
        into[field] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return dataclasses.replace(defaults, **changes), extra


def partial_options(spec: str) -> PartialOptions:
    """``FIELD=VALUE[,FIELD=VALUE]`` of :class:`PartialOptions` fields only → the defaults with those changed."""
    options, extra = variant_options(spec)
    if extra:
        raise SystemExit(f"--compare {spec!r}: {', '.join(extra)} is not a PartialOptions field")
    return options


def speech_inputs(args: argparse.Namespace) -> tuple[str, list[tuple[str, Any, list[tuple[int, int, str]]]]]:
    """What ``--speech`` streams: ``(source, [(name, int16 audio, [(start, end, spoken text)] or [])])``: the
    shared recordings, or (``--held-out N``) N held-out espeak-ng utterances of the tiny models, 5 per stream."""
    if args.held_out:
        utterances = held_out_speech(args.held_out, seed=args.seed)
        streams = []
        for k in range(0, len(utterances), 5):
            group = utterances[k:k + 5]
            corpus = compose([a for _, a in group], (1.0, 1.6), args.seed + k, "held-out espeak-ng")
            streams.append((f"held-out-{k // 5}", corpus.audio,
                            [(a, b, text) for (a, b), (text, _) in zip(corpus.clips, group)]))
        return f"{args.held_out} held-out espeak-ng utterances (scripts/train_tiny_gigaam.py)", streams
    root = args.speech_dir or default_speech_dir()
    paths = (sorted(root.glob("ru/*.wav")) + sorted(root.glob("speakers/*.wav")))[:args.max_files]
    if not paths:
        raise SystemExit(f"no recordings under {root} (ru/*.wav, speakers/*.wav)")
    return str(root), [(p.name, read_wav(p), []) for p in paths]


def speech_main(args: argparse.Namespace, asr: Any) -> dict[str, Any]:
    from server.models.vad import VadModel

    source, streams = speech_inputs(args)
    vad = VadModel("cpu")
    variants: dict[str, tuple[Optional[type], PartialOptions, dict[str, Any]]] = {}
    if args.baseline:
        options, extra = variant_options(args.baseline_set) if args.baseline_set else (PartialOptions(), {})
        also = f", {args.baseline_set}" if args.baseline_set else ""
        variants[f"baseline {args.baseline} (budget {args.baseline_budget}{also})"] = (
            baseline_policy(args.baseline), dataclasses.replace(options, budget_ratio=args.baseline_budget), extra)
    variants["current (defaults)"] = (None, PartialOptions(), {})
    for spec in args.compare:
        variants[f"current, {spec}"] = (None, *variant_options(spec))
    rows: dict[str, list[dict]] = {name: [] for name in variants}
    runs: dict[str, list[SessionRun]] = {name: [] for name in variants}
    timers = {name: TimedAsr(asr.run_batch if asr is not None else FakeAsr()) for name in variants}
    spoken: list[tuple[list, list]] = []  # (finals, clips) of the first variant: the finals are the same in all
    for file, audio, clips in streams:  # interleaved: every variant on one recording before the next
        for name, (cls, options, extra) in variants.items():
            with policy_class(cls):
                utts, record = speech_utterances(audio, options, vad, asr, timers[name], args.speculative,
                                                 session_changes=extra)
            rows[name] += [dict(u, file=file) for u in utts]
            runs[name].append(record)
        spoken.append((runs[next(iter(variants))][-1].finals, clips))
    summary = {}
    for name, utts in rows.items():
        ratios = [u["partial_over_final"] for u in utts]
        delays = [u["first_partial_delay"] for u in utts if u["first_partial_delay"] is not None]
        summary[name] = {
            "utterances": len(utts), "with_partials": len(delays),
            "partial_over_final": summarize(ratios), "max_partial_over_final": round(max(ratios), 4),
            "over_1": sum(r > 1.0 for r in ratios),
            # partial decodes alone (missed speculations left out), and the utterances no partial policy could
            # keep within one final pass under the same speculations: their misses and first window exceed it
            "over_1_decodes_only": sum(u["partial_over_final"] - u["missed_over_final"] > 1.0 for u in utts),
            "with_missed_speculations": sum(u["misses"] > 0 for u in utts),
            "over_1_unavoidable": sum(u["missed_over_final"] + u["first_window_over_final"] > 1.0 for u in utts),
            "total_missed_over_total_final": round(sum(u["missed_over_final"] * u["seconds"] for u in utts)
                                                   / sum(u["seconds"] for u in utts), 4),
            "total_partial_over_total_final": round(sum(u["partial_over_final"] * u["seconds"] for u in utts)
                                                    / sum(u["seconds"] for u in utts), 4),
            "first_partial_delay_s": summarize(delays),
            "decodes_per_utterance_second": round(sum(u["decodes"] for u in utts) / sum(u["seconds"] for u in utts), 3),
            "quality": partial_quality(runs[name]),
        }
        if asr is not None:
            wall = timers[name].seconds
            summary[name]["partial_wall_over_final_wall"] = round(wall[AsrKind.PARTIAL] / wall[AsrKind.FINAL], 4)
            summary[name]["partial_decodes_wall_over_final_wall"] = round(  # missed speculations left out
                (wall[AsrKind.PARTIAL] - timers[name].missed_seconds) / wall[AsrKind.FINAL], 4)
    return {"benchmark": "partials-speech", "command": command_line("partials"), "speech": source,
            "files": len(streams), "final_wer_vs_spoken": final_wer(spoken) if any(c for _, c in spoken) else None,
            "asr": asr.describe() if asr is not None else "fake (counts samples)",
            "goal": "partial_over_final <= 1.0 per utterance, first partial p50 <= 0.5 s", "variants": summary,
            "utterances": rows}


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    if any(not 0.5 <= s <= 20 for s in args.lengths):
        raise SystemExit("--lengths must be between 0.5 and 20 seconds")
    asr = None
    if args.asr_model:
        from server.models.registry import asr_engine_for, load_asr

        engine, quantize = asr_engine_for(args.device.split(":")[0], args.asr_engine,
                                          None if args.asr_quantize == "none" else args.asr_quantize)
        asr = load_asr(args.asr_model, args.device, 1, quantize, engine)
        asr.warmup()
    if args.speech:
        result = speech_main(args, asr)
        write_result("partials-speech", result, args.out_dir)
        return result
    rows = [measure(s, args.budget_ratio, asr, args.speculative) for s in args.lengths]
    ratios = [r["partial_over_final_pass"] for r in rows]
    result: dict[str, Any] = {
        "benchmark": "partials",
        "command": command_line("partials"),
        "asr": asr.describe() if asr is not None else "fake (counts samples)",
        "budget_ratio": args.budget_ratio,
        "goal": "partial_over_final_pass <= 1.0 and flat in length",
        "max_partial_over_final_pass": max(ratios),
        "rows": rows,
    }
    stamp = time.strftime("%Y%m%d-%H%M%S")
    x = [r["utterance_seconds"] for r in rows]
    series = {"encoded samples / final pass": ratios}
    if asr is not None:
        series["wall time / final pass"] = [r["partial_wall_over_final"] for r in rows]
    png = plot_panels(args.out_dir / f"partials-{stamp}.png", "Partial decoding cost per utterance", [
        {"x": x, "series": series, "xlabel": "utterance length (s)", "ylabel": "partial cost / one final pass",
         "hline": ("goal 1.0", 1.0)},
        {"x": x, "series": {"mean interval": [r["mean_partial_interval_seconds"] for r in rows]},
         "xlabel": "utterance length (s)", "ylabel": "seconds between partials"},
    ])
    result["plot"] = str(png)
    write_result("partials", result, args.out_dir, stamp)
    return result


if __name__ == "__main__":
    main()
