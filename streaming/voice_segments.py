"""What of one local speaker's activity in a window gets an embedding, and where that speaker changes voice.

The segmentation model sometimes gives two voices that follow each other (one stops, a pause, the next starts) the
same local speaker of a window. One embedding over all of that local speaker's speech then describes a mixture,
and every frame of it gets the label of whichever voice dominates: the first second of a new speaker's turn is
labelled as the previous speaker. So each local speaker's speech is cut into *segments* at pauses, every segment
is embedded on its own, and consecutive segments whose embeddings disagree become separate local speakers.

1. :func:`plan_segments`: the local speaker's *clean* frames (where it is the only active speaker) split at pauses
   of at least ``DiarizationOptions.segment_gap``; segments with less than ``min_segment_speech`` are merged into
   their nearer neighbour (short embeddings are noisy). When the clean frames hold less than
   ``min_embedding_speech`` in all, its overlapped frames are used instead (marked ``overlapped``: such an
   embedding describes a mixture and may only *match* an existing speaker, see ``overlap_match_threshold``).
   :func:`plan_probes`: a short first or last stretch of confident speech (score above ``probe_level``) that a
   long pause in it (``probe_gap``) sets apart is also embedded on its own, a *probe*: the model sometimes gives a
   voice's first (or last) words after (or before) a pause the previous (next) voice's local speaker, too short for
   a segment of their own, and may even bridge the pause with scores just above ``tau_active``.
   With ``pause_depth`` on, :func:`acoustic_pauses` finds silences in the audio itself: PyanNet sometimes bridges
   the pause between two voices with one local speaker's scores. A segment such a silence cuts is also embedded
   piece by piece (:func:`plan_segments` with ``quiet``, :func:`nest_pieces`), and :func:`refine_at_pauses`
   replaces it by its pieces (marked ``acoustic``) only where they hold two voices.
   :func:`split_probes` hands a probe's frames to another global speaker when its embedding lies within
   ``probe_match_threshold`` of that speaker and farther than ``change_threshold`` from the speaker its local
   speaker got.
2. :func:`split_by_voice`: consecutive segments closer than ``change_threshold`` (cosine distance between the
   running mean of the group and the next segment) stay one voice; a farther segment starts a new voice. Each voice
   (A segment parted from the one before only by an acoustic pause also needs to sound like another known speaker
   than the voice so far.) Each voice
   gets the local speaker's scores on its own frame range (boundaries halfway between segments) and the
   speech-weighted mean of its segments' unit embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from streaming.config import DiarizationOptions
from streaming.speakers import SpeakerTracker, unit


@dataclass(frozen=True)
class Segment:
    """Frames ``[first, stop)`` of one local speaker, embedded on ``spans`` (sample ranges within the window)."""

    first: int
    stop: int
    spans: tuple[tuple[int, int], ...]
    overlapped: bool = False
    acoustic: bool = False  # only an acoustic pause (no pause in the scores) parts it from the segment before

    @property
    def speech(self) -> int:
        return sum(b - a for a, b in self.spans)


@dataclass(frozen=True)
class Voice:
    """One voice of a local speaker: its scores (zero outside its frame range) and its embedding."""

    scores: np.ndarray
    embedding: np.ndarray
    overlapped: bool = False


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[a, b)`` index ranges of the True runs of a boolean vector."""
    if not mask.size:
        return []
    padded = np.concatenate([[False], mask.astype(bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def acoustic_pauses(audio: np.ndarray, lo: np.ndarray, hi: np.ndarray, options: DiarizationOptions,
                    frame_step: float) -> np.ndarray:
    """Frames in an acoustic pause (``DiarizationOptions.pause_depth``): runs of at least ``pause_min`` frames whose
    level (mean square of their samples ``[lo, hi)`` in ``audio``) lies more than ``pause_depth`` dB below the
    95th percentile of the window's frame levels. All False when the option is off."""
    quiet = np.zeros(len(lo), dtype=bool)
    if options.pause_depth <= 0 or not len(lo):
        return quiet
    x = np.asarray(audio, dtype=np.float64) ** 2
    cumulative = np.concatenate([[0.0], np.cumsum(x)])
    a, b = np.clip(lo, 0, len(x)), np.clip(hi, 0, len(x))
    level = 10.0 * np.log10((cumulative[b] - cumulative[a]) / np.maximum(b - a, 1) + 1e-12)
    inside = b > a
    if not inside.any():
        return quiet
    loud = np.percentile(level[inside], 95)
    low = inside & (level < loud - options.pause_depth)
    shortest = max(1, int(round(options.pause_min / frame_step)))
    for first, stop in runs(low):
        if stop - first >= shortest:
            quiet[first:stop] = True
    return quiet


def plan_segments(clean: np.ndarray, active: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                  options: DiarizationOptions, frame_step: float, quiet: Optional[np.ndarray] = None) -> list[Segment]:
    """Segments to embed for one local speaker. ``clean``/``active``: its frame masks; ``lo``/``hi``: each frame's
    sample span in the window; ``frame_step``: samples per frame; ``quiet``: frames in an acoustic pause
    (:func:`acoustic_pauses`): one with speech of the group on both sides cuts the group there (the pieces after
    such a cut are marked ``acoustic``; quiet frames at a group's edges stay in its spans). Empty when it has too
    little speech."""
    def speech(frame_runs: Sequence[tuple[int, int]]) -> int:
        return sum(max(0, int(hi[b - 1]) - int(lo[a])) for a, b in frame_runs)

    overlapped = False
    scored = clean
    frame_runs = runs(clean)
    if speech(frame_runs) < options.min_embedding_speech:
        frame_runs, overlapped, scored = runs(active), True, active
        if speech(frame_runs) < max(1, options.min_embedding_speech):
            return []
    groups = _groups(frame_runs, options.segment_gap, frame_step)
    if quiet is not None and quiet.any():
        groups = [piece for g in groups for piece in _cut_at_pauses(g, quiet)]
    while len(groups) > 1:
        short = [i for i, g in enumerate(groups) if speech(g) < options.min_segment_speech]
        if not short:
            break
        i = short[0]
        if i == 0:
            j = 1
        elif i == len(groups) - 1:
            j = i - 1
        else:
            before = groups[i][0][0] - groups[i - 1][-1][1]
            after = groups[i + 1][0][0] - groups[i][-1][1]
            j = i - 1 if before <= after else i + 1
        a, b = min(i, j), max(i, j)
        groups[a:b + 1] = [groups[a] + groups[b]]
    gap = max(1, int(round(options.segment_gap / frame_step)))
    out: list[Segment] = []
    for g in groups:
        spans = tuple((int(lo[a]), int(hi[b - 1])) for a, b in g if hi[b - 1] > lo[a])
        if spans:
            acoustic = bool(out) and not any(b - a >= gap for a, b in runs(~scored[out[-1].stop:g[0][0]]))
            out.append(Segment(g[0][0], g[-1][1], spans, overlapped, acoustic))
    return out


def _cut_at_pauses(group: list[tuple[int, int]], quiet: np.ndarray) -> list[list[tuple[int, int]]]:
    """A group of frame runs cut at every quiet run with speech of the group before and after it (those frames
    dropped); quiet runs at its edges are kept."""
    first, stop = group[0][0], group[-1][1]
    cuts = [(first + a, first + b) for a, b in runs(quiet[first:stop]) if a > 0 and first + b < stop]
    if not cuts:
        return [group]
    pieces: list[list[tuple[int, int]]] = []
    bounds = [first] + [x for cut in cuts for x in cut] + [stop]
    for a, b in zip(bounds[::2], bounds[1::2]):
        piece = [(max(ra, a), min(rb, b)) for ra, rb in group if min(rb, b) > max(ra, a)]
        if piece:
            pieces.append(piece)
    return pieces


def _groups(frame_runs: Sequence[tuple[int, int]], pause: int, frame_step: float) -> list[list[tuple[int, int]]]:
    """Frame runs grouped: a pause of at least ``pause`` samples starts a new group."""
    gap = max(1, int(round(pause / frame_step)))
    groups: list[list[tuple[int, int]]] = []
    for a, b in frame_runs:
        if groups and a - groups[-1][-1][1] < gap:
            groups[-1].append((a, b))
        else:
            groups.append([(a, b)])
    return groups


def plan_probes(confident: np.ndarray, lo: np.ndarray, hi: np.ndarray, options: DiarizationOptions,
                frame_step: float) -> list[Segment]:
    """Edge stretches of one local speaker to embed on their own as well (``DiarizationOptions.probe_gap``).
    ``confident``: its clean frames scored above ``probe_level``; pauses of at least ``probe_gap`` in them cut it
    into groups. A trailing probe is the longest run of last groups holding less than ``min_segment_speech`` (so
    :func:`plan_segments` merged it into a longer segment) but at least ``probe_min_speech``, while the groups
    before it hold ``min_segment_speech``; a leading probe likewise. A probe's frames ``[first, stop)`` reach from
    the middle of its pause to the window's edge."""
    if options.probe_gap <= 0:
        return []

    def speech(groups: Sequence[list[tuple[int, int]]]) -> int:
        return sum(max(0, int(hi[b - 1]) - int(lo[a])) for g in groups for a, b in g)

    groups = _groups(runs(confident), options.probe_gap, frame_step)
    out = []
    for leading in (True, False):
        best = None
        for n in range(1, len(groups)):
            edge, rest = (groups[:n], groups[n:]) if leading else (groups[-n:], groups[:-n])
            if speech(edge) >= options.min_segment_speech:
                break
            if speech(edge) >= options.probe_min_speech and speech(rest) >= options.min_segment_speech:
                best = n
        if best is None:
            continue
        edge = groups[:best] if leading else groups[-best:]
        pause = (groups[best - 1][-1][1], groups[best][0][0]) if leading else \
            (groups[-best - 1][-1][1], groups[-best][0][0])
        middle = (pause[0] + pause[1]) // 2
        first, stop = (0, middle) if leading else (middle, len(confident))
        spans = tuple((int(lo[a]), int(hi[b - 1])) for g in edge for a, b in g if hi[b - 1] > lo[a])
        if spans:
            out.append(Segment(first, stop, spans))
    return out


def _voice_groups(segments: Sequence[Segment], units: Sequence[np.ndarray], change_threshold: float,
                  sounds_like: Optional[Callable[[np.ndarray], Optional[int]]]) -> list[list[int]]:
    """Consecutive segments grouped into voices (see :func:`split_by_voice`); ``units``: their unit embeddings."""
    groups: list[list[int]] = []
    total = np.zeros_like(units[0])
    for i, u in enumerate(units):
        same = bool(groups) and 1.0 - float(unit(total) @ u) <= change_threshold
        if groups and not same and segments[i].acoustic:
            heard = sounds_like(u) if sounds_like is not None else None
            same = heard is None or heard == sounds_like(unit(total))  # type: ignore[misc]
        if same:
            groups[-1].append(i)
            total = total + u * segments[i].speech
            continue
        groups.append([i])
        total = u * segments[i].speech
    return groups


def nest_pieces(segments: Sequence[Segment], pieces: Sequence[Segment]) -> dict[int, list[Segment]]:
    """Segment index → the acoustic pieces (``plan_segments`` with ``quiet``) lying within it, for the segments that
    acoustic pauses cut into two or more."""
    out: dict[int, list[Segment]] = {}
    for i, segment in enumerate(segments):
        inside = [p for p in pieces if segment.first <= p.first and p.stop <= segment.stop]
        if len(inside) > 1:
            out[i] = inside
    return out


def refine_at_pauses(segments: Sequence[Segment], embeddings: Sequence[np.ndarray],
                     pieces: dict[int, list[Segment]], piece_embeddings: dict[int, list[np.ndarray]],
                     change_threshold: float, sounds_like: Callable[[np.ndarray], Optional[int]]
                     ) -> tuple[list[Segment], list[np.ndarray]]:
    """Segments (and embeddings) with those whose acoustic pieces hold two voices (:func:`split_by_voice`'s rule
    over the pieces alone) replaced by one segment per voice, marked ``acoustic`` after the first; every other
    segment keeps its own embedding (so nothing changes where no acoustic pause parts two voices)."""
    out_segments: list[Segment] = []
    out_embeddings: list[np.ndarray] = []
    for i, (segment, embedding) in enumerate(zip(segments, embeddings)):
        parts = pieces.get(i, [])
        units = [unit(e) for e in piece_embeddings.get(i, [])]
        groups = _voice_groups(parts, units, change_threshold, sounds_like) if parts else []
        if len(groups) < 2:
            out_segments.append(segment)
            out_embeddings.append(embedding)
            continue
        for n, g in enumerate(groups):
            spans = tuple(span for j in g for span in parts[j].spans)
            out_segments.append(Segment(parts[g[0]].first, parts[g[-1]].stop, spans, segment.overlapped, n > 0))
            out_embeddings.append(unit(sum(units[j] * parts[j].speech for j in g)))
    return out_segments, out_embeddings


def split_by_voice(scores: np.ndarray, segments: Sequence[Segment], embeddings: Sequence[np.ndarray],
                   change_threshold: float,
                   sounds_like: Optional[Callable[[np.ndarray], Optional[int]]] = None) -> list[Voice]:
    """The voices of one local speaker (``scores``: its column) from its segments and their embeddings. A segment
    that only an acoustic pause parts from the one before (``Segment.acoustic``) starts a new voice only when, as
    well, ``sounds_like`` (the known speaker an embedding is nearest to, ``None`` for none within reach) names a
    speaker for it, and another one than for the voice so far: one voice's sentences are often parted by silences,
    and a piece that sounds like nobody known would found a speaker on a few noisy seconds."""
    if not segments:
        return []
    units = [unit(e) for e in embeddings]
    groups = _voice_groups(segments, units, change_threshold, sounds_like)
    bounds = [0]
    for left, right in zip(groups[:-1], groups[1:]):
        bounds.append((segments[left[-1]].stop + segments[right[0]].first) // 2)
    bounds.append(len(scores))
    voices = []
    for g, a, b in zip(groups, bounds[:-1], bounds[1:]):
        column = np.zeros_like(scores)
        column[a:b] = scores[a:b]
        mean = sum(units[i] * segments[i].speech for i in g)
        voices.append(Voice(column, unit(mean), segments[g[0]].overlapped))
    return voices


def split_probes(columns: list[np.ndarray], probes: Sequence[tuple[int, Segment, np.ndarray]],
                 mapping: dict[int, int], tracker: SpeakerTracker, options: DiarizationOptions,
                 active: list[int]) -> list[np.ndarray]:
    """Hand probes to the speaker they sound like. ``probes``: (voice column it lies in, probe, its embedding);
    ``mapping``: voice column → global speaker so far. A probe whose voice got a speaker farther than
    ``change_threshold`` from the probe, while another live speaker lies within ``probe_match_threshold`` (the
    nearest is taken), leaves its voice's column: its frames become a new column mapped to that speaker (added to
    ``mapping`` and ``active``). Returns the new columns, to append after ``columns``; creates and updates no
    speaker."""
    out: list[np.ndarray] = []
    for parent, probe, embedding in probes:
        owner = mapping.get(parent)
        if owner is None or not tracker.n_speakers:
            continue
        distances = tracker.distances(embedding[None, :])[0]
        distances[owner] = 2.0
        nearest = int(np.argmin(distances))
        if 1.0 - float(unit(embedding) @ tracker.centroids[owner]) <= options.change_threshold or \
                distances[nearest] > options.probe_match_threshold:
            continue
        column = np.zeros_like(columns[parent])
        column[probe.first:probe.stop] = columns[parent][probe.first:probe.stop]
        columns[parent] = columns[parent].copy()
        columns[parent][probe.first:probe.stop] = 0.0
        c = len(columns) + len(out)
        out.append(column)
        mapping[c] = nearest
        active.append(c)
    return out
