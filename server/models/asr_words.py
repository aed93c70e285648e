"""Decoded tokens → the final's text and its timed words, for character and SentencePiece vocabularies alike.

A decoder (CTC or RNNT, any engine) gives per utterance a list of ``(token id, first frame, last frame)``: for CTC
the run of frames one label held, for RNNT the frame that emitted it (first = last). :class:`WordBuilder` groups
them into words and times each from its tokens:

* word boundaries: a space token (character vocabularies; it belongs to no word) or a SentencePiece piece starting
  with ``▁`` (it begins the next word, a bare ``▁`` too: it marks where the word starts);
* a word that is only closing punctuation (``,`` ``.`` ``?`` ``»`` …, as e2e models may emit after a ``▁``) is
  attached to the word before it, one that is only opening punctuation (``«`` ``(`` ``„``) to the word after it;
  dashes stay words of their own (``слово — слово``). Attached punctuation does not change the word's times (it is
  not speech);
* a word starts at ``frame_offset + first frame × samples_per_frame`` and ends one frame after its last token's
  last frame, clipped to the audio, at least one sample long;
* the text is the words joined by single spaces, so ``words[]`` is always aligned with ``text``.
"""

from __future__ import annotations

import unicodedata
from typing import Any, Sequence

from streaming.work import Word

__all__ = ["WordBuilder", "normalize_text"]

Token = tuple[int, int, int]  # (token id, first frame, last frame)
_OPENING = "«(„“[{‹"
_DASHES = "-‐‑‒–—―"


def _punctuation_only(text: str) -> bool:
    return bool(text) and all(unicodedata.category(ch).startswith("P") for ch in text)


def _closing(text: str) -> bool:
    return _punctuation_only(text) and not any(ch in _OPENING or ch in _DASHES for ch in text)


def _opening(text: str) -> bool:
    return _punctuation_only(text) and all(ch in _OPENING for ch in text)


def normalize_text(text: str) -> str:
    """A decoder's text with the same spacing as :class:`WordBuilder` gives it: single spaces, closing punctuation
    against the word before, opening punctuation against the word after."""
    out: list[str] = []
    pending = ""
    for word in text.split():
        if _opening(word):
            pending += word
        elif _closing(word) and out and not pending:
            out[-1] += word
        else:
            out.append(pending + word)
            pending = ""
    if pending and out:
        out[-1] += pending
    elif pending:
        out.append(pending)
    return " ".join(out)


class WordBuilder:
    """Words from decoded tokens for one tokenizer (gigaam's ``Tokenizer``: characters or SentencePiece)."""

    def __init__(self, tokenizer: Any, samples_per_frame: int, frame_offset: int = 0) -> None:
        self.tokenizer = tokenizer
        self.samples_per_frame = samples_per_frame
        self.frame_offset = frame_offset
        if tokenizer.charwise:
            pieces = list(tokenizer.vocab)
            self._punctuation = [_punctuation_only(p) for p in pieces]
            self._separator = [not p.strip() for p in pieces]
            self._begins = [False] * len(pieces)
        else:
            sp = tokenizer.model
            pieces = [sp.id_to_piece(i) for i in range(len(sp))]
            self._separator = [False] * len(pieces)  # a bare '▁' begins a word (and times its start)
            self._begins = [p.startswith("\u2581") for p in pieces]
            self._punctuation = [_punctuation_only(p.lstrip("\u2581")) for p in pieces]

    def build(self, tokens: Sequence[Token], n_samples: int) -> tuple[str, tuple[Word, ...]]:
        """``(text, words)`` for one utterance of ``n_samples`` samples."""
        groups: list[list[Token]] = [[]]
        for token in tokens:
            if self._separator[token[0]] or self._begins[token[0]]:
                groups.append([])
            if not self._separator[token[0]]:
                groups[-1].append(token)
        # A group's text can hold spaces (SentencePiece spells <unk> " ⁇ "): each part is a word with its times.
        parts = [(part, group) for group in groups if group
                 for part in self.tokenizer.decode([k for k, _, _ in group]).split()]
        words: list[Word] = []
        opening = ""
        for text, group in parts:
            if _opening(text):
                opening += text
            elif _closing(text) and words and not opening:
                words[-1] = Word(text=words[-1].text + text, start=words[-1].start, end=words[-1].end)
            else:
                words.append(self._timed(opening + text, group, n_samples))
                opening = ""
        if opening and words:  # opening punctuation with nothing after it stays with the word before
            words[-1] = Word(text=words[-1].text + opening, start=words[-1].start, end=words[-1].end)
        elif opening:
            words.append(Word(text=opening, start=0, end=max(n_samples, 1)))
        return " ".join(w.text for w in words), tuple(words)

    def _timed(self, text: str, group: list[Token], n_samples: int) -> Word:
        spoken = [i for i, token in enumerate(group) if not self._punctuation[token[0]]]
        if spoken:  # leading/trailing punctuation is not speech: it does not stretch the word's time
            group = group[spoken[0] : spoken[-1] + 1]
        start = min(self.frame_offset + group[0][1] * self.samples_per_frame, max(n_samples - 1, 0))
        end = min(self.frame_offset + (group[-1][2] + 1) * self.samples_per_frame, n_samples)
        return Word(text=text, start=start, end=max(end, start + 1))
