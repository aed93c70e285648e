"""SpeakerTracker on synthetic embeddings: labels, thresholds, the constrained assignment, max_speakers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from streaming.config import FRESH_EVIDENCE_BELOW, DiarizationOptions, ms
from streaming.speakers import SpeakerTracker, label_of, unit

DIM = 32
RNG = np.random.default_rng(7)
VOICES = unit(RNG.normal(size=(6, DIM)))  # random directions: pairwise cosine distance ~1


def voice(i: int, noise: float = 0.05, rng: np.random.Generator = RNG) -> np.ndarray:
    """An embedding of speaker ``i``: its direction plus noise of about ``noise`` cosine distance."""
    return unit(VOICES[i] + rng.normal(size=DIM) * np.sqrt(2 * noise / DIM))


def tracker(**overrides: object) -> SpeakerTracker:
    base = dict(new_speaker_threshold=0.3, new_speaker_windows=1)
    base.update(overrides)
    return SpeakerTracker(DiarizationOptions(**base))  # type: ignore[arg-type]


def step(t: SpeakerTracker, window: int, *speakers: int) -> list:
    """One window with the given true speakers; returns the global indices assigned."""
    return t.assign([voice(s) for s in speakers], at=window * ms(500))


def test_labels_are_s1_s2_in_creation_order() -> None:
    t = tracker()
    assert step(t, 1, 3) == [0] and step(t, 2, 1) == [1] and step(t, 3, 3) == [0]
    assert t.labels == ("S1", "S2") and label_of(9) == "S10"


def test_same_speaker_keeps_its_label_across_many_windows() -> None:
    t = tracker()
    assert {step(t, w, 2)[0] for w in range(50)} == {0}
    assert t.n_speakers == 1


def test_a_speaker_returning_after_a_long_silence_gets_the_old_label() -> None:
    t = tracker()
    first = [step(t, w, 0)[0] for w in range(10)]
    others = [step(t, w, 1 + (w // 20) % 3)[0] for w in range(10, 2000)]  # about 16 minutes of other voices
    back = [step(t, w, 0)[0] for w in range(2000, 2010)]
    assert set(first) == set(back) == {0}
    assert 0 not in others and t.n_speakers == 4


def test_overlapping_speakers_in_one_window_map_to_different_globals() -> None:
    t = tracker()
    a, b = step(t, 1, 0, 1)
    assert a != b and {a, b} == {0, 1}
    assert step(t, 2, 1, 0) == [b, a]


def test_two_local_speakers_never_share_a_global_speaker() -> None:
    t = tracker()
    step(t, 1, 0)
    # the same voice twice in one window (a segmentation split): only one may take S1, the other is not
    # allowed to become a duplicate speaker either
    result = t.assign([voice(0), voice(0)], at=ms(1000))
    assert sorted(result, key=lambda g: g is None) == [0, None] and t.n_speakers == 1


def test_the_assignment_is_optimal_over_the_window_not_greedy() -> None:
    # two centroids 40 degrees apart; embedding a is closest to c1 but b has nowhere else to go
    def at_angle(degrees: float) -> np.ndarray:
        v = np.zeros(DIM)
        v[0], v[1] = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
        return v

    t = tracker(new_speaker_threshold=0.05, max_speakers=2)
    assert t.assign([at_angle(0)], at=0) == [0]
    assert t.assign([at_angle(40)], at=ms(500)) == [1]
    a, b = at_angle(15), at_angle(-30)  # d(a,c1)=0.03 d(a,c2)=0.09; d(b,c1)=0.13 d(b,c2)=0.66
    assert t.assign([a, b], at=ms(1000)) == [1, 0]  # total 0.22 instead of the greedy 0.69


def test_a_far_embedding_starts_a_new_speaker_only_beyond_the_threshold() -> None:
    t = tracker(new_speaker_threshold=0.3)
    step(t, 1, 0)
    near = unit(VOICES[0] + 0.5 * VOICES[1])  # cosine distance to S1 about 0.11
    assert t.assign([near], at=ms(1000)) == [0]
    far = unit(VOICES[0] + 1.5 * VOICES[1])  # about 0.45
    assert t.assign([far], at=ms(1500)) == [1]


def test_a_new_speaker_needs_confirmation_from_several_windows() -> None:
    t = tracker(new_speaker_windows=3)
    assert [step(t, w, 0)[0] for w in range(4)] == [None, None, 0, 0]
    # one stray embedding of another voice does not found a speaker
    assert step(t, 4, 5) == [None] and step(t, 5, 0) == [0]
    assert [step(t, w, 1)[0] for w in range(6, 10)] == [None, None, 1, 1]
    assert t.n_speakers == 2


def test_assign_says_which_candidate_each_embedding_joined_and_which_were_confirmed() -> None:
    t = tracker(new_speaker_windows=3)
    step(t, 0, 0, 1)
    first = list(t.joined)
    assert None not in first and first[0] != first[1] and t.promoted == []  # two different candidates
    step(t, 1, 1, 0)
    assert t.joined == [first[1], first[0]] and t.promoted == []          # the same ones again, order follows input
    assert step(t, 2, 0) == [0]
    assert t.joined == [None] and t.promoted == [(first[0], 0)]           # speaker 0's candidate became S1
    assert step(t, 3, 0) == [0] and t.joined == [None] and t.promoted == []


def test_windows_that_embed_the_same_speech_again_are_one_piece_of_evidence() -> None:
    """Consecutive windows overlap by window - step: one that hears no new speech of a far voice (its speech ends
    where it ended in the last window that counted) does not count towards confirming it (``fresh_evidence``)."""
    def sightings(t: SpeakerTracker, ends_s: list[float]) -> list:
        return [t.assign([voice(4)], at=w * ms(500), speech_ends=[int(e * ms(1000))])[0]
                for w, e in enumerate(ends_s)]

    # 0.1 s of new speech in the second window: not fresh; the third window brings 0.6 s more: confirmed
    assert sightings(tracker(new_speaker_windows=2), [4.0, 4.1, 4.7]) == [None, None, 0]
    assert sightings(tracker(new_speaker_windows=2), [4.0, 4.0, 4.0, 4.0]) == [None] * 4  # the same speech only
    assert sightings(tracker(new_speaker_windows=2), [4.0, 4.25]) == [None, 0]            # step / 2 is fresh
    # off, every window counts; without speech_ends, the window positions (a step apart) are the evidence
    assert sightings(tracker(new_speaker_windows=2, fresh_evidence=False), [4.0, 4.0]) == [None, 0]
    plain = tracker(new_speaker_windows=2)
    assert [step(plain, w, 4)[0] for w in range(2)] == [None, 0]


def test_at_a_step_of_one_second_every_window_is_evidence() -> None:
    """At steps of ``FRESH_EVIDENCE_BELOW`` (1 s) and more, the rule is not applied: a short turn that every window
    holds whole (its speech ends at one sample) is confirmed by two windows, as with the rule off."""
    def sightings(options: DiarizationOptions, ends_s: list[float]) -> list:
        t = SpeakerTracker(options)
        return [t.assign([voice(4)], at=w * options.step, speech_ends=[int(e * ms(1000))])[0]
                for w, e in enumerate(ends_s)]

    base = DiarizationOptions(new_speaker_threshold=0.3, new_speaker_windows=2)
    assert base.applies_fresh_evidence and sightings(base, [4.0, 4.0]) == [None, None]
    for step_ms in (750, 999):  # below 1 s the rule stands
        assert sightings(base.at_step(ms(step_ms)), [4.0, 4.0]) == [None, None]
    one_second = base.at_step(FRESH_EVIDENCE_BELOW)
    assert one_second.fresh_evidence and not one_second.applies_fresh_evidence
    assert sightings(one_second, [4.0, 4.0]) == [None, 0]
    assert sightings(base.at_step(ms(2000)), [4.0, 4.0]) == [None, 0]


def test_unconfirmed_candidates_expire_after_a_window_length() -> None:
    t = tracker(new_speaker_windows=2)
    assert step(t, 0, 4) == [None]
    assert step(t, 20, 4) == [None]  # 10 s later: the first sighting expired
    assert step(t, 21, 4) == [0]


def test_max_speakers_assigns_the_nearest_when_full() -> None:
    t = tracker(max_speakers=2)
    step(t, 1, 0)
    step(t, 2, 1)
    assert t.n_speakers == 2
    third = unit(VOICES[2] + 0.3 * VOICES[1])  # a new voice, a bit closer to S2 than to S1
    assert t.assign([third], at=ms(1500)) == [1]
    # more local speakers than slots: the extra one goes to its nearest even if taken
    result = t.assign([voice(0), voice(1), third], at=ms(2000))
    assert result[:2] == [0, 1] and result[2] == 1 and t.n_speakers == 2


def test_min_speakers_takes_the_models_word_for_two_voices_until_enough_exist() -> None:
    """Two similar voices (closer than the threshold) heard together in one window: without a hint the second is
    left out (a duplicate would be worse); with min_speakers=2 it founds S2, and needs one window to do so."""
    similar = unit(VOICES[0] + 0.15 * VOICES[1])
    plain = tracker(new_speaker_windows=2)
    hinted = tracker(new_speaker_windows=2, min_speakers=2)
    assert [plain.assign([voice(0)], at=ms(500 * w))[0] for w in range(3)] == [None, 0, 0]
    assert [hinted.assign([voice(0)], at=ms(500 * w))[0] for w in range(3)] == [0, 0, 0]  # one window founds S1
    assert sorted(plain.assign([voice(0), similar], at=ms(1500)), key=lambda g: g is None) == [0, None]
    assert sorted(hinted.assign([voice(0), similar], at=ms(1500))) == [0, 1] and hinted.n_speakers == 2
    # the minimum reached, the usual rules are back: a third similar voice is not a new speaker
    third = unit(VOICES[0] + 0.15 * VOICES[2])
    assert set(hinted.assign([voice(0), similar, third], at=ms(2000))) == {0, 1, None} and hinted.n_speakers == 2
    # and a truly new voice again needs new_speaker_windows windows
    assert [hinted.assign([voice(4)], at=ms(2500 + 500 * w))[0] for w in range(2)] == [None, 2]


def test_an_exact_count_bounds_both_ways() -> None:
    options = DiarizationOptions(new_speaker_threshold=0.3, new_speaker_windows=3).with_speaker_counts(
        num_speakers=2)
    assert (options.min_speakers, options.max_speakers) == (2, 2)
    t = SpeakerTracker(options)
    labels = [step(t, w, v)[0] for w, v in enumerate((0, 1, 2, 3, 0, 1))]
    assert labels[:2] == [0, 1]  # below the count one window founds a speaker (not new_speaker_windows=3)
    assert labels[4:] == [0, 1] and set(labels[2:4]) <= {0, 1} and t.n_speakers == 2  # no third speaker


def test_centroids_follow_the_mean_and_ignore_far_forced_matches() -> None:
    t = tracker(max_speakers=1, new_speaker_threshold=0.3)
    embeddings = [voice(0, noise=0.1) for _ in range(20)]
    for w, e in enumerate(embeddings):
        t.assign([e], at=w * ms(500))
    np.testing.assert_allclose(t.centroids[0], unit(np.mean(embeddings, axis=0)), atol=1e-9)
    before = t.centroids.copy()
    assert t.assign([VOICES[3]], at=ms(20_000)) == [0]  # forced onto the only speaker: far, so not learned
    np.testing.assert_allclose(t.centroids, before)


def test_centroid_rate_makes_a_moving_average() -> None:
    t = tracker(centroid_rate=0.5, new_speaker_threshold=1.5)
    t.assign([VOICES[0]], at=0)
    t.assign([VOICES[1]], at=ms(500))
    np.testing.assert_allclose(t.centroids[0], unit(0.5 * VOICES[0] + 0.5 * VOICES[1]), atol=1e-9)


def test_excluded_globals_are_not_offered() -> None:
    t = tracker()
    step(t, 1, 0)
    step(t, 2, 1)
    assert t.assign([voice(0)], at=ms(1500), exclude=[0]) == [None]  # near S1, which is taken: no duplicate


def test_embedding_size_must_not_change() -> None:
    t = tracker()
    step(t, 1, 0)
    with pytest.raises(ValueError, match="embedding size"):
        t.assign([np.ones(DIM + 1)], at=ms(1000))


def test_match_maps_to_free_existing_speakers_only_and_changes_nothing() -> None:
    t = tracker()
    step(t, 1, 0)
    step(t, 2, 1)
    before = t.centroids
    near_0, near_1, far = voice(0, 0.05), voice(1, 0.05), voice(5, 0.0)
    assert t.match([near_0, far], threshold=0.45) == [0, None]          # far: no new speaker
    assert t.match([near_0, near_1], exclude=[0], threshold=0.45) == [None, 1]  # 0 taken by a clean embedding
    assert t.match([near_1], threshold=1e-9) == [None]
    assert t.n_speakers == 2 and np.allclose(t.centroids, before)


def in_plane(angle: float) -> np.ndarray:
    """A unit vector at ``angle`` radians from voice 0 towards voice 1 (cosine distance ``1 - cos(angle)``)."""
    u = unit(VOICES[1] - (VOICES[1] @ VOICES[0]) * VOICES[0])
    return np.cos(angle) * VOICES[0] + np.sin(angle) * u


def drifted_pair(merge_count: int, merge_apart: bool = False,
                 together: bool = False) -> tuple[SpeakerTracker, list[list]]:
    """S1 from 5 embeddings at angle 0; S2 founded 0.35 away (beyond the 0.3 threshold); then embeddings between
    them, nearer S2, drag S2's centroid towards S1. ``together``: one window hears both as two local speakers
    first. Returns the tracker and what each drifting window got."""
    t = tracker(merge_distance=0.2, merge_count=merge_count, merge_apart=merge_apart)
    for w in range(5):
        assert t.assign([in_plane(0.0)], at=w * ms(500)) == [0]
    assert t.assign([in_plane(np.arccos(0.65))], at=5 * ms(500)) == [1]
    if together:
        assert t.assign([in_plane(0.0), in_plane(np.arccos(0.65))], at=5 * ms(500)) == [0, 1]
    return t, [t.assign([in_plane(0.5)], at=w * ms(500)) for w in range(6, 12)]


def test_speakers_whose_centroids_converge_merge_into_the_one_with_more_embeddings() -> None:
    t, got = drifted_pair(merge_count=5)
    assert got[0] == [1]  # nearer S2 at first: it learns and drifts towards S1 ...
    assert t.merged == {1: 0} and t.n_live == 1 and t.n_speakers == 2 and t.labels == ("S1", "S2")
    assert got[-1] == [0]  # ... until they merge: the same voice now gets S1, the label with more embeddings
    assert t.distances(in_plane(np.arccos(0.65)))[0, 1] == 2.0  # the retired label takes nobody
    assert t.assign([in_plane(1.2)], at=ms(10_000)) == [2] and t.labels[-1] == "S3"  # labels are never reused


def test_a_young_speaker_is_never_merged_into_another_young_one() -> None:
    t, got = drifted_pair(merge_count=50)  # neither speaker holds 50 embeddings
    assert t.merged == {} and t.n_live == 2 and all(g == [1] for g in got)
    assert 1.0 - float(t.centroids[0] @ t.centroids[1]) < 0.2  # converged, yet kept apart


def test_young_speakers_never_heard_together_merge_once_they_converge() -> None:
    """``merge_apart``: two labels no window ever heard as two local speakers at once are one voice's when their
    centroids converge, however young; once a window heard both, only the maturity rule merges them."""
    t, got = drifted_pair(merge_count=50, merge_apart=True)
    assert t.merged == {1: 0} and got[-1] == [0]
    t, got = drifted_pair(merge_count=50, merge_apart=True, together=True)
    assert t.merged == {} and all(g == [1] for g in got)
    t, _ = drifted_pair(merge_count=5, merge_apart=True, together=True)
    assert t.merged == {1: 0}  # mature: merged as before


def test_merging_frees_a_slot_under_max_speakers() -> None:
    t, _ = drifted_pair(merge_count=5)
    full = SpeakerTracker(dataclasses.replace(t.options, max_speakers=2))
    for w in range(5):
        full.assign([in_plane(0.0)], at=w * ms(500))
    full.assign([in_plane(np.arccos(0.65))], at=5 * ms(500))
    for w in range(6, 12):
        full.assign([in_plane(0.5)], at=w * ms(500))
    assert full.n_live == 1
    assert full.assign([voice(3)], at=ms(7_000)) == [2]  # a third label, but only the second live speaker


def borderline_tracker(**overrides: object) -> SpeakerTracker:
    """S1 from 8 windows at angle 0 (threshold 0.3, margin 0.05, 4 windows for a borderline candidate once a
    speaker holds 5 embeddings)."""
    base = dict(new_speaker_windows=2, borderline_margin=0.05, borderline_windows=4, borderline_count=5,
                merge_distance=0.0)
    base.update(overrides)
    t = tracker(**base)
    assert [t.assign([in_plane(0.0)], at=w * ms(500)) for w in range(8)] == [[None]] + [[0]] * 7
    return t


def test_a_borderline_candidate_near_a_mature_speaker_needs_more_windows() -> None:
    just_beyond = in_plane(np.arccos(0.68))  # 0.32 from S1: beyond 0.3, within 0.3 + 0.05
    t = borderline_tracker()
    assert [t.assign([just_beyond], at=w * ms(500)) for w in range(8, 12)] == [[None], [None], [None], [1]]
    t = borderline_tracker()  # the odd segment comes back within the threshold: no phantom, S1 takes it
    assert [t.assign([x], at=w * ms(500)) for w, x in zip(range(8, 12), [just_beyond] * 2 + [in_plane(0.5)] * 2)] \
        == [[None], [None], [0], [0]]
    assert t.n_speakers == 1
    t = borderline_tracker(borderline_margin=0.0)  # the rule off: two windows, as for any candidate
    assert [t.assign([just_beyond], at=w * ms(500)) for w in range(8, 10)] == [[None], [1]]


def test_a_clearly_new_voice_and_a_young_speaker_are_not_held_back() -> None:
    t = borderline_tracker()
    far = in_plane(np.arccos(0.55))  # 0.45 from S1: beyond the margin
    assert [t.assign([far], at=w * ms(500)) for w in range(8, 10)] == [[None], [1]]
    t = borderline_tracker(borderline_count=50)  # S1 holds 8 embeddings: too young for the rule
    assert [t.assign([in_plane(np.arccos(0.68))], at=w * ms(500)) for w in range(8, 10)] == [[None], [1]]


def test_reset_starts_over_at_s1() -> None:
    t = tracker()
    step(t, 1, 0)
    step(t, 2, 1)
    t.reset()
    assert t.n_speakers == 0 and step(t, 3, 1) == [0] and t.labels == ("S1",) and t.merged == {}


@pytest.mark.parametrize("field, value, fix", [
    ("new_speaker_threshold", 0.0, "new_speaker_threshold"),
    ("new_speaker_windows", 0, "new_speaker_windows"),
    ("new_speaker_windows", 11, "window / step"),
    ("update_threshold", 2.5, "update_threshold"),
    ("continuity_threshold", 0.0, "continuity_threshold"),
    ("max_speakers", 0, "max_speakers"),
    ("centroid_rate", 1.0, "centroid_rate"),
    ("segment_gap", 0, "segment_gap"),
    ("min_segment_speech", -1, "min_segment_speech"),
    ("change_threshold", 0.0, "change_threshold"),
    ("overlap_match_threshold", 2.5, "overlap_match_threshold"),
    ("merge_distance", 2.0, "merge_distance"),
    ("merge_count", 0, "merge_count"),
    ("borderline_margin", -0.1, "borderline_margin"),
    ("borderline_windows", 0, "borderline_windows"),
    ("borderline_count", 0, "borderline_count"),
])
def test_options_are_validated_with_a_message_naming_the_field(field: str, value: object, fix: str) -> None:
    with pytest.raises(ValueError, match=fix):
        dataclasses.replace(DiarizationOptions(), **{field: value})


def test_update_threshold_defaults_to_the_new_speaker_threshold() -> None:
    assert DiarizationOptions(new_speaker_threshold=0.4).update_threshold == 0.4
