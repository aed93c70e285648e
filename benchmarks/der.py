"""Diarization error of rechka's streaming diarizer, side by side with offline clustering and diart.

Datasets (each skipped when absent): pyannote's shipped ``sample.wav``; the AMI snippets and the 60 s AMI excerpt in
``/work/shared/speech/conv/``; conversations composed by :mod:`benchmarks.compose` (espeak-ng voices, and real
voices from ``/work/shared/speech/speakers/``), created on first use in ``benchmarks/out/composed``. The defaults
of ``DiarizationOptions`` were tuned on the sample, the AMI files and composed conversations of *other* seeds, so
only the composed rows here are held out.

Systems, all on the same segmentation (PyanNet from the whisperx wheel) and embedding (resemblyzer) models:

- ``rechka``: :class:`streaming.diarization.StreamingDiarizer` fed 1 s chunks, its final turns;
- ``offline``: pyannote.audio's ``SpeakerDiarization`` pipeline (same 5 s windows every 0.5 s, the same models,
  agglomerative clustering over the whole file: a non-causal reference point);
- ``diart``: diart 0.9 ``SpeakerDiarization`` at the same latency, run by ``benchmarks/diart_runner.py`` in its own
  virtual environment (``--diart-python``), skipped when that interpreter is missing.

Metrics (pyannote.metrics): DER at collar 0 and at a ±0.25 s collar (NIST; pyannote ``collar=0.5``), with its
missed / false-alarm / confusion parts, overlap scored; the number of hypothesis speakers; and label *flips*: how
often the hypothesis label that covers a reference speaker changes along that speaker's speech (0 = every
reference speaker kept one label for the whole file). Writes JSON and a PNG to ``benchmarks/out/`` and prints a
markdown table.

    python -m benchmarks.der                         # every dataset, rechka + offline (+ diart if installed)
    python -m benchmarks.der --datasets sample,ami --systems rechka
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.offline import drive_diarizer  # noqa: E402
from streaming.config import SAMPLE_RATE, DiarizationOptions, ms  # noqa: E402
from streaming.diarization import StreamingDiarizer  # noqa: E402
from streaming.work import EmbeddingRequest, Request, Result, SegmentationRequest  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
SHARED = Path(os.environ.get("RECHKA_SHARED_SPEECH", "/work/shared/speech"))
PYANNOTE_SAMPLE = Path(__import__("pyannote.audio").audio.__file__).parent / "sample"
DIART_PYTHON = Path("/tmp/diart-venv/bin/python")
CHUNK = SAMPLE_RATE  # audio is fed to the diarizer in 1 s chunks
COMPOSED_SEED = 100  # composed conversations use seeds 100 + n: none of them was used to tune the defaults


@dataclasses.dataclass
class Item:
    dataset: str
    name: str
    wav: Path
    rttm: Path


# ---------------------------------------------------------------------------------------------------- datasets
def datasets(names: Sequence[str], composed_minutes: float = 5.0) -> list[Item]:
    items: list[Item] = []
    if "sample" in names and (PYANNOTE_SAMPLE / "sample.wav").is_file():
        items.append(Item("sample", "pyannote_sample", PYANNOTE_SAMPLE / "sample.wav", PYANNOTE_SAMPLE / "sample.rttm"))
    conv = SHARED / "conv"
    if "ami" in names:
        for wav in sorted((conv / "ami_snippets").glob("*.wav")) + sorted((conv / "ami_ES2004a_60s").glob("*.wav")):
            rttm = wav.with_suffix(".rttm")
            if rttm.is_file() and _reference_speech(rttm) >= 5.0:  # trn02 is nearly silent: DER is meaningless
                items.append(Item("ami", wav.stem, wav, rttm))
    for source in ("espeak", "real"):
        if f"composed-{source}" not in names:
            continue
        if source == "real" and not (SHARED / "speakers").is_dir():
            continue
        from benchmarks.compose import OUT_DIR, compose

        for n in ((2, 3, 4, 6) if source == "espeak" else (3, 5)):
            seed = COMPOSED_SEED + n
            name = f"{source}_{n}spk_s{seed}"
            wav = OUT_DIR / f"{name}.wav"
            if not wav.is_file():
                compose(n, composed_minutes, seed, source=source, name=name).write(OUT_DIR)
            items.append(Item(f"composed-{source}", name, wav, wav.with_suffix(".rttm")))
    return items


def _reference_speech(rttm: Path) -> float:
    return sum(float(line.split()[4]) for line in rttm.read_text().splitlines() if line.startswith("SPEAKER"))


def load_audio(path: Path) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        import soxr

        audio = soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)
    return audio


def load_reference(rttm: Path) -> Any:
    from pyannote.core import Annotation, Segment

    annotation = Annotation()
    for i, line in enumerate(rttm.read_text().splitlines()):
        parts = line.split()
        if parts and parts[0] == "SPEAKER":
            start, duration = float(parts[3]), float(parts[4])
            annotation[Segment(start, start + duration), i] = parts[7]
    return annotation


# ---------------------------------------------------------------------------------------------------- scoring
def score(reference: Any, hypothesis: Any, duration: float) -> dict[str, Any]:
    """DER (collar 0 and ±0.25 s) with its parts, speaker counts and label flips."""
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    uem = Timeline([Segment(0, duration)])
    out: dict[str, Any] = {}
    for key, collar in (("c0", 0.0), ("c025", 0.5)):
        detail = DiarizationErrorRate(collar=collar, skip_overlap=False)(reference, hypothesis, uem=uem,
                                                                       detailed=True)
        total = max(detail["total"], 1e-9)
        out[f"der_{key}"] = round(detail["diarization error rate"], 4)
        if key == "c0":
            out.update(missed=round(detail["missed detection"] / total, 4),
                       false_alarm=round(detail["false alarm"] / total, 4),
                       confusion=round(detail["confusion"] / total, 4))
    out["ref_speakers"] = len(reference.labels())
    out["hyp_speakers"] = len(hypothesis.labels())
    out["flips"] = label_flips(reference, hypothesis)
    return out


def label_flips(reference: Any, hypothesis: Any, step: float = 0.05) -> int:
    """Changes of the hypothesis label covering each reference speaker, along that speaker's speech.

    Sampled every ``step`` s where exactly one reference speaker and exactly one hypothesis speaker are active
    (overlap and misses are DER's business); a change counts once however long the new label lasts."""
    end = max([s.end for s in reference.get_timeline()] + [s.end for s in hypothesis.get_timeline()] + [0.0])
    times = np.arange(0.0, end, step) + step / 2
    ref_labels, hyp_labels = _frame_labels(reference, times), _frame_labels(hypothesis, times)
    flips = 0
    last: dict[str, str] = {}
    for r, h in zip(ref_labels, hyp_labels):
        if r is None or h is None:
            continue
        if r in last and last[r] != h:
            flips += 1
        last[r] = h
    return flips


def _frame_labels(annotation: Any, times: np.ndarray) -> list[Optional[str]]:
    active: list[list[str]] = [[] for _ in times]
    for segment, _, label in annotation.itertracks(yield_label=True):
        a, b = np.searchsorted(times, [segment.start, segment.end])
        for i in range(a, b):
            active[i].append(label)
    return [labels[0] if len(set(labels)) == 1 else None for labels in active]


def to_annotation(turns: Sequence[tuple[str, float, float]]) -> Any:
    from pyannote.core import Annotation, Segment

    annotation = Annotation()
    for i, (label, start, end) in enumerate(turns):
        if end > start:
            annotation[Segment(start, end), i] = label
    return annotation


# ---------------------------------------------------------------------------------------------------- systems
class Models:
    """The segmentation and embedding adapters, loaded once, with compute counters."""

    def __init__(self, device: str = "cpu") -> None:
        from server.models.embedding import ResemblyzerEmbedding
        from server.models.segmentation import SegmentationModel

        self.segmentation = SegmentationModel(device=device, max_batch=32)
        self.embedding = ResemblyzerEmbedding(device=device, max_batch=32)
        self.reset_counters()

    def reset_counters(self) -> None:
        self.windows = 0
        self.embeddings = 0
        self.embedded_samples = 0

    def run(self, requests: list[Request]) -> list[Result]:
        seg = [r for r in requests if isinstance(r, SegmentationRequest)]
        emb = [r for r in requests if isinstance(r, EmbeddingRequest)]
        results: dict[int, Result] = {}
        for batch in _batches(seg, self.segmentation.max_batch):
            results.update((r.seq, r) for r in self.segmentation.run_batch(batch))
        for batch in _batches(emb, self.embedding.max_batch):
            results.update((r.seq, r) for r in self.embedding.run_batch(batch))
        self.windows += len(seg)
        self.embeddings += len(emb)
        self.embedded_samples += sum(len(r.audio) for r in emb)
        return [results[r.seq] for r in requests]


def _batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def run_rechka(audio: np.ndarray, options: DiarizationOptions, run: Callable[[list[Request]], list[Result]],
               chunk: int = CHUNK) -> list[tuple[str, float, float]]:
    """Stream ``audio`` through a diarizer in ``chunk``-sample pieces, answering each request batch at once."""
    seq = itertools.count()
    diarizer = StreamingDiarizer(options, "der", 0, lambda: next(seq))
    turns = drive_diarizer(diarizer, _Buffer(), audio, run, chunk)
    return [(t.speaker, t.start / SAMPLE_RATE, t.end / SAMPLE_RATE) for t in turns]


class _Buffer:
    """The part of ``streaming.audio.AudioBuffer`` the diarizer reads."""

    def __init__(self) -> None:
        self.data = np.zeros(0, np.float32)
        self.start = 0

    @property
    def end(self) -> int:
        return self.start + len(self.data)

    def append(self, x: np.ndarray) -> None:
        self.data = np.concatenate([self.data, x])

    def read(self, a: int, b: int) -> np.ndarray:
        return self.data[a - self.start:b - self.start].copy()

    def discard_before(self, n: int) -> None:
        n = min(max(n, self.start), self.end)
        self.data, self.start = self.data[n - self.start:], n


class _ResemblyzerForPyannote:
    """What pyannote's ``SpeakerDiarization`` needs from an embedding model, backed by rechka's resemblyzer adapter:
    ``(waveforms (B, 1, N), masks (B, F)) -> (B, D)``, the masked samples of each row embedded (NaN when too few)."""

    sample_rate = SAMPLE_RATE
    metric = "cosine"
    min_num_samples = ms(500)

    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter
        self.dimension = int(adapter.encoder.linear.out_features)
        self.samples = 0

    def __call__(self, waveforms: Any, masks: Any = None) -> np.ndarray:
        audio = waveforms[:, 0].cpu().numpy()
        out = np.full((len(audio), self.dimension), np.nan, np.float32)
        chosen, rows = [], []
        for row, (x, mask) in enumerate(zip(audio, masks.cpu().numpy())):
            keep = np.repeat(mask > 0.5, int(np.ceil(len(x) / len(mask))))[:len(x)]
            if keep.sum() >= self.min_num_samples:
                chosen.append(x[keep[:len(x)]])
                rows.append(row)
        if chosen:
            out[rows] = self.adapter.embed(chosen)
            self.samples += sum(len(x) for x in chosen)
        return out


def offline_pipeline(models: Models, threshold: float) -> Any:
    """pyannote.audio's ``SpeakerDiarization`` on the same PyanNet and resemblyzer, agglomerative clustering."""
    from pyannote.audio.core.io import Audio
    from pyannote.audio.pipelines import speaker_diarization
    from pyannote.audio.pipelines.clustering import AgglomerativeClustering

    get_plda = speaker_diarization.get_plda
    speaker_diarization.get_plda = lambda *args, **kwargs: None  # no PLDA: agglomerative clustering needs none
    try:
        pipeline = speaker_diarization.SpeakerDiarization(
            segmentation=models.segmentation.model, segmentation_step=0.1, embedding_exclude_overlap=True,
            plda="none", clustering="OracleClustering", segmentation_batch_size=32, embedding_batch_size=32)
    finally:
        speaker_diarization.get_plda = get_plda
    # swap in resemblyzer and a clustering that needs no PLDA (the pipeline only builds hub embeddings itself)
    pipeline._embedding = _ResemblyzerForPyannote(models.embedding)
    pipeline._audio = Audio(sample_rate=SAMPLE_RATE, mono="downmix")
    pipeline.klustering = "AgglomerativeClustering"
    pipeline.clustering = AgglomerativeClustering(metric="cosine")
    pipeline._expects_num_speakers = False
    pipeline.instantiate({"segmentation": {"threshold": 0.5, "min_duration_off": 0.0},
                          "clustering": {"method": "centroid", "min_cluster_size": 6, "threshold": threshold}})
    return pipeline


def run_offline(pipeline: Any, audio: np.ndarray) -> list[tuple[str, float, float]]:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        output = pipeline({"waveform": torch.from_numpy(audio)[None], "sample_rate": SAMPLE_RATE, "uri": "file"})
    annotation = getattr(output, "speaker_diarization", output)
    return [(str(label), s.start, s.end) for s, _, label in annotation.itertracks(yield_label=True)]


def run_diart(items: Sequence[Item], latency: float, python: Path, delta_new: float, tau_active: float,
              rho_update: float) -> dict[str, list[tuple[str, float, float]]]:
    """diart 0.9 on the same checkpoints, in its own interpreter (``benchmarks/diart_runner.py``)."""
    from server.models.cache import fetch_segmentation_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "diart.json"
        command = [str(python), str(ROOT / "benchmarks" / "diart_runner.py"), "--segmentation",
                   str(fetch_segmentation_checkpoint()), "--latency", str(latency), "--delta-new", str(delta_new),
                   "--tau-active", str(tau_active), "--rho-update", str(rho_update), "--out", str(out),
                   *[str(item.wav) for item in items]]
        env = dict(os.environ, PYTHONPATH="", OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"diart_runner failed ({done.returncode}):\n{done.stderr[-3000:]}")
        found = json.loads(out.read_text())
    return {path: [(t[0], t[1], t[2]) for t in turns] for path, turns in found["turns"].items()}


# ---------------------------------------------------------------------------------------------------- report
def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per system and dataset: duration-weighted DER (both collars) and its parts, summed flips and speaker-count
    error, files."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for system in dict.fromkeys(r["system"] for r in rows):
        out[system] = {}
        for dataset in dict.fromkeys(r["dataset"] for r in rows):
            rs = [r for r in rows if r["system"] == system and r["dataset"] == dataset]
            if not rs:
                continue
            weights = [r["reference_speech"] for r in rs]
            avg = {k: round(float(np.average([r[k] for r in rs], weights=weights)), 4)
                   for k in ("der_c0", "der_c025", "missed", "false_alarm", "confusion")}
            minutes = sum(r["duration"] for r in rs) / 60
            avg.update(files=len(rs), minutes=round(minutes, 1), flips=sum(r["flips"] for r in rs),
                       flips_per_min=round(sum(r["flips"] for r in rs) / max(minutes, 1e-9), 2),
                       speaker_count_error=sum(abs(r["hyp_speakers"] - r["ref_speakers"]) for r in rs))
            out[system][dataset] = avg
    return out


def markdown(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = ["| system | dataset | files | min | DER c0 | DER ±0.25 s | miss | FA | conf. | flips/min | |Δspk| |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for system, per in summary.items():
        for dataset, s in per.items():
            lines.append(f"| {system} | {dataset} | {s['files']} | {s['minutes']} | {s['der_c0']:.3f} | "
                         f"{s['der_c025']:.3f} | {s['missed']:.3f} | {s['false_alarm']:.3f} | {s['confusion']:.3f} | "
                         f"{s['flips_per_min']} | {s['speaker_count_error']} |")
    return "\n".join(lines)


def plot(summary: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(summary)
    datasets = list(dict.fromkeys(d for per in summary.values() for d in per))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(1, len(systems))
    for i, system in enumerate(systems):
        xs = np.arange(len(datasets)) + i * width
        for ax, key in zip(axes, ("der_c0", "flips_per_min")):
            ax.bar(xs, [summary[system].get(d, {}).get(key, np.nan) for d in datasets], width, label=system)
    for ax, title in zip(axes, ("DER, collar 0 (lower is better)", "label flips per minute")):
        ax.set_xticks(np.arange(len(datasets)) + 0.4 - width / 2)
        ax.set_xticklabels(datasets, rotation=15)
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="sample,ami,composed-espeak,composed-real")
    parser.add_argument("--systems", default="rechka,offline,diart")
    parser.add_argument("--latencies", default="1.5,5.0", help="seconds; rechka and diart run at each")
    parser.add_argument("--offline-threshold", type=float, default=0.5,
                        help="agglomerative clustering threshold of the offline pipeline (best on sample + AMI)")
    parser.add_argument("--diart-python", type=Path, default=DIART_PYTHON)
    parser.add_argument("--diart-delta-new", type=float, default=None,
                        help="diart's new-speaker distance (default: rechka's new_speaker_threshold)")
    parser.add_argument("--diart-rho-update", type=float, default=0.3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=OUT / "der.json")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    items = datasets(args.datasets.split(","))
    systems = args.systems.split(",")
    latencies = [float(x) for x in args.latencies.split(",")]
    base = DiarizationOptions()
    models = Models(args.device)
    audio = {item.wav: load_audio(item.wav) for item in items}
    references = {item.wav: load_reference(item.rttm) for item in items}
    hypotheses: dict[tuple[str, Path], list[tuple[str, float, float]]] = {}
    costs: dict[str, dict[str, float]] = {}
    total_audio = sum(len(a) for a in audio.values()) / SAMPLE_RATE

    if "rechka" in systems:
        for latency in latencies:
            name = f"rechka@{latency:g}s"
            options = dataclasses.replace(base, latency=int(round(latency * SAMPLE_RATE)))
            models.reset_counters()
            started = time.process_time()
            for item in items:
                hypotheses[(name, item.wav)] = run_rechka(audio[item.wav], options, models.run)
            costs[name] = {"cpu_s_per_audio_s": round((time.process_time() - started) / total_audio, 4),
                           "windows_per_audio_s": round(models.windows / total_audio, 3),
                           "embeddings_per_audio_s": round(models.embeddings / total_audio, 3),
                           "embedded_audio_s_per_audio_s": round(models.embedded_samples / SAMPLE_RATE / total_audio, 3)}
            print(f"{name}: done, {costs[name]}", file=sys.stderr)
    if "offline" in systems:
        pipeline = offline_pipeline(models, args.offline_threshold)
        started = time.process_time()
        for item in items:
            hypotheses[("offline", item.wav)] = run_offline(pipeline, audio[item.wav])
        costs["offline"] = {"cpu_s_per_audio_s": round((time.process_time() - started) / total_audio, 4),
                            "embedded_audio_s_per_audio_s": round(
                                pipeline._embedding.samples / SAMPLE_RATE / total_audio, 3)}
        print(f"offline: done, {costs['offline']}", file=sys.stderr)
    diart_note = None
    if "diart" in systems:
        if not args.diart_python.is_file():
            diart_note = f"skipped: no diart interpreter at {args.diart_python}"
        else:
            delta_new = args.diart_delta_new if args.diart_delta_new is not None else base.new_speaker_threshold
            for latency in latencies:
                name = f"diart@{latency:g}s"
                started = time.time()
                found = run_diart(items, latency, args.diart_python, delta_new, base.tau_active,
                                  args.diart_rho_update)
                for item in items:
                    hypotheses[(name, item.wav)] = found[str(item.wav)]
                costs[name] = {"wall_s_per_audio_s": round((time.time() - started) / total_audio, 4)}
                print(f"{name}: done, {costs[name]}", file=sys.stderr)
        if diart_note:
            print(f"diart: {diart_note}", file=sys.stderr)

    rows = []
    for (system, wav), turns in hypotheses.items():
        item = next(i for i in items if i.wav == wav)
        duration = len(audio[wav]) / SAMPLE_RATE
        row = score(references[wav], to_annotation(turns), duration)
        row.update(system=system, dataset=item.dataset, file=item.name, duration=round(duration, 2),
                   reference_speech=round(sum(s.duration for s, _ in references[wav].itertracks()), 2))
        rows.append(row)
    summary = summarise(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"options": {k: v for k, v in dataclasses.asdict(base).items()},
              "offline_threshold": args.offline_threshold, "diart": diart_note or "ran", "costs": costs,
              "summary": summary, "files": rows,
              "models": {"segmentation": models.segmentation.describe(), "embedding": models.embedding.describe()}}
    args.out.write_text(json.dumps(result, indent=1, default=str))
    plot(summary, args.out.with_suffix(".png"))
    print(markdown(summary))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
