"""Segments of one local speaker's speech and the split of a local speaker into voices."""

from __future__ import annotations

import itertools

import numpy as np

from streaming.config import DiarizationOptions, ms
from streaming.diarization import StreamingDiarizer
from streaming.voice_segments import plan_segments, runs, split_by_voice
from tests.fakes_diarization import FakeEmbedding, FakeSegmentation, Speech, run_fakes, stream, synthesize

STEP = 320  # samples per frame (20 ms)
OPTIONS = DiarizationOptions()


def frames(*spans_ms: tuple[int, int], n: int = 250) -> np.ndarray:
    """A frame mask (20 ms frames) true over the given millisecond spans."""
    mask = np.zeros(n, dtype=bool)
    for a, b in spans_ms:
        mask[a // 20:b // 20] = True
    return mask


def plan(clean: np.ndarray, active: np.ndarray, options: DiarizationOptions = OPTIONS):
    lo = np.arange(len(clean)) * STEP
    return plan_segments(clean, active, lo, lo + STEP, options, float(STEP))


def test_runs_are_half_open_index_ranges() -> None:
    assert runs(np.array([0, 1, 1, 0, 1], dtype=bool)) == [(1, 3), (4, 5)]
    assert runs(np.zeros(0, dtype=bool)) == []


def test_speech_is_cut_at_pauses_and_short_segments_join_the_nearer_neighbour() -> None:
    # 0-1.5 s, pause 0.4 s, 1.9-2.3 s (short), pause 0.3 s, 2.6-4 s
    mask = frames((0, 1500), (1900, 2300), (2600, 4000))
    segments = plan(mask, mask)
    assert [(s.first * 20, s.stop * 20) for s in segments] == [(0, 1500), (1900, 4000)]
    assert segments[1].speech == ms(1800) and not segments[1].overlapped
    # pauses shorter than segment_gap do not cut
    assert len(plan(mask, mask, DiarizationOptions(segment_gap=ms(500)))) == 1


def test_overlapped_frames_are_used_only_when_clean_speech_is_too_short() -> None:
    active = frames((0, 3000))
    clean = frames((0, 300))
    segments = plan(clean, active)
    assert len(segments) == 1 and segments[0].overlapped and segments[0].speech == ms(3000)
    plenty = frames((0, 1200))
    assert not plan(plenty, active)[0].overlapped
    assert plan(frames((0, 200)), frames((0, 400))) == []  # too little speech at all


def test_segments_with_different_voices_become_separate_voices() -> None:
    scores = frames((0, 1500), (1900, 4000)).astype(float)
    segments = plan(scores > 0.5, scores > 0.5)
    a, b = np.eye(4)[0], np.eye(4)[1]
    voices = split_by_voice(scores, segments, [a, b], change_threshold=0.3)
    assert len(voices) == 2
    assert voices[0].scores[:75].all() and not voices[0].scores[85:].any()
    assert voices[1].scores[95:200].all() and not voices[1].scores[:85].any()
    assert np.allclose(voices[0].embedding, a) and np.allclose(voices[1].embedding, b)
    same = split_by_voice(scores, segments, [a, a + 0.1 * b], change_threshold=0.3)
    assert len(same) == 1 and np.array_equal(same[0].scores, scores)


def test_a_new_speaker_merged_into_the_previous_local_speaker_gets_its_own_label() -> None:
    # the fake model gives both voices one local speaker; speaker 1 starts 0.4 s after speaker 0 stops
    turns = [Speech(0, 0, ms(8000)), Speech(1, ms(8400), ms(16000)), Speech(0, ms(16400), ms(24000))]

    def overlap(final, label: str, a: int, b: int) -> int:
        return sum(max(0, min(t.end, b) - max(t.start, a)) for t in final if t.speaker == label)

    def speaker_0_label_on_speaker_1(options: DiarizationOptions) -> int:
        """Samples of speaker 1's turn carrying speaker 0's label."""
        seq = itertools.count()
        diarizer = StreamingDiarizer(options, "s", 0, lambda: next(seq))
        stream(diarizer, synthesize(turns, ms(25000)), run_fakes(FakeSegmentation(merge=True), FakeEmbedding()))
        final = diarizer.pop_final_turns()
        label_0 = max(diarizer.speakers, key=lambda label: overlap(final, label, 0, ms(8000)))
        assert overlap(final, label_0, 0, ms(8000)) > ms(6000)
        return overlap(final, label_0, ms(8400), ms(16000))

    assert speaker_0_label_on_speaker_1(OPTIONS) <= ms(100)
    # without the split (one voice per local speaker) speaker 1's first half second or more carries speaker 0's
    # label (its frames before speaker 1's embedding was far from speaker 0 are not credited to the new speaker)
    assert speaker_0_label_on_speaker_1(DiarizationOptions(change_threshold=2.0)) >= ms(500)
