"""What each label flip of :func:`benchmarks.der_scoring.label_flips` is: a boundary slip, a new voice's late start, or a
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

Per file it also counts *phantoms* (:func:`label_roles`): hypothesis labels that are no reference speaker's main
label (the one covering most of its solo speech), i.e. labels beyond the one per voice, however little they hold;
and *merged* reference speakers, whose main label is another speaker's main label too. Each flip also gets a *cause*
(:func:`flip_causes`) from the wrong label it involves (the one that is not its speaker's main label):

- ``handover``: another voice's main label, while that voice speaks within ``NEAR`` s (the previous voice's label
  running into a turn, or the next voice's label starting early: a turn change drawn in the wrong place); for the
  change back to the main label, "while" is when the wrong label's run began (the flip before it);
- ``phantom``: a label that is nobody's main label (one voice split over several labels);
- ``confusion``: another voice's main label, far from that voice's speech (an embedding taking the wrong voice).

With ``--composed-seeds``
several seed bases run in one call (a fit set and held-out sets side by side), with DER (collar 0) per dataset and
seed; ``--set FIELD=VALUE`` overrides a ``DiarizationOptions`` field (as in :mod:`benchmarks.long_replay`).

    python -m benchmarks.flip_kinds --datasets composed-espeak,composed-real --latencies 1.5 \\
        --cache-dir /work/coord/der-cache          # rechka, default pair, over cached model outputs
    python -m benchmarks.flip_kinds --composed-seed 300 --cache-dir /tmp/held-out   # other conversations
    python -m benchmarks.flip_kinds --composed-seeds 400,500 --set probe_gap=0   # held-out sets, one option changed
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from benchmarks.der import COMPOSED_SEED, OUT, datasets, load_audio
from benchmarks.der_scoring import frame_labels, load_reference, to_annotation

NEAR = 1.0  # seconds around another voice's speech within which its label at a flip is a misplaced turn change
HOLD = 1.0  # seconds of one speaker's solo speech a label must hold in one run to be the label it is known by
STEP = 0.05  # the sampling of benchmarks.der_scoring.label_flips


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
    for t, r, h in zip(times, frame_labels(reference, times), frame_labels(hypothesis, times)):
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


CAUSES = ("handover", "phantom", "confusion")


def flip_causes(reference: Any, flips: Sequence[Flip], main: dict[str, str], near: float = NEAR) -> list[str]:
    """The cause of each flip (module docstring): ``main`` is :func:`label_roles`'s reference speaker → main label."""
    owners: dict[str, list[str]] = {}
    for speaker, label in main.items():
        owners.setdefault(label, []).append(speaker)
    out = []
    since: dict[str, float] = {}  # per speaker: when its current label's run began (its last flip)
    for f in flips:
        wrong, at = (f.old, since.get(f.speaker, f.time)) if f.new == main.get(f.speaker) else (f.new, f.time)
        since[f.speaker] = f.time
        others = [s for s in owners.get(wrong, []) if s != f.speaker]
        if not others:
            out.append("phantom")
            continue
        close = any(seg.start - near <= at <= seg.end + near
                    for s in others for seg in reference.label_timeline(s))
        out.append("handover" if close else "confusion")
    return out


def kinds(flips: Sequence[Flip]) -> dict[str, int]:
    """How many flips of each kind (every kind present, 0 when none)."""
    return {kind: sum(f.kind == kind for f in flips) for kind in ("slip", "onset", "relabel")}


