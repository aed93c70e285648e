"""Partial-transcript compute against utterance length: is it linear, and under 1.5 final passes?

    python -m benchmarks.partials                                  # fake ASR counting encoded samples
    python -m benchmarks.partials --asr-model tests/assets/tiny_gigaam_ctc.ckpt --device cpu
    python -m benchmarks.partials --lengths 2 5 10 20 --budget-ratio 1.0

For each length, one continuous utterance (300 ms tones, 150 ms pauses: shorter than min_silence) is streamed in
100 ms messages through a :class:`~streaming.session.Session` with the fake energy VAD, every request answered at
once (``server.offline.drive_session``). Reported per length: encoder-seconds spent on partials per second of
utterance (counted samples: exact and machine-independent), the same relative to the one final pass, the number
of partial decodes and events, and the mean time between partial events. With ``--asr-model`` the real GigaAM
decodes instead and the wall time of its partial and final batches is reported too (the encoder dominates it).

Goal: partial compute ≤ 1.5 × one final pass and flat in utterance length. Writes JSON to stdout and
``benchmarks/out/partials-<time>.json`` with a PNG beside it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import OUT_DIR, SAMPLE_RATE, command_line, plot_panels, write_result
from server.offline import drive_session, run_requests_by_kind
from streaming import wire
from streaming.config import PartialOptions, SessionConfig
from streaming.session import Session
from streaming.work import AsrKind, AsrRequest, Request, Result, VadRequest
from tests.fakes import FakeAsr, FakeVad, pcm16, tone_bursts


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=float, nargs="+", default=[2, 4, 6, 8, 10, 12, 14, 16, 18, 20],
                   help="utterance lengths in seconds (at most 20: the VAD cuts longer ones)")
    p.add_argument("--asr-model", help="GigaAM name or checkpoint: decode with it and time the batches")
    p.add_argument("--device", default="cpu", help="device of --asr-model: cpu, cuda, cuda:N")
    p.add_argument("--budget-ratio", type=float, default=PartialOptions().budget_ratio)
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    return p.parse_args(argv)


class TimedAsr:
    """Wraps a batch function, accumulating samples and wall seconds per request kind."""

    def __init__(self, run_batch: Callable[[list[Request]], Sequence[Result]]) -> None:
        self.run_batch = run_batch
        self.samples = {AsrKind.FINAL: 0, AsrKind.PARTIAL: 0}
        self.seconds = {AsrKind.FINAL: 0.0, AsrKind.PARTIAL: 0.0}
        self.calls = {AsrKind.FINAL: 0, AsrKind.PARTIAL: 0}

    def __call__(self, requests: list[Request]) -> list[Result]:
        results: list[Result] = []
        for kind in (AsrKind.FINAL, AsrKind.PARTIAL):  # one batch per kind, so each is timed on its own
            batch = [r for r in requests if isinstance(r, AsrRequest) and r.kind == kind]
            if batch:
                began = time.perf_counter()
                out = list(self.run_batch(batch))
                self.seconds[kind] += time.perf_counter() - began
                self.samples[kind] += sum(len(r.audio) for r in batch)
                self.calls[kind] += len(batch)
                results += out
        order = {r.seq: i for i, r in enumerate(requests)}
        return sorted(results, key=lambda r: order[r.seq])


def utterance(seconds: float) -> Any:
    """One utterance of at most ``seconds`` (padding included): 300 ms tones with 150 ms pauses, 12 pitches."""
    n = max(1, int((seconds - 0.4 + 0.15) / 0.45))
    return tone_bursts([(300 + 60 * (k % 12), 0.3) for k in range(n)], gaps=0.15, lead=0.5, tail=1.0)


def measure(seconds: float, budget_ratio: float, asr: Optional[Any]) -> dict[str, Any]:
    timed = TimedAsr(asr.run_batch if asr is not None else FakeAsr())
    config = SessionConfig(diarization=False, partials=PartialOptions(budget_ratio=budget_ratio))
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


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    if any(not 0.5 <= s <= 20 for s in args.lengths):
        raise SystemExit("--lengths must be between 0.5 and 20 seconds")
    asr = None
    if args.asr_model:
        from server.models.asr import GigaAmAsr

        asr = GigaAmAsr(args.asr_model, device=args.device, max_batch=1)
        asr.warmup()
    rows = [measure(s, args.budget_ratio, asr) for s in args.lengths]
    ratios = [r["partial_over_final_pass"] for r in rows]
    result: dict[str, Any] = {
        "benchmark": "partials",
        "command": command_line("partials"),
        "asr": asr.describe() if asr is not None else "fake (counts samples)",
        "budget_ratio": args.budget_ratio,
        "goal": "partial_over_final_pass <= 1.5 and flat in length",
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
         "hline": ("goal 1.5", 1.5)},
        {"x": x, "series": {"mean interval": [r["mean_partial_interval_seconds"] for r in rows]},
         "xlabel": "utterance length (s)", "ylabel": "seconds between partials"},
    ])
    result["plot"] = str(png)
    write_result("partials", result, args.out_dir, stamp)
    return result


if __name__ == "__main__":
    main()
