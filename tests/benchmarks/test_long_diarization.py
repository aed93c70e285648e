"""benchmarks.long_diarization: the hour-long conversation's plan and the label checks (no server needed)."""

from __future__ import annotations

import pytest

from benchmarks.compose import SPEAKERS_DIR
from benchmarks.long_diarization import SAMPLE_RATE, apply_merges, check, compose_long

S = SAMPLE_RATE


def reference() -> list[tuple[str, int, int]]:
    # voices a and b talk early and come back after 300 s; c and d talk throughout
    return [("a", 0, 10 * S), ("b", 10 * S, 20 * S), ("c", 20 * S, 30 * S), ("d", 30 * S, 40 * S),
            ("c", 100 * S, 110 * S), ("d", 110 * S, 120 * S), ("a", 400 * S, 410 * S), ("b", 410 * S, 420 * S)]


def test_returning_voices_with_their_labels_pass() -> None:
    turns = [("S1", 0, 10), ("S2", 10, 20), ("S3", 20, 30), ("S4", 30, 40), ("S3", 100, 110), ("S4", 110, 120),
             ("S1", 400, 410), ("S2", 410, 420), ("S5", 200, 201)]  # a 1 s stray label is not a speaker
    result = check(reference(), turns, return_gap=120.0)
    assert result["labels_over_5s"] == ["S1", "S2", "S3", "S4"] and result["exactly_4_labels"]
    assert result["returns"] == 2 and result["returns_keep_label"] and result["distinct_voice_labels"]


def test_a_returning_voice_with_a_new_label_and_a_phantom_fail() -> None:
    turns = [("S1", 0, 10), ("S2", 10, 20), ("S3", 20, 30), ("S4", 30, 40), ("S3", 100, 110), ("S4", 110, 120),
             ("S5", 400, 410), ("S2", 410, 420), ("S1", 405, 406)]
    result = check(reference(), turns, return_gap=120.0)
    assert not result["returns_keep_label"]  # a came back as S5
    assert result["voices"]["a"]["stretch_labels"] == ["S1", "S5"]
    assert not result["exactly_4_labels"] and result["labels_over_5s"] == ["S1", "S2", "S3", "S4", "S5"]


def test_the_hour_plan_makes_every_voice_leave_and_return() -> None:
    if not SPEAKERS_DIR.is_dir():
        pytest.skip("shared single-speaker recordings are absent")
    conversation, plan = compose_long(minutes=6.0, blocks=12, seed=0)
    assert len(plan) == 12 and all(2 <= len(talkers) <= 3 for talkers in plan)
    for voice in range(4):
        talks = [voice in talkers for talkers in plan]
        assert not all(talks) and any(talks[talks.index(False):])  # sits out a block, then talks again
    assert len({v for v, _, _ in conversation.reference}) == 4
    assert abs(len(conversation.audio) / S - 360) < 30


def test_merges_are_applied_before_labels_are_counted_and_a_merged_phantom_passes() -> None:
    # a's first stretch went out as S7 and part of its return as S8 (phantoms); S8 merged into S7, S7 into S1
    turns = [("S7", 0, 10), ("S2", 10, 20), ("S3", 20, 30), ("S4", 30, 40), ("S3", 100, 110), ("S4", 110, 120),
             ("S1", 400, 404), ("S8", 404, 410), ("S2", 410, 420)]
    result = check(reference(), turns, return_gap=120.0, merges=[("S8", "S7"), ("S7", "S1"), ("S9", "S2")])
    assert result["labels_over_5s_as_sent"] == ["S2", "S3", "S4", "S7", "S8"]  # S1 held 4 s only
    assert result["labels_over_5s"] == ["S1", "S2", "S3", "S4"] and result["exactly_4_labels"]
    assert result["labels_held_s"]["S1"] == 20  # 10 (S7) + 4 + 6 (S8 → S7 → S1)
    assert result["voices"]["a"]["stretch_labels"] == ["S1", "S1"] and result["voices"]["a"]["share"] == 1.0
    assert result["returns_keep_label"] and result["distinct_voice_labels"]
    assert result["merges"] == [["S8", "S7"], ["S7", "S1"], ["S9", "S2"]]
    assert apply_merges([("S8", 0, 1), ("S2", 1, 2)], [("S8", "S7"), ("S7", "S1")]) == [("S1", 0, 1), ("S2", 1, 2)]


def test_without_its_merges_the_same_stream_fails() -> None:
    turns = [("S7", 0, 10), ("S2", 10, 20), ("S3", 20, 30), ("S4", 30, 40), ("S3", 100, 110), ("S4", 110, 120),
             ("S1", 400, 410), ("S2", 410, 420)]
    result = check(reference(), turns, return_gap=120.0)
    assert result["labels_over_5s"] == result["labels_over_5s_as_sent"] == ["S1", "S2", "S3", "S4", "S7"]
    assert not result["exactly_4_labels"] and not result["returns_keep_label"] and result["merges"] == []
