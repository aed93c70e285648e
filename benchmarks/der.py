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
  virtual environment (``--diart-python``), skipped when that interpreter is missing; several latencies share one
  model pass (``--diart-separate``: one run each; the output is the same);
- ``offline-zeropad`` and ``diart-zeropad``: the same two with resemblyzer's own zero padding of audio under 1.6 s
  instead of the adapter's repetition (``ResemblyzerEmbedding.repeat_short``), which suits them less or more: each
  is shown both ways;
- ``oracle`` (not run by default): rechka with *oracle* embeddings (:mod:`benchmarks.oracle_embeddings`, each
  reference speaker's share of the embedded audio), with the default options (``oracle-emb``) and with fine
  segments (``oracle-emb-fine``: ``segment_gap`` 50 ms, ``min_segment_speech`` 250 ms, safe when embeddings are
  exact): what is left is the segmentation model's and the pipeline's, not the embedding model's.

Metrics (pyannote.metrics): DER at collar 0 and at a ±0.25 s collar (NIST; pyannote ``collar=0.5``), with its
missed / false-alarm / confusion parts, overlap scored; the number of hypothesis speakers; and label *flips*: how
often the hypothesis label that covers a reference speaker changes along that speaker's speech (0 = every
reference speaker kept one label for the whole file), also with the samples within ±0.25 s of a reference turn's
edge skipped (``flips_c025``: boundary slips of up to a collar are no flips there). Writes JSON and a PNG to ``benchmarks/out/`` and prints a
markdown table.

    python -m benchmarks.der                         # every dataset, rechka + offline (+ diart if installed)
    python -m benchmarks.der --datasets sample,ami --systems rechka
    python -m benchmarks.der --systems oracle          # rechka with oracle embeddings: the segmentation's share
    python -m benchmarks.der --systems rechka --baseline main   # old vs new streaming/ side by side

``--baseline REF`` also runs the ``rechka`` systems with ``streaming/`` as of git ``REF`` (the rest of the code and
the cached model outputs shared; a child process, since both versions are ``streaming``), its systems named
``rechka@REF ...``: the tracker's old and new code on the same model outputs, in one table.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
if os.environ.get("RECHKA_DER_STREAMING"):  # --baseline's child: ``streaming`` as of another commit
    sys.path.insert(0, os.environ["RECHKA_DER_STREAMING"])

from benchmarks.der_scoring import load_reference, score, to_annotation  # noqa: E402
from benchmarks.der_systems import (Models, offline_pipeline, run_diart, run_diart_latencies, run_offline,  # noqa: E402
                                    run_rechka)
from server.models.cache import (CAMPPLUS, EMBEDDING_DEFAULT, EMBEDDING_REUSE, EMBEDDING_REUSE_DEFAULT,  # noqa: E402
                                 SEGMENTATION_3, SEGMENTATION_DEFAULT)
from server.models.registry import fit_diarizer  # noqa: E402
from streaming.config import SAMPLE_RATE, DiarizationOptions, ms  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
SHARED = Path(os.environ.get("RECHKA_SHARED_SPEECH", "/work/shared/speech"))
PYANNOTE_SAMPLE = Path(__import__("pyannote.audio").audio.__file__).parent / "sample"
DIART_PYTHON = Path("/tmp/diart-venv/bin/python")
COMPOSED_SEED = 100  # composed conversations use seeds 100 + n: none of them was used to tune the defaults
COMPOSED_SPEAKERS = {"espeak": (2, 3, 4, 6), "real": (3, 5)}  # one composed conversation per speaker count
OFFLINE_THRESHOLD = {EMBEDDING_DEFAULT: 0.5, CAMPPLUS: 0.6}  # agglomerative clustering, per embedding model


@dataclasses.dataclass
class Item:
    dataset: str
    name: str
    wav: Path
    rttm: Path


# ---------------------------------------------------------------------------------------------------- datasets
def datasets(names: Sequence[str], composed_minutes: float = 5.0,
             speakers: Optional[dict[str, Sequence[int]]] = None, composed_seed: int = COMPOSED_SEED) -> list[Item]:
    """The items of the named datasets; composed conversations of ``n`` speakers use seed ``composed_seed + n``."""
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

        for n in (speakers or COMPOSED_SPEAKERS)[source]:
            seed = composed_seed + n
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
            flips_c025 = sum(r.get("flips_c025", 0) for r in rs)
            avg.update(files=len(rs), minutes=round(minutes, 1), flips=sum(r["flips"] for r in rs),
                       flips_per_min=round(sum(r["flips"] for r in rs) / max(minutes, 1e-9), 2),
                       flips_c025=flips_c025, flips_c025_per_min=round(flips_c025 / max(minutes, 1e-9), 2),
                       speaker_count_error=sum(abs(r["hyp_speakers"] - r["ref_speakers"]) for r in rs))
            out[system][dataset] = avg
    return out


