"""Final latency with and without speculative finals, on real speech, in simulated real time (sans-I/O).

    python -m benchmarks.speculative                               # ORT int8 full-size timings, all recordings
    python -m benchmarks.speculative --max-files 8 --compare budget_ratio=1.0
    python -m benchmarks.speculative --asr-cost 0.06,0.08          # a fixed cost model instead of calibrating

Each shared recording (``ru/`` and ``speakers/``, 1.5 s of silence appended) is streamed in 20 ms messages at
real time on a simulated clock through one :class:`~streaming.session.Session` per variant (diarization off; the
real Silero VAD gives the probabilities). Two simulated workers, as the server's one batcher per model: the VAD and
the ASR, each running its queued requests one at a time, finals first. A request occupies its worker for the time
the real model takes for that much audio: ``a + b × seconds``, fitted at start from timed decodes of the real
engine (``--asr-model``, default full-size GigaAM on the server's CPU engine, ONNX Runtime int8; ``--vad`` alike
for Silero); the words come from the tone-coded fake ASR (``tests/fakes.py``), which only the partial texts see.
Every variant sees the same audio and cost model, so latencies compare exactly (a deterministic simulation; the
machine's noise enters only the fitted costs).

Final latency as in ``benchmarks/load.py``: the final's arrival − the send time of the message holding its ``end``.
Per variant: final latency percentiles; decodes and encoded seconds per kind (finals, partials, speculative
decodes whose pause ended in speech: "missed"), relative to the finals' audio; ASR worker busy seconds per audio
second; the time between consecutive partials of an utterance. Writes JSON to stdout and ``benchmarks/out/speculative-<time>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import itertools
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import OUT_DIR, SAMPLE_RATE, command_line, default_speech_dir, read_wav, summarize, write_result
from benchmarks.partials import variant_options
from server.models.gigaam_models import DEFAULT_MODEL
from streaming import wire
from streaming.config import VAD_CHUNK, SessionConfig
from streaming.session import Session
from streaming.work import AsrKind, AsrRequest, Request, Result, VadRequest
from tests.fakes import FakeAsr

MESSAGE = 320  # samples per client message (20 ms)
TAIL = 24_000  # silence appended to each recording (1.5 s), so its last utterance closes on a pause


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--asr-model", default=f"random:{DEFAULT_MODEL}", help="GigaAM whose decode times are fitted")
    p.add_argument("--asr-engine", choices=("auto", "torch", "onnx"), default="auto")
    p.add_argument("--asr-quantize", choices=("auto", "none", "int8"), default="auto")
    p.add_argument("--asr-cost", help="A,B: an ASR request takes A + B × audio seconds (skips calibration)")
    p.add_argument("--vad-cost", help="A,B: a VAD request takes A + B × audio seconds (skips calibration)")
    p.add_argument("--speech-dir", type=Path, default=None, help="default: benchmarks.common.default_speech_dir()")
    p.add_argument("--max-files", type=int, default=39)
    p.add_argument("--compare", action="append", default=[], metavar="FIELD=VALUE[,FIELD=VALUE]",
                   help="also run both variants with these PartialOptions (or speculation_budget) changed "
                        "(repeatable)")
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    return p.parse_args(argv)


def fit_cost(run: Callable[[float], None], lengths: Sequence[float], repeats: int = 3) -> tuple[float, float]:
    """Least-squares ``(a, b)`` of the median wall seconds of ``run(seconds)`` on ``a + b × seconds``."""
    ys = []
    for s in lengths:
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            run(s)
            times.append(time.perf_counter() - began)
        ys.append(float(np.median(times)))
    b, a = np.polyfit(np.asarray(lengths), np.asarray(ys), 1)
    return max(float(a), 0.0), float(b)


def calibrate(args: argparse.Namespace, vad: Any) -> dict[str, tuple[float, float]]:
    rng = np.random.default_rng(0)
    noise = lambda s: (0.05 * rng.standard_normal(int(s * SAMPLE_RATE))).astype(np.float32)  # noqa: E731
    costs: dict[str, tuple[float, float]] = {}
    if args.vad_cost:
        costs["vad"] = tuple(float(x) for x in args.vad_cost.split(","))  # type: ignore[assignment]
    else:
        chunks = lambda s: noise(s)[:int(s * SAMPLE_RATE) // VAD_CHUNK * VAD_CHUNK]  # noqa: E731
        costs["vad"] = fit_cost(lambda s: vad.run_batch([VadRequest("c", 0, 0, 0, chunks(s))]), [0.064, 0.256, 1.024])
    if args.asr_cost:
        costs["asr"] = tuple(float(x) for x in args.asr_cost.split(","))  # type: ignore[assignment]
    else:
        from server.models.registry import asr_engine_for, load_asr

        engine, quantize = asr_engine_for("cpu", args.asr_engine, None if args.asr_quantize == "none"
                                          else args.asr_quantize)
        asr = load_asr(args.asr_model, "cpu", 1, quantize, engine)
        asr.warmup()
        request = lambda s: AsrRequest("c", 0, 0, 0, noise(s), 0, AsrKind.FINAL)  # noqa: E731
        costs["asr"] = fit_cost(lambda s: asr.run_batch([request(s)]), [0.5, 2.0, 5.0, 10.0])
    return costs


class Worker:
    """One model's batcher, simulated: queued requests run one at a time (lowest priority value first)."""

    def __init__(self, model: Callable[[list[Request]], Sequence[Result]], cost: tuple[float, float]) -> None:
        self.model, self.cost = model, cost
        self.queue: list[tuple[int, int, Request]] = []
        self.busy_until = 0.0
        self.running: Optional[Result] = None
        self.busy = 0.0
        self._order = itertools.count()

    def submit(self, request: Request) -> None:
        heapq.heappush(self.queue, (int(request.priority), next(self._order), request))

    def start(self, now: float) -> None:
        if self.running is None and self.queue:
            request = heapq.heappop(self.queue)[2]
            (self.running,) = self.model([request])
            took = self.cost[0] + self.cost[1] * len(request.audio) / SAMPLE_RATE
            self.busy += took
            self.busy_until = now + took


