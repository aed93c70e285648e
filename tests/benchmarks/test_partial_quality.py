"""benchmarks/partial_quality.py: partial text measured against its final, and the held-out speech it runs on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.partial_quality import (SessionRun, align, context_free, edit_distance, final_wer, heard_words,
                                        partial_quality, shown_texts)
from streaming import wire

TINY = Path(__file__).resolve().parents[2] / "tests" / "assets" / "tiny_gigaam_ctc.ckpt"


def final(text: str, start: int = 0, step: int = 1000) -> wire.Final:
    """A final whose k-th word spans [start + k*step, start + k*step + step/2)."""
    words = tuple(wire.WordTiming(w, start + k * step, start + k * step + step // 2)
                  for k, w in enumerate(text.split()))
    return wire.Final(1, 0, start, start + len(words) * step, text, words)


def partial(text: str, end: int, start: int = 0) -> wire.Partial:
    return wire.Partial(1, 0, start, end, text)


@pytest.mark.parametrize("ref, hyp, counts", [
    ("a b c", "a b c", (3, 0, 0, 0)),
    ("a b c", "a x c", (2, 1, 0, 0)),
    ("привет мир", "при вет мир", (1, 1, 0, 1)),  # a word cut in two: one substitution and one insertion
    ("a b c", "", (0, 0, 3, 0)),
    ("", "a b", (0, 0, 0, 2)),
    ("a b c d", "b c d", (3, 0, 1, 0)),
])
def test_alignment_counts(ref: str, hyp: str, counts: tuple) -> None:
    a = align(ref.split(), hyp.split())
    assert (a.matches, a.substitutions, a.deletions, a.insertions) == counts


words = st.lists(st.sampled_from(["a", "b", "c", "dd"]), max_size=7)


@given(words, words)
def test_alignment_accounts_for_every_word_and_equals_edit_distance(ref: list, hyp: list) -> None:
    a = align(ref, hyp)
    assert a.matches + a.substitutions + a.deletions == len(ref)
    assert a.matches + a.substitutions + a.insertions == len(hyp)
    code = {"a": "1", "b": "2", "c": "3", "dd": "4"}  # one character per word: the character distance is the same
    assert a.errors == edit_distance("".join(code[w] for w in ref), "".join(code[w] for w in hyp))
    back = align(hyp, ref)
    assert (back.errors, back.deletions, back.insertions) == (a.errors, a.insertions, a.deletions)


def test_character_edit_distance() -> None:
    assert edit_distance("привет", "привет") == 0
    assert edit_distance("привет", "при вет") == 1
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3


def test_heard_words_are_those_whose_midpoint_the_partial_reached() -> None:
    f = final("a b c")  # midpoints 250, 1250, 2250
    assert heard_words(f, 250) == []
    assert heard_words(f, 251) == ["a"]
    assert heard_words(f, 2000) == ["a", "b"]
    assert heard_words(f, 10_000) == ["a", "b", "c"]


def test_the_shown_text_is_the_latest_partial_at_each_tick() -> None:
    ps = [partial("a", 1500), partial("a b", 3100)]
    assert list(shown_texts(ps, 0, 4800)) == [(1600, "a"), (3200, "a b"), (4800, "a b")]
    assert list(shown_texts(ps, 0, 1600, tick=1000)) == [(1000, "")]
    assert list(shown_texts([], 100, 3300)) == [(1700, ""), (3300, "")]


def test_a_window_is_context_free_when_it_starts_where_the_last_one_ended() -> None:
    assert context_free([(0, 100), (100, 200), (200, 300)]) == (2, 2)
    assert context_free([(0, 100), (60, 200), (200, 300)]) == (1, 2)
    assert context_free([(0, 100)]) == (0, 0)
    assert context_free([]) == (0, 0)


def test_quality_of_partials_against_their_final() -> None:
    f = final("one two three four")  # midpoints 250, 1250, 2250, 3250
    exact = SessionRun([partial("one", 1000), partial("one two three", 3000)], [f], {0: [(0, 1000), (0, 3000)]},
                       {0: 0})
    q = partial_quality([exact])
    assert (q["partial_events"], q["partial_words"], q["confirmed_share"], q["wer"], q["cer"]) == (2, 4, 1.0, 0.0, 0.0)
    assert q["context_free_share"] == 0.0
    # shown on a 100 ms clock up to the final's end (4000): at 1600 "one" of "one two" heard, at 3200 all three
    assert q["shown_wer"] == round(1 / 5, 4)
    # the second partial has "two" cut in two pieces: 1 substitution + 1 insertion against 3 heard words
    cut = SessionRun([partial("one", 1000), partial("one tw o three", 3000)], [f], {0: [(0, 1000), (1000, 3000)]},
                     {0: 0})
    q = partial_quality([cut])
    assert q["partial_words"] == 5 and q["confirmed_share"] == round(3 / 5, 4)
    assert q["wer"] == round(2 / 4, 4)
    assert q["cer"] == round(1 / (len("one") + len("one two three")), 4)
    assert q["context_free_share"] == 1.0
    assert q["shown_wer"] == round((1 + 2) / 5, 4)
    stale = partial_quality([SessionRun([partial("one", 1000)], [f], {}, {0: 0})])
    fresh = partial_quality([SessionRun([partial("one", 1000), partial("one two three", 3100)], [f], {},
                                        {0: 0})])
    assert (stale["shown_wer"], fresh["shown_wer"]) == (round(3 / 5, 4), round(1 / 5, 4))  # staleness counts
    assert stale["context_free_share"] is None  # no decodes after a first one


def test_partials_of_another_utterance_do_not_count() -> None:
    a, b = final("one two", start=0), final("three four", start=5000)
    run = SessionRun([partial("one two", 2000, start=0), partial("xx", 6000, start=5000)], [a, b], {}, {})
    q = partial_quality([run])
    assert q["partial_events"] == 2
    assert q["wer"] == round(1 / 3, 4)  # "xx" against "three" (midpoint 5250 < 6000), "one two" exact


def test_final_wer_against_the_spoken_clips() -> None:
    finals = [final("one two", start=0), final("three for", start=10_000)]
    clips = [(0, 3000, "one two"), (9000, 13_000, "three four")]
    assert final_wer([(finals, clips)]) == 0.25
    assert final_wer([(finals[:1], clips)]) == 0.5  # the second clip got no final: 2 deletions


@pytest.mark.skipif(shutil.which("espeak-ng") is None or not TINY.is_file(),
                    reason="needs espeak-ng and tests/assets/tiny_gigaam_ctc.ckpt")
def test_held_out_speech_gives_real_text_and_the_benchmark_measures_partial_quality(tmp_path: Path) -> None:
    from benchmarks.partials import main

    windowed = "cached_context=false,cached_lookahead=0"  # the windowed policy (the defaults are cached)
    result = main(["--speech", "--held-out", "3", "--asr-model", str(TINY), "--compare", f"budget_ratio=1.5,{windowed}",
                   "--compare", f"budget_ratio=1.0,{windowed}", "--out-dir", str(tmp_path)])
    assert result["files"] == 1 and result["final_wer_vs_spoken"] < 0.5  # the tiny model's finals are real text
    spare, tight = (result["variants"][f"current, budget_ratio={b},{windowed}"]["quality"] for b in ("1.5", "1.0"))
    assert spare["partial_events"] >= 3 and tight["partial_events"] >= 3
    assert tight["context_free_share"] == 1.0  # at budget 1.0 every later window starts where the last ended
    assert spare["context_free_share"] == 0.0  # budget 1.5 re-encodes left context every time
    for q in (spare, tight):
        assert 0 < q["confirmed_share"] <= 1 and q["wer"] >= 0 and q["shown_wer"] >= 0
