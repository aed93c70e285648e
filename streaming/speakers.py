"""Speaker tracking: local speakers of one window → global speakers of the session, by embedding.

Each global speaker has a centroid (the mean of the unit-normalised embeddings assigned to it, or an exponential
moving average when ``centroid_rate > 0``) and a label ``S1``, ``S2``, … given in order of creation and never reused
or forgotten, so a speaker who comes back after a long silence gets the old label.

One call to :meth:`SpeakerTracker.assign` maps the embeddings of one window's local speakers at once with a
constrained assignment (Hungarian; two local speakers of a window never map to one global speaker), minimising the
total cosine distance. Thresholds (all in :class:`~streaming.config.DiarizationOptions`):

- ``new_speaker_threshold``: a local speaker farther than this from every centroid is a *candidate* new speaker.
  Candidates close to each other (within the same threshold) from ``new_speaker_windows`` windows, each within
  ``window`` samples of the previous one, become a new global speaker (while fewer than ``max_speakers`` exist;
  with ``fresh_evidence``, at steps below 1 s, a window counts only when the voice's speech runs at least ``step / 2``
  past the speech that last counted, see ``speech_ends``: overlapping windows re-embedding the same audio are one
  piece of evidence);
  until then the local speaker is unassigned (``None``); after each call, :attr:`SpeakerTracker.joined` says which
  candidate each embedding joined and :attr:`SpeakerTracker.promoted` which candidates became speakers, so the
  caller can credit a confirmed speaker with the windows that waited for it. A local speaker within the threshold
  of a centroid that a closer local speaker of the same window took is unassigned too, rather than starting a
  duplicate.
- ``min_speakers``: until that many speakers exist, one window confirms a candidate, and a local speaker displaced
  by a closer one of its window (both near one centroid) becomes a candidate rather than unassigned.
- ``max_speakers``: when every slot is used, local speakers go to the nearest free centroid regardless of distance
  (and, if a window has more local speakers than centroids, to the nearest centroid at all).
- ``update_threshold``: a centroid only learns from embeddings closer than this, so forced assignments and
  borderline matches do not drag it towards another voice.
- ``borderline_margin`` / ``borderline_windows`` / ``borderline_count``: a candidate whose mean lies just beyond
  the threshold of a mature speaker (within ``new_speaker_threshold + borderline_margin`` of one holding
  ``borderline_count`` embeddings) needs ``borderline_windows`` windows instead: a well-known voice's odd segment
  usually comes back within the threshold before then, a new voice keeps adding to its candidate.
- ``merge_distance`` / ``merge_count``: after a centroid learns, if another live speaker's centroid lies within
  ``merge_distance`` and the larger of the two holds ``merge_count`` embeddings, they merge: the one with more
  embeddings stays, the other is *merged* (:attr:`SpeakerTracker.merged`; it takes nobody again, ``max_speakers``
  counts only live speakers, its label is never reused). This undoes "phantom" speakers that one widely spread
  voice founded before its centroid was well estimated. With ``merge_apart`` two speakers no window ever heard as
  two of its local speakers merge at any maturity: one voice rarely is two local speakers of one window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from streaming.config import MAX_SPEAKERS, DiarizationOptions

_NEW = -1  # marks a local speaker that is far from every centroid


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(norms, 1e-12)


def label_of(index: int) -> str:
    """The public label of global speaker ``index`` (0-based): ``S1``, ``S2``, …"""
    return f"S{index + 1}"


@dataclass(eq=False)
class _Candidate:
    """Far-from-everyone embeddings that may become a new speaker: their sum, count and last sighting."""

    total: np.ndarray
    count: int
    last_seen: int  # position (in samples) of the window that last added to it
    key: int = -1   # identifies the candidate to callers until it becomes a speaker
    heard_until: int = -1  # the end (in samples) of the latest speech that added to ``count``


class SpeakerTracker:
    """Centroids of the global speakers of one channel and the local→global assignment rule."""

    def __init__(self, options: DiarizationOptions) -> None:
        self.options = options
        self.capacity = options.max_speakers if options.max_speakers is not None else MAX_SPEAKERS
        self.minimum = options.min_speakers or 0
        self.reset()

    def reset(self) -> None:
        """Forget every speaker and candidate; the next speaker is ``S1`` again."""
        self._centroids = np.zeros((0, 0), dtype=np.float64)
        self._counts: list[float] = []
        self._merged: dict[int, int] = {}          # speaker merged away → the live speaker it became
        self._together: set[frozenset[int]] = set()  # pairs of live speakers one window heard as two local speakers
        self._candidates: list[_Candidate] = []
        self._next_key = 0
        self._last_key = -1
        self.joined: list[Optional[int]] = []      # per embedding of the last assign(): key of the candidate it joined
        self.promoted: list[tuple[int, int]] = []  # (candidate key, new global speaker) created by the last assign()
        self.merges: list[tuple[int, int]] = []    # (speaker merged away, speaker kept) by the last assign()

    @property
    def candidates(self) -> set[int]:
        """Keys of the candidate new speakers still waiting for confirmation."""
        return {c.key for c in self._candidates}

    @property
    def n_speakers(self) -> int:
        """Speakers created so far, merged ones included (their labels are never reused)."""
        return len(self._counts)

    @property
    def n_live(self) -> int:
        """Speakers not merged into another."""
        return len(self._counts) - len(self._merged)

    @property
    def merged(self) -> dict[int, int]:
        """Each speaker merged away → the live speaker it is now part of (a copy)."""
        return dict(self._merged)

    @property
    def labels(self) -> tuple[str, ...]:
        """Labels of every global speaker created so far, in creation order."""
        return tuple(label_of(i) for i in range(self.n_speakers))

    @property
    def centroids(self) -> np.ndarray:
        """``(n_speakers, D)`` unit-norm centroids (a copy)."""
        return unit(self._centroids) if self.n_speakers else self._centroids.copy()

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        """Cosine distances ``(len(embeddings), n_speakers)`` in [0, 2]."""
        e = unit(np.atleast_2d(embeddings))
        if not self.n_speakers:
            return np.zeros((len(e), 0))
        d = np.clip(1.0 - e @ self.centroids.T, 0.0, 2.0)
        d[:, list(self._merged)] = 2.0  # merged speakers take nobody
        return d

    def assign(self, embeddings: Sequence[np.ndarray], at: int = 0,
               exclude: Sequence[int] = (), speech_ends: Optional[Sequence[int]] = None) -> list[Optional[int]]:
        """Global speaker index (or ``None``) for each embedding of one window's local speakers; creates new
        speakers, updates centroids and merges converged ones (:attr:`merges`; merged speakers are never
        returned). ``at``: the window's position in samples (for candidate expiry, calls must come in increasing
        order). ``exclude``: global speakers already taken in this window. ``speech_ends``: per embedding, the
        sample where its voice's speech in this window ends (default ``at``), for ``fresh_evidence``."""
        if not len(embeddings):
            return []
        e = unit(np.stack([np.asarray(x, dtype=np.float64).ravel() for x in embeddings]))
        if self.n_speakers and e.shape[1] != self._centroids.shape[1]:
            raise ValueError(f"embedding size changed from {self._centroids.shape[1]} to {e.shape[1]}")
        m, n = len(e), self.n_speakers
        below_minimum = self.n_live < self.minimum
        dist = self.distances(e)
        threshold = self.options.new_speaker_threshold
        free = [g for g in range(n) if g not in set(exclude) and g not in self._merged]
        n_new = min(m, self.capacity - self.n_live)
        # columns: free existing speakers, then n_new "new speaker" slots costing the threshold
        cost = np.full((m, len(free) + n_new), threshold)
        cost[:, :len(free)] = dist[:, free]
        result: list[Optional[int]] = [None] * m
        placed = [False] * m
        for r, c in zip(*linear_sum_assignment(cost)) if cost.shape[1] else ():
            placed[r] = True
            if c < len(free):
                result[r] = free[c]
            elif not (n and dist[r].min() <= threshold) or below_minimum:
                result[r] = _NEW
            # else: displaced by a closer local speaker of this window; a duplicate speaker would be worse
            # (below min_speakers the model's word that these are two voices is taken instead)
        for r in range(m):
            if not placed[r] and self.n_live:
                result[r] = int(np.argmin(dist[r]))  # no slot left at all: the nearest centroid
        self._candidates = [c for c in self._candidates if at - c.last_seen <= self.options.window]
        heard = sorted({g for g in result if g is not None and g != _NEW})
        self._together.update(frozenset((a, b)) for i, a in enumerate(heard) for b in heard[i + 1:])
        joined: set[int] = set()
        out: list[Optional[int]] = []
        self.joined, self.promoted, self.merges = [None] * m, [], []
        for r, g in enumerate(result):
            if g == _NEW:
                g = self._candidate(e[r], at, joined, speech_ends[r] if speech_ends is not None else None)
                if g is None:
                    self.joined[r] = self._last_key
            elif g is not None and dist[r, g] <= self.options.update_threshold:
                self._update(g, e[r])
                self._merge_converged(g)
            out.append(g)
        return [self.live(g) if g is not None else None for g in out]

    def live(self, g: int) -> int:
        """The live speaker that speaker ``g`` is part of (``g`` itself unless it was merged)."""
        while g in self._merged:
            g = self._merged[g]
        return g

    def match(self, embeddings: Sequence[np.ndarray], exclude: Sequence[int] = (),
              threshold: float = 0.45) -> list[Optional[int]]:
        """Map embeddings that describe a mixture (overlapped speech) to existing global speakers only: a one-to-one
        assignment over the speakers not in ``exclude``, accepted within ``threshold``. Creates and updates nothing."""
        out: list[Optional[int]] = [None] * len(embeddings)
        free = [g for g in range(self.n_speakers) if g not in set(exclude)]
        if not len(embeddings) or not free:
            return out
        dist = self.distances(np.stack([np.asarray(x, dtype=np.float64).ravel() for x in embeddings]))[:, free]
        for r, c in zip(*linear_sum_assignment(dist)):
            if dist[r, c] <= threshold:
                out[r] = free[c]
        return out

    def _candidate(self, embedding: np.ndarray, at: int, joined: set[int],
                   speech_end: Optional[int] = None) -> Optional[int]:
        """Add a far embedding to the nearest candidate (one per window) or start one; promote when confirmed."""
        candidate, best_dist = None, self.options.new_speaker_threshold
        for c in self._candidates:
            d = 1.0 - float(unit(c.total) @ embedding)
            if id(c) not in joined and d <= best_dist:
                candidate, best_dist = c, d
        fresh = speech_end if speech_end is not None else at
        if candidate is None:
            candidate = _Candidate(embedding.copy(), 1, at, self._next_key, fresh)
            self._next_key += 1
            self._candidates.append(candidate)
        else:
            candidate.total = candidate.total + embedding
            candidate.last_seen = at
            if not self.options.applies_fresh_evidence or fresh - candidate.heard_until >= self.options.step // 2:
                candidate.count += 1
                candidate.heard_until = max(candidate.heard_until, fresh)
        joined.add(id(candidate))
        self._last_key = candidate.key
        needed = 1 if self.n_live < self.minimum else self._windows_needed(unit(candidate.total))
        if candidate.count < needed or self.n_live >= self.capacity:
            return None
        self._candidates.remove(candidate)
        g = self._create(candidate.total / candidate.count, candidate.count)
        self.promoted.append((candidate.key, g))
        return g

    def _windows_needed(self, mean: np.ndarray) -> int:
        """Windows a candidate with this mean needs: ``borderline_windows`` while a live speaker lies within
        ``new_speaker_threshold + borderline_margin`` of it, else ``new_speaker_windows``."""
        options = self.options
        if options.borderline_margin <= 0:
            return options.new_speaker_windows
        mature = [g for g in range(self.n_speakers) if g not in self._merged
                  and self._counts[g] >= options.borderline_count]
        if mature:
            nearest = float(np.min(1.0 - self.centroids[mature] @ mean))
            if nearest <= options.new_speaker_threshold + options.borderline_margin:
                most = max(options.new_speaker_windows, options.window // options.step)
                return min(max(options.new_speaker_windows, options.borderline_windows), most)
        return options.new_speaker_windows

    def _create(self, centroid: np.ndarray, count: int) -> int:
        if not self.n_speakers:
            self._centroids = centroid[None, :].copy()
        else:
            self._centroids = np.vstack([self._centroids, centroid[None, :]])
        self._counts.append(float(count))
        return self.n_speakers - 1

    def _merge_converged(self, g: int) -> None:
        """Merge live speaker ``g`` with the nearest other live speaker if their centroids have come within
        ``merge_distance``: the one with more embeddings is kept (the older on a tie), the other's label is retired
        and its centroid folded into the kept one's."""
        limit = self.options.merge_distance
        g = self.live(g)
        others = [h for h in range(self.n_speakers) if h != g and h not in self._merged]
        if limit <= 0 or not others:
            return
        c = self.centroids
        d = 1.0 - c[others] @ c[g]
        h = others[int(np.argmin(d))]
        mature = max(self._counts[g], self._counts[h]) >= self.options.merge_count
        apart = not self.options.merge_apart or frozenset((g, h)) in self._together
        if d.min() > limit or (not mature and apart):
            return
        keep, gone = sorted((g, h), key=lambda x: (-self._counts[x], x))
        total = self._counts[keep] + self._counts[gone]
        self._centroids[keep] = (self._centroids[keep] * self._counts[keep]
                                 + self._centroids[gone] * self._counts[gone]) / total
        self._counts[keep] = total
        self._merged[gone] = keep
        self._together = {frozenset(keep if x == gone else x for x in pair) for pair in self._together}
        self._together = {pair for pair in self._together if len(pair) == 2}
        self.merges.append((gone, keep))

    def _update(self, g: int, embedding: np.ndarray) -> None:
        rate, count = self.options.centroid_rate, self._counts[g]
        if rate > 0:
            self._centroids[g] = (1.0 - rate) * self._centroids[g] + rate * embedding
        else:
            self._centroids[g] = (self._centroids[g] * count + embedding) / (count + 1.0)
        self._counts[g] = count + 1.0