def sent_at(sample: int) -> float:
    """When the message holding sample ``sample - 1`` was sent (its audio complete, at real time)."""
    return ((max(sample, 1) - 1) // MESSAGE + 1) * MESSAGE / SAMPLE_RATE


class CachedVad:
    """The VAD's results for one recording, computed once for all variants (their VAD requests coincide: the VAD
    worker runs beside the ASR one, so its timing does not depend on the variant)."""

    def __init__(self, vad: Any) -> None:
        self.vad = vad
        self.cache: dict[tuple[int, int, int], Result] = {}  # (start, length, id of the state it continues)

    def __call__(self, requests: list[Request]) -> list[Result]:
        out = []
        for r in requests:
            key = (r.start, len(r.audio), id(r.state) if r.state is not None else 0)  # cached states stay alive
            if key not in self.cache:
                self.cache[key] = self.vad.run_batch([r])[0]
            hit = self.cache[key]
            out.append(dataclasses.replace(hit, session_id=r.session_id, seq=r.seq))
        return out


def simulate(audio: np.ndarray, config: SessionConfig, vad: Callable[[list[Request]], list[Result]],
             costs: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Stream int16 ``audio`` at real time through one session on a simulated clock; latencies and work done."""
    asr = FakeAsr(record=True)
    workers = {VadRequest: Worker(vad, costs["vad"]), AsrRequest: Worker(asr, costs["asr"])}
    session = Session("sim", config)
    data = audio.astype("<i2").tobytes()
    sent = [min((k + 1) * MESSAGE, len(audio)) for k in range((len(audio) + MESSAGE - 1) // MESSAGE)]
    latencies: list[float] = []
    last_partial: dict[int, float] = {}  # utterance id → simulated time of its latest partial
    intervals: list[float] = []
    k, now, ended = 0, 0.0, False
    while True:
        for request in session.work_to_run():
            workers[type(request)].submit(request)
        for event in session.events_to_send():
            if isinstance(event, wire.Final):
                latencies.append(now - sent_at(event.end))
            elif isinstance(event, wire.Partial):
                if event.utterance_id in last_partial:
                    intervals.append(now - last_partial[event.utterance_id])
                last_partial[event.utterance_id] = now
            elif isinstance(event, wire.End):
                ended = True
        if ended:
            break
        for w in workers.values():
            w.start(now)
        arrival = sent[k] / SAMPLE_RATE if k < len(sent) else float("inf")
        running = [w for w in workers.values() if w.running is not None]
        done = min(running, key=lambda w: w.busy_until) if running else None
        if done is not None and done.busy_until <= arrival:
            now, result, done.running = done.busy_until, done.running, None
            session.receive_result(result)
        elif k < len(sent):
            now = arrival
            session.receive_audio(data[2 * k * MESSAGE:2 * sent[k]])
            k += 1
            if k == len(sent):
                session.receive_end()
        else:
            raise RuntimeError("the simulated session stalled before its end")
    stats = session.stats
    final_seq = {r.utterance_id: r for r in asr.requests if r.kind == AsrKind.FINAL}  # the last one answered it
    samples = {"final": sum(len(r.audio) for r in final_seq.values()),
               "partial": sum(len(r.audio) for r in asr.requests if r.kind == AsrKind.PARTIAL)}
    samples["missed"] = sum(len(r.audio) for r in asr.requests if r.kind == AsrKind.FINAL) - samples["final"]
    decodes = {"final": len(final_seq), "partial": asr.calls[AsrKind.PARTIAL],
               "missed": asr.calls[AsrKind.FINAL] - len(final_seq)}
    return {"latency": latencies, "partial_intervals": intervals, "samples": samples, "decodes": decodes, "asr_busy": workers[AsrRequest].busy,
            "speculated": stats.finals_speculated, "audio": len(audio)}


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    from server.models.vad import VadModel

    root = args.speech_dir or default_speech_dir()
    paths = (sorted(root.glob("ru/*.wav")) + sorted(root.glob("speakers/*.wav")))[:args.max_files]
    if not paths:
        raise SystemExit(f"no recordings under {root} (ru/*.wav, speakers/*.wav)")
    vad = VadModel("cpu")
    costs = calibrate(args, vad)
    base = SessionConfig(diarization=False)
    variants: dict[str, SessionConfig] = {}
    for spec in [""] + args.compare:
        partials, extra = variant_options(spec) if spec else (base.partials, {})
        suffix = f", {spec}" if spec else ""
        for on in (False, True):
            variants[f"speculative {'on' if on else 'off'}{suffix}"] = dataclasses.replace(
                base, speculative_finals=on, partials=partials, **extra)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for path in paths:  # interleaved: every variant on one recording before the next
        audio = np.concatenate([read_wav(path), np.zeros(TAIL, dtype=np.int16)])
        cached = CachedVad(vad)
        for name, config in variants.items():
            runs[name].append(simulate(audio, config, cached, costs))
    summary = {}
    for name, rs in runs.items():
        total = lambda key, kind: sum(r[key][kind] for r in rs)  # noqa: E731
        final = total("samples", "final")
        audio = sum(r["audio"] for r in rs)
        summary[name] = {
            "final_latency_s": summarize([x for r in rs for x in r["latency"]]),
            "partial_interval_s": summarize([x for r in rs for x in r["partial_intervals"]]),
            "finals_speculated": sum(r["speculated"] for r in rs),
            "decodes": {kind: total("decodes", kind) for kind in ("final", "partial", "missed")},
            "encoded_over_final": {kind: round(total("samples", kind) / final, 4) for kind in ("partial", "missed")},
            "asr_busy_per_audio_s": round(sum(r["asr_busy"] for r in rs) / (audio / SAMPLE_RATE), 4),
        }
    result = {"benchmark": "speculative", "command": command_line("speculative"), "speech_dir": str(root),
              "files": len(paths), "audio_s": round(sum(r["audio"] for r in next(iter(runs.values()))) / SAMPLE_RATE, 1),
              "cost_model_s": {k: {"a": round(a, 4), "b_per_audio_s": round(b, 4)} for k, (a, b) in costs.items()},
              "asr": None if args.asr_cost else {"model": args.asr_model, "engine": args.asr_engine,
                                                 "quantize": args.asr_quantize},
              "variants": summary}
    write_result("speculative", result, args.out_dir)
    return result


if __name__ == "__main__":
    main()
