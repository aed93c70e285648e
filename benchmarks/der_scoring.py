"""Scoring diarization against a reference: DER (collar 0 and ±0.25 s) with its parts, speaker counts and label
flips (:func:`label_flips`); RTTM and turns as pyannote annotations. Used by :mod:`benchmarks.der` and the
benchmarks that score like it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np


def load_reference(rttm: Path) -> Any:
    """An RTTM file as a pyannote ``Annotation``."""
    from pyannote.core import Annotation, Segment

    annotation = Annotation()
    for i, line in enumerate(rttm.read_text().splitlines()):
        parts = line.split()
        if parts and parts[0] == "SPEAKER":
            start, duration = float(parts[3]), float(parts[4])
            annotation[Segment(start, start + duration), i] = parts[7]
    return annotation


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
    out["flips_c025"] = label_flips(reference, hypothesis, collar=0.25)
    return out


def label_flips(reference: Any, hypothesis: Any, step: float = 0.05, collar: float = 0.0) -> int:
    """Changes of the hypothesis label covering each reference speaker, along that speaker's speech.

    Sampled every ``step`` s where exactly one reference speaker and exactly one hypothesis speaker are active
    (overlap and misses are DER's business); a change counts once however long the new label lasts. ``collar``:
    samples within this many seconds of a reference turn's start or end are skipped, as DER's collar skips them
    (``flips_c025`` = 0.25 s: a boundary drawn up to 0.25 s off is no flip there)."""
    end = max([s.end for s in reference.get_timeline()] + [s.end for s in hypothesis.get_timeline()] + [0.0])
    times = np.arange(0.0, end, step) + step / 2
    ref_labels, hyp_labels = frame_labels(reference, times), frame_labels(hypothesis, times)
    near = np.zeros(len(times), dtype=bool)
    if collar > 0:
        for segment in reference.get_timeline():
            for edge in (segment.start, segment.end):
                near |= np.abs(times - edge) < collar
    flips = 0
    last: dict[str, str] = {}
    for r, h, skip in zip(ref_labels, hyp_labels, near):
        if r is None or h is None or skip:
            continue
        if r in last and last[r] != h:
            flips += 1
        last[r] = h
    return flips


def frame_labels(annotation: Any, times: np.ndarray) -> list[Optional[str]]:
    """The one label active at each of ``times`` (``None`` where none or several are)."""
    active: list[list[str]] = [[] for _ in times]
    for segment, _, label in annotation.itertracks(yield_label=True):
        a, b = np.searchsorted(times, [segment.start, segment.end])
        for i in range(a, b):
            active[i].append(label)
    return [labels[0] if len(set(labels)) == 1 else None for labels in active]


def to_annotation(turns: Sequence[tuple[str, float, float]]) -> Any:
    """``(label, start s, end s)`` turns as a pyannote ``Annotation`` (empty turns left out)."""
    from pyannote.core import Annotation, Segment

    annotation = Annotation()
    for i, (label, start, end) in enumerate(turns):
        if end > start:
            annotation[Segment(start, end), i] = label
    return annotation
