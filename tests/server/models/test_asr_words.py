"""Tokens → words: SentencePiece word boundaries from '▁', punctuation attached, times from frames, text aligned."""

from __future__ import annotations

from pathlib import Path

import pytest
from gigaam.decoding import Tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from server.models.asr_words import WordBuilder, normalize_text
from streaming.work import Word

SP_MODEL = Path(__file__).resolve().parents[2] / "assets" / "tiny_v3_e2e_ctc_tokenizer.model"
FRAME = 640


@pytest.fixture(scope="module")
def sp() -> Tokenizer:
    return Tokenizer([], str(SP_MODEL))


def _ids(tokenizer: Tokenizer, *pieces: str) -> list[int]:
    ids = [tokenizer.model.piece_to_id(p) for p in pieces]
    assert all(i != tokenizer.model.unk_id() for i in ids), pieces
    return ids


def test_pieces_group_into_words_at_the_word_marker_with_frame_times(sp: Tokenizer) -> None:
    text = "Привет, работать."
    ids = sp.model.encode(text)
    tokens = [(k, 2 * i, 2 * i + 1) for i, k in enumerate(ids)]  # each piece holds two frames
    out_text, words = WordBuilder(sp, FRAME).build(tokens, 10**6)
    assert out_text == text and [w.text for w in words] == ["Привет,", "работать."]
    comma = ids.index(sp.model.piece_to_id(","))
    assert words[0].start == 0 and words[0].end == comma * 2 * FRAME  # the comma adds no time to its word
    assert words[1].start == (comma + 1) * 2 * FRAME


def test_a_bare_word_marker_begins_the_word_it_precedes(sp: Tokenizer) -> None:
    ids = sp.model.encode("Привет мир")  # words outside the vocabulary are spelt after a bare '▁'
    pieces = [sp.model.id_to_piece(k) for k in ids]
    assert "\u2581" in pieces
    text, words = WordBuilder(sp, FRAME).build([(k, i, i) for i, k in enumerate(ids)], 10**6)
    assert text == "Привет мир" and [w.text for w in words] == ["Привет", "мир"]
    assert words[0].start == 0 and words[1].start == pieces.index("\u2581", 1) * FRAME


def test_punctuation_after_a_word_marker_attaches_to_the_word_before(sp: Tokenizer) -> None:
    ids = _ids(sp, "\u2581работать", "\u2581", ",", "\u2581десять", "\u2581", ".")
    text, words = WordBuilder(sp, FRAME).build([(k, i, i) for i, k in enumerate(ids)], 10**6)
    assert text == "работать, десять." and [w.text for w in words] == ["работать,", "десять."]
    assert (words[0].start, words[0].end, words[1].start, words[1].end) == (0, FRAME, 3 * FRAME, 4 * FRAME)
    assert all(w.text.strip(",.") for w in words)
    assert normalize_text(sp.decode(ids)) == text


def test_times_are_offset_and_clipped_to_the_audio(sp: Tokenizer) -> None:
    ids = _ids(sp, "\u2581работать", "\u2581десять")
    _, words = WordBuilder(sp, FRAME, frame_offset=160).build([(ids[0], 0, 1), (ids[1], 5, 9)], 4000)
    assert words == (Word("работать", 160, 160 + 2 * FRAME), Word("десять", 160 + 5 * FRAME, 4000))
    _, late = WordBuilder(sp, FRAME).build([(ids[0], 50, 50)], 4000)
    assert late == (Word("работать", 3999, 4000),)


def test_character_vocabularies_split_at_spaces() -> None:
    chars = Tokenizer([" "] + [chr(c) for c in range(ord("а"), ord("я") + 1)])
    ids = [chars.vocab.index(ch) for ch in "да  нет"]
    text, words = WordBuilder(chars, FRAME).build([(k, i, i) for i, k in enumerate(ids)], 10**6)
    assert text == "да нет" and [(w.text, w.start, w.end) for w in words] == [("да", 0, 2 * FRAME),
                                                                             ("нет", 4 * FRAME, 7 * FRAME)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=95), max_size=30), st.integers(min_value=1, max_value=50000))
def test_any_token_sequence_gives_words_aligned_with_the_text(tokens: list[int], n_samples: int) -> None:
    tokenizer = Tokenizer([], str(SP_MODEL))
    text, words = WordBuilder(tokenizer, FRAME).build([(k, i, i) for i, k in enumerate(tokens)], n_samples)
    assert " ".join(w.text for w in words) == text
    assert text == normalize_text(tokenizer.decode(tokens))
    for w in words:
        assert w.text and " " not in w.text and 0 <= w.start < w.end <= n_samples