def markdown(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = ["| system | dataset | files | min | DER c0 | DER ±0.25 s | miss | FA | conf. | flips/min | "
             "flips/min ±0.25 s | |Δspk| |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for system, per in summary.items():
        for dataset, s in per.items():
            lines.append(f"| {system} | {dataset} | {s['files']} | {s['minutes']} | {s['der_c0']:.3f} | "
                         f"{s['der_c025']:.3f} | {s['missed']:.3f} | {s['false_alarm']:.3f} | {s['confusion']:.3f} | "
                         f"{s['flips_per_min']} | {s['flips_c025_per_min']} | {s['speaker_count_error']} |")
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
    parser.add_argument("--espeak-speakers", default="2,3,4,6", help="composed espeak conversations (speaker counts)")
    parser.add_argument("--real-speakers", default="3,5", help="composed real-voice conversations (speaker counts)")
    parser.add_argument("--composed-seed", type=int, default=COMPOSED_SEED,
                        help="composed conversations of n speakers use seed this + n (another base: held-out ones)")
    parser.add_argument("--systems", default="rechka,offline,diart",
                        help="any of rechka,offline,offline-zeropad,diart,diart-zeropad,oracle")
    parser.add_argument("--segmentation-models", default=f"{SEGMENTATION_DEFAULT},{SEGMENTATION_3}")
    parser.add_argument("--embedding-models", default=f"{EMBEDDING_DEFAULT},{CAMPPLUS}")
    parser.add_argument("--latencies", default="0.5,1.5,5.0", help="seconds; rechka and diart run at each")
    parser.add_argument("--steps", default=None,
                        help="seconds between rechka's segmentation windows, comma-separated (default: "
                             "DiarizationOptions.step); a step other than the default is named in the system "
                             "(rechka PAIR@1.5s/step1s); a latency below a step is skipped")
    parser.add_argument("--offline-threshold", type=float, default=None,
                        help="agglomerative clustering threshold of the offline pipeline (default: per embedding "
                             f"model, best on the development sets: {OFFLINE_THRESHOLD})")
    parser.add_argument("--diart-python", type=Path, default=DIART_PYTHON)
    parser.add_argument("--diart-delta-new", type=float, default=None,
                        help="diart's new-speaker distance (default: rechka's new_speaker_threshold)")
    parser.add_argument("--diart-rho-update", type=float, default=0.3)
    parser.add_argument("--diart-separate", action="store_true",
                        help="one diart run per latency (by default several latencies share one model pass: "
                             "diart_runner.py --latencies, the same output)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--diarization-engine", choices=("torch", "onnx", "auto"), default="torch",
                        help="the models' engine (server.models.diarization_onnx; default torch, the shared cache's); "
                             "another engine's results are cached in their own files (PAIR+ENGINE.pkl)")
    parser.add_argument("--embedding-reuse", choices=tuple(EMBEDDING_REUSE), default=EMBEDDING_REUSE_DEFAULT,
                        help="resemblyzer's stream-grid partial reuse, as the server's --embedding-reuse (its "
                             "embeddings are then computed every run, not cached)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="DiarizationOptions override for the rechka systems (repeat; VALUE as JSON), applied "
                             "at the default step before --steps scales the counts")
    parser.add_argument("--cache-dir", type=Path, default=OUT / "der-cache",
                        help="model results per model pair, reused by later runs ('none': no cache)")
    parser.add_argument("--out", type=Path, default=OUT / "der.json")
    parser.add_argument("--baseline", metavar="REF", help="also run rechka with streaming/ as of this git ref")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    baseline_rows = baseline(args, argv if argv is not None else sys.argv[1:]) if args.baseline else []

    speakers = {"espeak": [int(n) for n in args.espeak_speakers.split(",")],
                "real": [int(n) for n in args.real_speakers.split(",")]}
    items = datasets(args.datasets.split(","), speakers=speakers, composed_seed=args.composed_seed)
    audio = {item.wav: load_audio(item.wav) for item in items}
    references = {item.wav: load_reference(item.rttm) for item in items}
    hypotheses: dict[tuple[str, Path], list[tuple[str, float, float]]] = {}
    costs: dict[str, dict[str, float]] = {}
    described: dict[str, Any] = {}
    notes: list[str] = []
    for segmentation, embedding in itertools.product(args.segmentation_models.split(","),
                                                     args.embedding_models.split(",")):
        suffix = "" if args.diarization_engine == "torch" else f"+{args.diarization_engine}"
        cache = None if str(args.cache_dir) == "none" else args.cache_dir / f"{segmentation}+{embedding}{suffix}.pkl"
        models = Models(args.device, segmentation, embedding, cache, engine=args.diarization_engine,
                        reuse=args.embedding_reuse)
        run_systems(args, models, items, audio, references, hypotheses, costs, notes)
        models.save()
        described[models.tag] = {"segmentation": models.segmentation.describe(),
                                 "embedding": models.embedding.describe(),
                                 "options": dataclasses.asdict(fit_diarizer(DiarizationOptions(), models.segmentation,
                                                                            models.embedding))}
    rows = []
    for (system, wav), turns in hypotheses.items():
        item = next(i for i in items if i.wav == wav)
        duration = len(audio[wav]) / SAMPLE_RATE
        row = score(references[wav], to_annotation(turns), duration)
        row.update(system=system, dataset=item.dataset, file=item.name, duration=round(duration, 2),
                   reference_speech=round(sum(s.duration for s, _ in references[wav].itertracks()), 2))
        rows.append(row)
    rows += baseline_rows
    summary = summarise(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"command": sys.argv, "notes": notes, "costs": costs, "summary": summary, "files": rows,
              "models": described}
    args.out.write_text(json.dumps(result, indent=1, default=str))
    plot(summary, args.out.with_suffix(".png"))
    print(markdown(summary))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}", file=sys.stderr)
    return 0


def rechka_base(models: Any, assignments: Sequence[str] = ()) -> DiarizationOptions:
    """rechka's diarizer options for a model pair: fitted to the models as the server fits them, then the ``--set``
    ``FIELD=VALUE`` overrides (:func:`benchmarks.long_replay.with_overrides`)."""
    from benchmarks.long_replay import with_overrides

    return with_overrides(fit_diarizer(DiarizationOptions(), models.segmentation, models.embedding), assignments)


def rechka_variants(base: DiarizationOptions, latencies: list[float], steps: Optional[list[float]] = None
                    ) -> tuple[list[tuple[str, DiarizationOptions]], list[str]]:
    """rechka's diarizer options per (latency, step) in seconds, named ``1.5s`` (``1.5s/step1s`` for a step other
    than ``DiarizationOptions``' default; its counts scaled by ``DiarizationOptions.at_step``, as the server's
    ``--diarization-step`` does), and the names skipped because the latency is below the step. Latencies are capped
    at the window; ``steps`` None: ``base.step``."""
    variants, skipped = [], []
    for latency, step_s in itertools.product(latencies, steps or [base.step / SAMPLE_RATE]):
        step = int(round(step_s * SAMPLE_RATE))
        name = f"{latency:g}s" + ("" if step == DiarizationOptions.step else f"/step{step_s:g}s")
        latency_samples = min(base.window, int(round(latency * SAMPLE_RATE)))
        if latency_samples < step:
            skipped.append(name)
            continue
        variants.append((name, dataclasses.replace(base.at_step(step), latency=latency_samples)))
    return variants, skipped


def run_systems(args: argparse.Namespace, models: Models, items: list[Item], audio: dict[Path, np.ndarray],
                references: dict[Path, Any], hypotheses: dict[tuple[str, Path], list[tuple[str, float, float]]],
                costs: dict[str, dict[str, float]], notes: list[str]) -> None:
    """Every requested system on one (segmentation, embedding) pair; system names carry the pair's tag."""
    systems = args.systems.split(",")
    latencies = [float(x) for x in args.latencies.split(",")]
    base = rechka_base(models, args.set)
    total_audio = sum(len(a) for a in audio.values()) / SAMPLE_RATE
    tag = models.tag
    steps = None if args.steps is None else [float(x) for x in args.steps.split(",")]
    if "rechka" in systems:
        variants, skipped = rechka_variants(base, latencies, steps)
        notes += [f"rechka {tag}@{v}: skipped, the latency is below the step" for v in skipped]
        for variant, options in variants:
            name = f"rechka {tag}@{variant}"
            models.reset_counters()
            started = time.process_time()
            for item in items:
                hypotheses[(name, item.wav)] = run_rechka(audio[item.wav], options, models.run)
            costs[name] = {"cpu_s_per_audio_s": round((time.process_time() - started) / total_audio, 4),
                           "model_cpu_s_per_audio_s": round(models.cpu_s / total_audio, 4),
                           "computed_windows_per_audio_s": round(models.windows / total_audio, 3),
                           "computed_embeddings_per_audio_s": round(models.embeddings / total_audio, 3),
                           "embedded_audio_s_per_audio_s": round(models.embedded_samples / SAMPLE_RATE / total_audio,
                                                                 3)}
            print(f"{name}: done, {costs[name]}", file=sys.stderr, flush=True)
    if "oracle" in systems:
        from benchmarks.oracle_embeddings import OracleEmbeddings

        fine = dataclasses.replace(base, segment_gap=ms(50), min_segment_speech=ms(250))
        for latency, (variant, options) in itertools.product(latencies, (("", base), ("-fine", fine))):
            name = f"oracle-emb{variant} {_segmentation_tag(models)}@{latency:g}s"
            options = dataclasses.replace(options, latency=min(base.window, int(round(latency * SAMPLE_RATE))))
            for item in items:
                oracle = OracleEmbeddings(references[item.wav], models.run)
                hypotheses[(name, item.wav)] = run_rechka(audio[item.wav], options, oracle)
            print(f"{name}: done", file=sys.stderr, flush=True)
    embedding = models.names[1]
    threshold = args.offline_threshold if args.offline_threshold is not None else OFFLINE_THRESHOLD[embedding]
    for variant, repeat_short in (("offline", True), ("offline-zeropad", False)):
        if variant not in systems or (not repeat_short and embedding != EMBEDDING_DEFAULT):
            continue
        name = f"{variant} {tag}"
        pipeline = offline_pipeline(models, threshold, repeat_short)
        started = time.process_time()
        for item in items:
            hypotheses[(name, item.wav)] = run_offline(pipeline, audio[item.wav])
        embedded = pipeline._embedding.samples / SAMPLE_RATE
        costs[name] = {"cpu_s_per_audio_s": round((time.process_time() - started) / total_audio, 4),
                       "embedded_audio_s_per_audio_s": round(embedded / total_audio, 3), "threshold": threshold}
        print(f"{name}: done, {costs[name]}", file=sys.stderr, flush=True)
    variants = [(v, repeat) for v, repeat in (("", True), ("-zeropad", False)) if f"diart{v}" in systems
                and (repeat or embedding == EMBEDDING_DEFAULT)]
    if variants and not args.diart_python.is_file():
        notes.append(f"diart skipped: no diart interpreter at {args.diart_python}")
        variants = []
    delta_new = args.diart_delta_new if args.diart_delta_new is not None else base.new_speaker_threshold
    wavs = [item.wav for item in items]
    if len(latencies) > 1 and not args.diart_separate:  # one model pass serves every latency
        for variant, repeat_short in variants:
            started = time.time()
            found = run_diart_latencies(wavs, latencies, args.diart_python, delta_new, base.tau_active,
                                        args.diart_rho_update, repeat_short, models=models)
            wall = round((time.time() - started) / total_audio, 4)
            for latency in latencies:
                name = f"diart{variant} {tag}@{latency:g}s"
                for item in items:
                    hypotheses[(name, item.wav)] = found[latency][str(item.wav)]
                costs[name] = {"wall_s_per_audio_s_all_latencies": wall, "delta_new": delta_new}
            print(f"diart{variant} {tag}@{args.latencies}: done, {wall} wall-s per audio s", file=sys.stderr,
                  flush=True)
        return
    for latency, (variant, repeat_short) in itertools.product(latencies, variants):
        name = f"diart{variant} {tag}@{latency:g}s"
        started = time.time()
        found = run_diart(wavs, latency, args.diart_python, delta_new, base.tau_active,
                          args.diart_rho_update, repeat_short, models=models)
        for item in items:
            hypotheses[(name, item.wav)] = found[str(item.wav)]
        costs[name] = {"wall_s_per_audio_s": round((time.time() - started) / total_audio, 4), "delta_new": delta_new}
        print(f"{name}: done, {costs[name]}", file=sys.stderr, flush=True)


def baseline(args: argparse.Namespace, argv: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of ``rechka`` systems run by a child with ``streaming/`` as of ``args.baseline`` (extracted with
    ``git archive`` into a temporary directory), renamed ``rechka@REF ...``; model outputs come from the same cache,
    so run the current code first or share ``--cache-dir``."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "streaming"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        out = Path(tmp) / "baseline.json"
        child, skip = [], False
        for a in argv:
            if not skip and not a.startswith("--baseline"):
                child.append(a)
            skip = a == "--baseline"
        child += ["--systems", "rechka", "--out", str(out)]
        subprocess.run([sys.executable, "-m", "benchmarks.der", *child], check=True, cwd=ROOT,
                       env=dict(os.environ, RECHKA_DER_STREAMING=tmp), stdout=subprocess.DEVNULL)
        rows = json.loads(out.read_text())["files"]
    for row in rows:
        row["system"] = row["system"].replace("rechka", f"rechka@{args.baseline}", 1)
    return rows


def _segmentation_tag(models: Models) -> str:
    return models.tag.split("+")[0]


if __name__ == "__main__":
    sys.exit(main())
