"""How good partial transcripts are, measured against the final of the same utterance (``benchmarks/partials.py``).

The final is the reference: it decodes the whole utterance at once, it is the same in every partial policy (the
policy never changes finals), and what a partial shows is meant to become it. A partial covers its utterance's audio
up to the partial's ``end``; its *reference* is the final's words whose midpoint lies before that ``end`` (the words
spoken in the audio it saw; a word cut in two by ``end`` is expected when more than half of it was heard).

Per partial event, the partial's words are aligned to its reference by word-level Levenshtein distance, and summed
over all partial events of a run:

- ``confirmed_share``: matched partial words / partial words — the share of the words a user was shown that the
  final confirms at the aligned position (precision).
- ``wer`` / ``cer``: (substitutions + deletions + insertions) / reference words, and the same over characters of
  the space-joined texts (a word cut in two pieces costs 2 word errors but only 1 character error).
- ``shown_wer``: the same WER for what the user *sees* on a 100 ms clock from speech onset to the utterance's end
  (the latest partial with ``end`` at or before the tick, nothing before the first one), against the final's words
  heard by then: it also counts how stale a partial gets between updates.

Per partial decode (the ASR requests): ``context_free_share`` is the share of an utterance's decodes after its
first that re-encode none of the audio before the previous decode's end (no left context); the first decode of an
utterance starts at the utterance and is not counted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np

from streaming import wire

TICK = 1600  # samples: the shown-text clock (100 ms)


@dataclass(frozen=True)
class Alignment:
    """Word-level Levenshtein alignment counts of a hypothesis against a reference."""

    matches: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions


def align(reference: Sequence[str], hypothesis: Sequence[str]) -> Alignment:
    """Minimum-edit alignment (unit costs); among equally short edit paths, the one with the most matches."""
    n, m = len(reference), len(hypothesis)
    # cost[i][j] = (edits, -matches, subs, dels, ins) for reference[:i] against hypothesis[:j]
    cost = [[(j, 0, 0, 0, j) for j in range(m + 1)]]
    for i in range(1, n + 1):
        row = [(i, 0, 0, i, 0)]
        for j in range(1, m + 1):
            e, nm, s, d, ins = cost[i - 1][j - 1]
            same = reference[i - 1] == hypothesis[j - 1]
            diagonal = (e, nm - 1, s, d, ins) if same else (e + 1, nm, s + 1, d, ins)
            e, nm, s, d, ins = cost[i - 1][j]
            deletion = (e + 1, nm, s, d + 1, ins)
            e, nm, s, d, ins = row[j - 1]
            insertion = (e + 1, nm, s, d, ins + 1)
            row.append(min(diagonal, deletion, insertion))
        cost.append(row)
    _, nm, s, d, ins = cost[n][m]
    return Alignment(-nm, s, d, ins)


def edit_distance(reference: str, hypothesis: str) -> int:
    """Levenshtein distance over characters."""
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        current = [i]
        for j, h in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def heard_words(final: wire.Final, end: int) -> list[str]:
    """The final's words whose midpoint lies before ``end`` (absolute samples)."""
    return [w.word for w in final.words if (w.start + w.end) / 2 < end]


class QualityTally:
    """Sums of alignment counts over many (reference, hypothesis) pairs; rates are corpus-level."""

    def __init__(self) -> None:
        self.pairs = 0
        self.reference_words = self.hypothesis_words = self.matches = self.errors = 0
        self.reference_chars = self.char_errors = 0

    def add(self, reference: Sequence[str], hypothesis: Sequence[str]) -> None:
        a = align(reference, hypothesis)
        self.pairs += 1
        self.reference_words += len(reference)
        self.hypothesis_words += len(hypothesis)
        self.matches += a.matches
        self.errors += a.errors
        ref_text, hyp_text = " ".join(reference), " ".join(hypothesis)
        self.reference_chars += len(ref_text)
        self.char_errors += edit_distance(ref_text, hyp_text)

    def wer(self) -> Optional[float]:
        return _ratio(self.errors, self.reference_words)

    def cer(self) -> Optional[float]:
        return _ratio(self.char_errors, self.reference_chars)

    def confirmed_share(self) -> Optional[float]:
        return _ratio(self.matches, self.hypothesis_words)


