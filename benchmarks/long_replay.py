"""The hour-long label check of :mod:`benchmarks.long_diarization` without a server: the same composed conversation
through the sans-I/O :class:`~streaming.diarization.StreamingDiarizer`, with the model outputs cached on disk.

The diarizer's requests depend only on the audio and the segmentation scores (never on tracking decisions), so the
first run computes every segmentation window and embedding once (``--cache``, default
``benchmarks/out/long-cache/``) and later runs replay the tracking over them in seconds: the loop for tuning the
tracker. ``--set FIELD=VALUE`` overrides a ``DiarizationOptions`` field (repeat); ``--trace`` writes every tracker
call (the window, each voice's distance to every speaker, the decision) to a JSON file for diagnosis.

    python -m benchmarks.long_replay                      # 60 min, 12 blocks, default models: the server run's input
    python -m benchmarks.long_replay --set new_speaker_threshold=0.3 --trace /tmp/trace.json

Prints the checks of :func:`benchmarks.long_diarization.check` as JSON (``labels_over_5s`` after the speaker merges,
``labels_over_5s_as_sent`` before, the merges and where they happened, returns, per voice the share of its speech
under its main label) and exits 0 when all hold. The audio is quantised to 16-bit as the
server receives it; it is fed in 1 s chunks (the server gets 0.1 s ones: window positions are the same).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

if __package__ in (None, ""):  # run as a file: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import OUT_DIR, SAMPLE_RATE
from benchmarks.der_systems import Models, run_rechka
from benchmarks.long_diarization import check, compose_long
from server.models.cache import EMBEDDING_DEFAULT, EMBEDDING_REUSE, EMBEDDING_REUSE_DEFAULT, SEGMENTATION_DEFAULT
from server.models.registry import fit_diarizer
from streaming.config import DiarizationOptions


def with_overrides(options: DiarizationOptions, assignments: Sequence[str]) -> DiarizationOptions:
    """``options`` with ``FIELD=VALUE`` assignments applied (VALUE parsed as JSON, e.g. ``0.3``, ``null``, ``2``);
    an unknown field raises ``ValueError`` naming it."""
    fields = {f.name for f in dataclasses.fields(DiarizationOptions)}
    changes: dict[str, Any] = {}
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--set {assignment!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        changes[name] = json.loads(value)
    return dataclasses.replace(options, **changes)


class TrackerTrace:
    """Records every :meth:`SpeakerTracker.assign` call of a diarizer: window end, the distance of each embedding
    to every existing speaker, and the result (wraps the tracker's method; purely observational)."""

    def __init__(self, tracker: Any) -> None:
        self.calls: list[dict[str, Any]] = []
        assign = tracker.assign

        def traced(embeddings: Sequence[np.ndarray], *args: Any, **kwargs: Any) -> list:
            before = tracker.distances(np.stack(embeddings)).round(3).tolist() if len(embeddings) else []
            out = assign(embeddings, *args, **kwargs)
            at = kwargs.get("at", args[0] if args else 0)
            if len(embeddings):
                self.calls.append({"at_s": round(at / SAMPLE_RATE, 2), "distances": before, "result": out,
                                   "joined": list(tracker.joined), "promoted": list(tracker.promoted)})
            return out

        tracker.assign = traced


def replay(audio: np.ndarray, options: DiarizationOptions, models: Models, trace: Optional[list] = None,
           merges: Optional[list] = None) -> list[tuple[str, float, float]]:
    """Final turns (label, start s, end s) of the diarizer over ``audio``, as sent when ``merges`` (a list) collects
    the speaker merges, else with them applied; ``trace`` (a list) collects tracker calls."""
    if trace is None:
        return run_rechka(audio, options, models.run, merges=merges)
    import benchmarks.der_systems as systems

    made = systems.StreamingDiarizer

    def traced(*args: Any, **kwargs: Any) -> Any:
        diarizer = made(*args, **kwargs)
        trace.append(TrackerTrace(diarizer.tracker))
        return diarizer

    systems.StreamingDiarizer = traced  # type: ignore[misc]
    try:
        return run_rechka(audio, options, models.run, merges=merges)
    finally:
        systems.StreamingDiarizer = made  # type: ignore[misc]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--blocks", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--return-gap", type=float, default=120.0)
    p.add_argument("--segmentation-model", default=SEGMENTATION_DEFAULT)
    p.add_argument("--embedding-model", default=EMBEDDING_DEFAULT)
    p.add_argument("--embedding-reuse", choices=tuple(EMBEDDING_REUSE), default=EMBEDDING_REUSE_DEFAULT,
                   help="resemblyzer's stream-grid partial reuse, as the server's --embedding-reuse")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="DiarizationOptions override")
    p.add_argument("--cache", type=Path, default=OUT_DIR / "long-cache", help="model results (a directory)")
    p.add_argument("--trace", type=Path, help="write every tracker call here (JSON)")
    args = p.parse_args(argv)
    conversation, plan = compose_long(args.minutes, args.blocks, args.seed)
    audio = (np.clip(conversation.audio * 32767, -32768, 32767).astype(np.int16) / 32768.0).astype(np.float32)
    cache = args.cache / f"{conversation.name}+{args.segmentation_model}+{args.embedding_model}.pkl"
    models = Models("cpu", args.segmentation_model, args.embedding_model, cache, reuse=args.embedding_reuse)
    options = with_overrides(fit_diarizer(DiarizationOptions(), models.segmentation, models.embedding), args.set)
    started = time.process_time()
    trace: Optional[list] = [] if args.trace else None
    merges: list = []
    turns = replay(audio, options, models, trace, merges)
    models.save()
    result = {"benchmark": "long_replay", "minutes": round(len(audio) / SAMPLE_RATE / 60, 2), "plan": plan,
              "overrides": args.set, "cpu_s": round(time.process_time() - started, 1),
              "model_cpu_s": round(models.cpu_s, 1), "turns": len(turns),
              **check(conversation.reference, turns, args.return_gap, [(m.merged, m.into) for m in merges]),
              "merges_at_s": [round(m.at / SAMPLE_RATE, 1) for m in merges]}
    if args.trace and trace:
        args.trace.write_text(json.dumps({"reference": conversation.reference, "turns": turns,
                                          "calls": trace[0].calls}, default=int))
    print(json.dumps(result, indent=1, default=str))
    ok = result["exactly_4_labels"] and result["distinct_voice_labels"] and result["returns_keep_label"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
