"""What each label flip of :func:`benchmarks.der.label_flips` is: a boundary slip, a new voice's late start, or a
speaker taking another label.

``label_flips`` counts every change of the hypothesis label along one reference speaker's solo speech, sampled
every 50 ms. Users' complaint (issue #15) is narrower: one speaker split into several labels, a returning speaker
given a new one. This module replays the same samples and sorts the same changes (their number is always
``label_flips``'s) by the label a speaker is *known by*: the last label that held at least ``hold`` seconds of that
speaker's solo speech in one run.

- ``slip``: a change into a label that holds less than ``hold`` before the next change or the speaker's last sample
  (typically the previous voice's label running 0.05–0.75 s into a turn), and the change back from it to the known
  label: one slip inside a known voice counts twice in ``label_flips``;
- ``onset``: a voice's first known label arriving after its first samples carried another label (a new voice's
  first words under the previous speaker's label until the new speaker is confirmed);
- ``relabel``: the known label changes to another one that then holds ``hold`` or more (a speaker split, or a
  returning speaker with a new label): the flips of the users' complaint.

    python -m benchmarks.flip_kinds --datasets composed-espeak,composed-real --latencies 1.5 \\
        --cache-dir /work/coord/der-cache          # rechka, default pair, over cached model outputs
    python -m benchmarks.flip_kinds --composed-seed 300 --cache-dir /tmp/held-out   # other conversations
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from benchmarks.der import COMPOSED_SEED, OUT, _frame_labels, datasets, load_audio, load_reference, to_annotation

HOLD = 1.0  # seconds of one speaker's solo speech a label must hold in one run to be the label it is known by
STEP = 0.05  # the sampling of benchmarks.der.label_flips


@dataclasses.dataclass(frozen=True)
class Flip:
    """One change of the label covering ``speaker``: at ``time`` s, ``old`` → ``new``, which then holds ``run`` s."""

    time: float
    speaker: str
    old: str
    new: str
    run: float
    kind: str  # "slip", "onset" or "relabel"


def flip_events(reference: Any, hypothesis: Any, hold: float = HOLD, step: float = STEP) -> list[Flip]:
    """Every change ``label_flips(reference, hypothesis, step)`` counts (same samples: exactly one reference and one
    hypothesis speaker active), in time order, each with its kind."""
    end = max([s.end for s in reference.get_timeline()] + [s.end for s in hypothesis.get_timeline()] + [0.0])
    times = np.arange(0.0, end, step) + step / 2
    runs: dict[str, list[list]] = {}  # per reference speaker: [label, first time, samples] in order
    for t, r, h in zip(times, _frame_labels(reference, times), _frame_labels(hypothesis, times)):
        if r is None or h is None:
            continue
        speaker_runs = runs.setdefault(r, [])
        if speaker_runs and speaker_runs[-1][0] == h:
            speaker_runs[-1][2] += 1
        else:
            speaker_runs.append([h, float(t), 1])
    flips: list[Flip] = []
    for speaker, speaker_runs in runs.items():
        known: Optional[str] = speaker_runs[0][0] if speaker_runs[0][2] * step >= hold else None
        for (old, _, _), (new, t, samples) in zip(speaker_runs, speaker_runs[1:]):
            run = samples * step
            if run < hold or new == known:
                kind = "slip"
            else:
                kind = "onset" if known is None else "relabel"
                known = new
            flips.append(Flip(round(t, 3), speaker, old, new, round(run, 3), kind))
    return sorted(flips, key=lambda f: f.time)


def kinds(flips: Sequence[Flip]) -> dict[str, int]:
    """How many flips of each kind (every kind present, 0 when none)."""
    return {kind: sum(f.kind == kind for f in flips) for kind in ("slip", "onset", "relabel")}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from benchmarks.der_systems import Models, run_rechka
    from server.models.cache import EMBEDDING_DEFAULT, SEGMENTATION_DEFAULT
    from server.models.registry import fit_diarizer
    from streaming.config import SAMPLE_RATE, DiarizationOptions

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="composed-espeak,composed-real")
    parser.add_argument("--composed-seed", type=int, default=COMPOSED_SEED,
                        help=f"composed conversations of n speakers use seed this + n ({COMPOSED_SEED}: der.py's; "
                             "another base composes held-out ones)")
    parser.add_argument("--latencies", default="1.5")
    parser.add_argument("--hold", type=float, default=HOLD, help="seconds a label must hold to be a speaker's label")
    parser.add_argument("--segmentation-model", default=SEGMENTATION_DEFAULT)
    parser.add_argument("--embedding-model", default=EMBEDDING_DEFAULT)
    parser.add_argument("--cache-dir", type=Path, default=OUT / "der-cache")
    parser.add_argument("--out", type=Path, default=OUT / "flip_kinds.json")
    args = parser.parse_args(argv)
    if args.hold <= 0:
        parser.error("--hold must be > 0 seconds (1.0 is the default)")
    cache = args.cache_dir / f"{args.segmentation_model}+{args.embedding_model}.pkl"
    models = Models("cpu", args.segmentation_model, args.embedding_model, cache)
    base = fit_diarizer(DiarizationOptions(), models.segmentation, models.embedding)
    rows = []
    for item in datasets(args.datasets.split(","), composed_seed=args.composed_seed):
        audio, reference = load_audio(item.wav), load_reference(item.rttm)
        for latency in (float(x) for x in args.latencies.split(",")):
            options = dataclasses.replace(base, latency=min(base.window, int(round(latency * SAMPLE_RATE))))
            flips = flip_events(reference, to_annotation(run_rechka(audio, options, models.run)), args.hold)
            rows.append({"dataset": item.dataset, "file": item.name, "latency": latency,
                         "minutes": round(len(audio) / SAMPLE_RATE / 60, 2), "flips": len(flips), **kinds(flips),
                         "events": [dataclasses.asdict(f) for f in flips]})
            print(f"{item.name} @{latency:g}s: {len(flips)} flips {kinds(flips)}", file=sys.stderr, flush=True)
    models.save()
    summary: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = f"{row['dataset']}@{row['latency']:g}s"
        s = summary.setdefault(key, {"minutes": 0.0, "flips": 0, "slip": 0, "onset": 0, "relabel": 0})
        for field in ("minutes", "flips", "slip", "onset", "relabel"):
            s[field] = round(s[field] + row[field], 2)
    for s in summary.values():
        s.update({f"{k}_per_min": round(s[k] / max(s["minutes"], 1e-9), 2) for k in ("flips", "relabel")})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": sys.argv, "hold": args.hold, "summary": summary, "files": rows},
                                   indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