def _ratio(a: int, b: int) -> Optional[float]:
    return round(a / b, 4) if b else None


def shown_texts(partials: Sequence[wire.Partial], onset: int, end: int, tick: int = TICK) -> Iterable[tuple[int, str]]:
    """``(tick time, text shown then)`` every ``tick`` samples in ``(onset, end]``: the latest partial with
    ``end`` at or before the tick ("" before the first). ``partials`` are one utterance's, in order."""
    shown, k = "", 0
    for t in range(onset + tick, end + 1, tick):
        while k < len(partials) and partials[k].end <= t:
            shown = partials[k].text
            k += 1
        yield t, shown


def context_free(windows: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """``(context-free decodes, decodes counted)`` for one utterance's partial windows in the order sent: every
    window after the first counts; it is context-free when it starts at or after the previous window's end."""
    free = sum(a >= prev_b for (_, prev_b), (a, _) in zip(windows, windows[1:]))
    return free, max(len(windows) - 1, 0)


@dataclass
class SessionRun:
    """What one channel of a session gave: its partial and final events and, per utterance (keyed by its start
    sample, as the events' ``start``), its partial windows in the order sent and where its speech starts (the
    shown-text clock starts there)."""

    partials: list[wire.Partial] = field(default_factory=list)
    finals: list[wire.Final] = field(default_factory=list)
    windows: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    onsets: dict[int, int] = field(default_factory=dict)


def partial_quality(runs: Iterable[SessionRun]) -> dict[str, Optional[float]]:
    """The measures of the module docstring, summed over ``runs``."""
    events, shown = QualityTally(), QualityTally()
    free = decodes = 0
    for run in runs:
        by_utterance: dict[int, list[wire.Partial]] = {}
        for p in run.partials:
            by_utterance.setdefault(p.start, []).append(p)
        for final in run.finals:
            mine = by_utterance.get(final.start, [])
            for p in mine:
                events.add(heard_words(final, p.end), p.text.split())
            for t, text in shown_texts(mine, run.onsets.get(final.start, final.start), final.end):
                shown.add(heard_words(final, t), text.split())
        for windows in run.windows.values():
            f, n = context_free(windows)
            free, decodes = free + f, decodes + n
    return {"partial_events": events.pairs, "partial_words": events.hypothesis_words,
            "confirmed_share": events.confirmed_share(), "wer": events.wer(), "cer": events.cer(),
            "shown_wer": shown.wer(), "shown_cer": shown.cer(), "context_free_share": _ratio(free, decodes)}


# ----------------------------------------------------------------------------------------------- held-out speech
def held_out_speech(count: int, seed: int = 0, sequences: tuple[int, int] = (2, 4)) -> list[tuple[str, np.ndarray]]:
    """``count`` utterances the tiny GigaAM models never trained on (``scripts/train_tiny_gigaam.py``): each joins
    ``sequences`` held-out word sequences (3-20 words, ~2-8 s) spoken by one held-out espeak-ng voice. Returns
    ``(reference text, int16 audio at 16 kHz)``."""
    from scripts.train_tiny_gigaam import (HELD_OUT_VOICES, PITCH_RANGE, SPEED_RANGE, load_lexicon,
                                           random_sequence, synthesize)

    rng, words = random.Random(seed), load_lexicon()
    out = []
    for _ in range(count):
        text = " ".join(random_sequence(rng, words, True) for _ in range(rng.randint(*sequences)))
        audio = synthesize(text, rng.choice(HELD_OUT_VOICES), rng.randint(*SPEED_RANGE), rng.randint(*PITCH_RANGE))
        out.append((text, np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)))
    return out


def final_wer(streams: Iterable[tuple[Sequence[wire.Final], Sequence[tuple[int, int, str]]]]) -> Optional[float]:
    """Corpus WER of the finals against the spoken text (how good the partial measures' reference is). Per stream
    ``(finals, clips)``, per clip ``(start, end, text)``: the words of the finals whose midpoint lies in it."""
    tally = QualityTally()
    for finals, clips in streams:
        for start, end, text in clips:
            tally.add(text.split(), [w for f in finals if start <= (f.start + f.end) / 2 < end for w in f.text.split()])
    return tally.wer()