def label_roles(reference: Any, hypothesis: Any, step: float = STEP) -> dict[str, Any]:
    """Each reference speaker's main label (most of its solo samples: exactly one reference and one hypothesis
    speaker active), the *phantom* labels (hypothesis labels that are nobody's main label) and the *merged*
    reference speakers (whose main label another one's main label is too)."""
    end = max([s.end for s in reference.get_timeline()] + [s.end for s in hypothesis.get_timeline()] + [0.0])
    times = np.arange(0.0, end, step) + step / 2
    counts: dict[str, dict[str, int]] = {}
    for r, h in zip(frame_labels(reference, times), frame_labels(hypothesis, times)):
        if r is not None and h is not None:
            per = counts.setdefault(r, {})
            per[h] = per.get(h, 0) + 1
    main = {r: max(per, key=lambda h: (per[h], h)) for r, per in counts.items()}
    owners = list(main.values())
    return {"main": main, "phantoms": sorted(set(hypothesis.labels()) - set(owners)),
            "merged": sorted(r for r, h in main.items() if owners.count(h) > 1)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from benchmarks.der_scoring import score
    from benchmarks.der_systems import Models, run_rechka
    from benchmarks.long_replay import with_overrides
    from server.models.cache import EMBEDDING_DEFAULT, SEGMENTATION_DEFAULT
    from server.models.registry import fit_diarizer
    from streaming.config import SAMPLE_RATE, DiarizationOptions

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="composed-espeak,composed-real")
    parser.add_argument("--composed-seed", type=int, default=COMPOSED_SEED,
                        help=f"composed conversations of n speakers use seed this + n ({COMPOSED_SEED}: der.py's; "
                             "another base composes held-out ones)")
    parser.add_argument("--composed-seeds", default=None,
                        help="several seed bases, comma-separated (e.g. 100,300: a fit set; 400,500: held out)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a DiarizationOptions field (repeat)")
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
    base = with_overrides(fit_diarizer(DiarizationOptions(), models.segmentation, models.embedding), args.set)
    seeds = [int(x) for x in args.composed_seeds.split(",")] if args.composed_seeds else [args.composed_seed]
    names = args.datasets.split(",")
    items = [(None, item) for item in datasets([n for n in names if not n.startswith("composed")])]
    items += [(seed, item) for seed in seeds for item in datasets([n for n in names if n.startswith("composed")],
                                                                 composed_seed=seed)]
    rows = []
    for seed, item in items:
        audio, reference = load_audio(item.wav), load_reference(item.rttm)
        for latency in (float(x) for x in args.latencies.split(",")):
            options = dataclasses.replace(base, latency=min(base.window, int(round(latency * SAMPLE_RATE))))
            hypothesis = to_annotation(run_rechka(audio, options, models.run))
            flips = flip_events(reference, hypothesis, args.hold)
            roles = label_roles(reference, hypothesis)
            causes = flip_causes(reference, flips, roles["main"])
            scored = score(reference, hypothesis, len(audio) / SAMPLE_RATE)
            rows.append({"dataset": item.dataset, "seed": seed, "file": item.name,
                         "latency": latency, "minutes": round(len(audio) / SAMPLE_RATE / 60, 2),
                         "reference_speech": round(sum(s.duration for s, _ in reference.itertracks()), 2),
                         "der_c0": scored["der_c0"], "flips": len(flips), **kinds(flips),
                         **{c: causes.count(c) for c in CAUSES},
                         "phantoms": len(roles["phantoms"]), "merged": len(roles["merged"]), "roles": roles,
                         "events": [{**dataclasses.asdict(f), "cause": c} for f, c in zip(flips, causes)]})
            print(f"{item.name} @{latency:g}s: DER {scored['der_c0']:.3f}, {len(flips)} flips {kinds(flips)}, "
                  f"causes { {c: causes.count(c) for c in CAUSES} }, "
                  f"phantoms {roles['phantoms']}, merged {roles['merged']}", file=sys.stderr, flush=True)
    models.save()
    summary = summarise(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": sys.argv, "hold": args.hold, "options": args.set,
                                    "summary": summary, "files": rows}, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per dataset, seed base and latency: minutes, flips of each kind and cause, phantoms, merged speakers, DER
    (collar 0, weighted by reference speech) and flips / relabels per minute."""
    summary: dict[str, dict[str, Any]] = {}
    fields = ("minutes", "flips", "slip", "onset", "relabel", *CAUSES, "phantoms", "merged")
    for row in rows:
        seed = f"/s{row['seed']}" if row.get("seed") is not None else ""
        key = f"{row['dataset']}{seed}@{row['latency']:g}s"
        s = summary.setdefault(key, {**{f: 0 for f in fields}, "_der": 0.0, "_speech": 0.0})
        for field in fields:
            s[field] = round(s[field] + row.get(field, 0), 2)
        s["_der"] += row["der_c0"] * row["reference_speech"]
        s["_speech"] += row["reference_speech"]
    for s in summary.values():
        s["der_c0"] = round(s.pop("_der") / max(s.pop("_speech"), 1e-9), 4)
        s.update({f"{k}_per_min": round(s[k] / max(s["minutes"], 1e-9), 2) for k in ("flips", "relabel")})
    return summary


if __name__ == "__main__":
    sys.exit(main())
