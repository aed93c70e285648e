"""Calibrate the speaker-tracking thresholds per embedding model on the *development* sets, never the held-out ones.

Development sets: pyannote's ``sample.wav``, the AMI snippets and 60 s excerpt, and composed conversations of
seeds ``DEV_SEED + n`` (espeak-ng voices with 2, 3, 4 speakers; real voices with 3 speakers; 2 minutes each), none
of which ``benchmarks/der.py`` reports (its composed rows use seeds ``COMPOSED_SEED + n``). For every grid point
rechka's streaming diarizer runs at 1.5 s latency over all of them; model results come from ``der.py``'s cache, so
only the first grid point costs model compute. The score of a grid point is the mean, over the four sets, of DER
(collar 0) plus 0.01 × flips per minute; the best point is printed with the whole table and written as JSON.

    python -m benchmarks.der_calibrate --embedding-models campplus \\
        --grid new_speaker_threshold=0.4,0.5,0.6 --grid change_threshold=0.4,0.5,0.6
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.der import OUT, Item, datasets, load_audio, summarise  # noqa: E402
from benchmarks.der_scoring import load_reference, score, to_annotation  # noqa: E402
from benchmarks.der_systems import Models, run_rechka  # noqa: E402
from server.models.cache import CAMPPLUS, SEGMENTATION_3, SEGMENTATION_DEFAULT  # noqa: E402
from server.models.registry import fit_diarizer  # noqa: E402
from streaming.config import SAMPLE_RATE, DiarizationOptions, ms  # noqa: E402

DEV_SEED = 200
FLIP_WEIGHT = 0.01  # one flip per minute costs as much as 1 point of DER


def dev_items(minutes: float = 2.0) -> list[Item]:
    """The development sets (see the module docstring); composed ones are created on first use."""
    from benchmarks.compose import OUT_DIR, SPEAKERS_DIR, compose

    items = datasets(["sample", "ami"])
    plan = [("espeak", n) for n in (2, 3, 4)] + ([("real", 3)] if SPEAKERS_DIR.is_dir() else [])
    for source, n in plan:
        name = f"dev_{source}_{n}spk_s{DEV_SEED + n}"
        wav = OUT_DIR / f"{name}.wav"
        if not wav.is_file():
            compose(n, minutes, DEV_SEED + n, source=source, name=name).write(OUT_DIR)
        items.append(Item(f"composed-{source}", name, wav, wav.with_suffix(".rttm")))
    return items


def parse_grid(specs: Sequence[str]) -> dict[str, list[float]]:
    grid: dict[str, list[float]] = {}
    for spec in specs:
        field, _, values = spec.partition("=")
        if field not in {f.name for f in dataclasses.fields(DiarizationOptions)} or not values:
            raise SystemExit(f"--grid {spec!r}: give FIELD=v1,v2 with a DiarizationOptions field")
        grid[field] = [float(v) if "." in v else int(v) for v in values.split(",")]
    return grid


def objective(summary: dict[str, dict[str, Any]]) -> float:
    return float(np.mean([s["der_c0"] + FLIP_WEIGHT * s["flips_per_min"] for s in summary.values()]))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segmentation-models", default=f"{SEGMENTATION_DEFAULT},{SEGMENTATION_3}")
    parser.add_argument("--embedding-models", default=CAMPPLUS)
    parser.add_argument("--grid", action="append", default=[], help="FIELD=v1,v2,… (repeatable)")
    parser.add_argument("--latency", type=float, default=1.5)
    parser.add_argument("--cache-dir", type=Path, default=OUT / "der-cache")
    parser.add_argument("--out", type=Path, default=OUT / "der_calibrate.json")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    grid = parse_grid(args.grid)
    items = dev_items()
    audio = {item.wav: load_audio(item.wav) for item in items}
    references = {item.wav: load_reference(item.rttm) for item in items}
    results: list[dict[str, Any]] = []
    for segmentation, embedding in itertools.product(args.segmentation_models.split(","),
                                                     args.embedding_models.split(",")):
        models = Models("cpu", segmentation, embedding, args.cache_dir / f"{segmentation}+{embedding}.pkl")
        base = fit_diarizer(DiarizationOptions(), models.segmentation, models.embedding)
        base = dataclasses.replace(base, latency=ms(args.latency * 1000))
        for values in itertools.product(*grid.values()):
            point = dict(zip(grid, values))
            if "new_speaker_threshold" in point and "update_threshold" not in point:
                point["update_threshold"] = point["new_speaker_threshold"]
            options = dataclasses.replace(base, **point)
            started = time.process_time()
            rows = []
            for item in items:
                turns = run_rechka(audio[item.wav], options, models.run)
                row = score(references[item.wav], to_annotation(turns), len(audio[item.wav]) / SAMPLE_RATE)
                row.update(system="rechka", dataset=item.dataset, file=item.name,
                           duration=len(audio[item.wav]) / SAMPLE_RATE,
                           reference_speech=sum(s.duration for s, _ in references[item.wav].itertracks()))
                rows.append(row)
            models.save()
            summary = summarise(rows)["rechka"]
            results.append({"pair": models.tag, "point": point, "objective": round(objective(summary), 4),
                            "summary": summary, "cpu_s": round(time.process_time() - started, 1)})
            per_set = " ".join(f"{d}={s['der_c0']:.3f}/{s['flips_per_min']}" for d, s in summary.items())
            print(f"{models.tag} {point}: {results[-1]['objective']:.4f}  {per_set}", file=sys.stderr, flush=True)
    best = {pair: min((r for r in results if r["pair"] == pair), key=lambda r: r["objective"])
            for pair in dict.fromkeys(r["pair"] for r in results)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": sys.argv, "grid": grid, "best": best, "results": results}, indent=1))
    for pair, r in best.items():
        print(f"best {pair}: {r['point']} objective {r['objective']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
