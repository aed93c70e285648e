"""Segments of one local speaker's speech and the split of a local speaker into voices."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from streaming.config import DiarizationOptions, ms
from streaming.diarization import StreamingDiarizer
from streaming.voice_segments import plan_probes, plan_segments, runs, split_by_voice
from tests.fakes_diarization import (FakeEmbedding, FakeSegmentation, Speech, run_fakes, stream, synthesize,
                                    tone_amplitudes)

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


def probes(clean: np.ndarray, options: DiarizationOptions = OPTIONS):
    lo = np.arange(len(clean)) * STEP
    return plan_probes(clean, lo, lo + STEP, options, float(STEP))


def test_a_short_edge_segment_after_a_long_pause_is_probed_on_its_own() -> None:
    # 0.6 s, pause 0.55 s, 2.5 s of speech, pause 0.5 s, 0.62 s at the window's end (5 s)
    mask = frames((0, 600), (1150, 3650), (4150, 4770), n=250)
    assert [(s.first, s.stop) for s in plan(mask, mask)] == [(0, 238)]  # both merged into the middle
    found = probes(mask)
    assert [(p.first * 20, p.stop * 20) for p in found] == [(0, 860), (3880, 5000)]  # from mid-pause to the edge
    assert [p.speech for p in found] == [ms(600), ms(620)]
    # a pause under probe_gap, an edge segment too short, or one long enough for its own segment: no probe
    assert probes(mask, DiarizationOptions(probe_gap=ms(600))) == []
    assert probes(mask, DiarizationOptions(probe_min_speech=ms(700))) == []
    assert probes(frames((0, 1500), (2100, 3600), n=250)) == []
    assert probes(mask, DiarizationOptions(probe_gap=0)) == []  # off
    assert probes(frames((0, 600), (1150, 1500), n=250)) == []  # the rest holds under min_segment_speech


def test_probe_options_are_validated_with_the_fix_named() -> None:
    for bad in ({"probe_gap": -1}, {"probe_gap": ms(6000)}, {"probe_min_speech": 0}, {"probe_match_threshold": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DiarizationOptions(**bad)


class HandoverSegmentation(FakeSegmentation):
    """Tones as local speakers, except that the first ``lead`` samples of tone 1's turn from ``start`` on go to tone
    0's local speaker in every window ending before ``until``: PyanNet's handover on the real 5-voice conversation."""

    def __init__(self, start: int, lead: int, until: int) -> None:
        super().__init__()
        self.start, self.lead, self.until = start, lead, until

    def _one(self, request):
        result = super()._one(request)
        audio = np.asarray(request.audio, dtype=np.float64)
        scores = np.array(result.scores)
        frames_at = request.start + np.arange(len(scores)) * int(result.frame_step)
        idx = (np.arange(len(scores))[:, None] * int(result.frame_step)) + np.arange(int(result.frame_duration))
        present = tone_amplitudes(audio[idx]) > self.threshold
        if request.start + len(audio) <= self.until and present[:, 0].any() and present[:, 1].any():
            col = {t: int(np.argmax(scores[present[:, t]].mean(axis=0))) for t in (0, 1)}
            moved = (frames_at >= self.start) & (frames_at < self.start + self.lead) & present[:, 1]
            scores[moved, col[0]] = scores[moved, col[1]]
            scores[moved, col[1]] = 0.03
        return dataclasses.replace(result, scores=scores)


def _handover_run(options: DiarizationOptions, second: int) -> tuple[list, tuple[str, ...], int]:
    """Speaker 0, speaker 1 (a voice now known), speaker 0 for 6 s, a 0.55 s pause, speaker ``second`` for 5 s,
    whose first 0.62 s the model gives speaker 0's local speaker in every window ending within 2 s of its start.
    Returns the final turns, the labels and the embeddings requested."""
    start = ms(18_500) + ms(550)
    turns = [Speech(0, 0, ms(6000)), Speech(1, ms(6400), ms(12000)), Speech(0, ms(12500), ms(18500)),
             Speech(second, start, start + ms(5000))]
    seq = itertools.count()
    diarizer = StreamingDiarizer(options, "s", 0, lambda: next(seq))
    embedding = FakeEmbedding()
    stream(diarizer, synthesize(turns, start + ms(6000)),
           run_fakes(HandoverSegmentation(start, ms(620), start + ms(2000)), embedding))
    return diarizer.pop_final_turns(), diarizer.speakers, len(embedding.requests)


def test_a_known_voice_after_a_pause_takes_its_first_words_back_from_the_previous_speaker() -> None:
    # speaker 1's first 0.62 s after the pause lie in the previous voice's local speaker, too short for a segment of
    # their own: without probes they carry speaker 0's label (a flip there and back); the probe hands them to S2
    start = ms(19_050)

    def wrong(options: DiarizationOptions) -> int:
        final, speakers, _ = _handover_run(options, 1)
        assert speakers == ("S1", "S2")
        return sum(max(0, min(t.end, start + ms(620)) - max(t.start, start)) for t in final if t.speaker == "S1")

    assert wrong(DiarizationOptions(probe_gap=0)) >= ms(400)
    assert wrong(OPTIONS) <= ms(100)


def test_a_voice_that_goes_on_after_a_pause_keeps_its_label() -> None:
    # the same words after the pause in the same voice: the probe is embedded, matches its own speaker, no split
    final, speakers, requests = _handover_run(OPTIONS, 0)
    assert speakers == ("S1", "S2")
    assert {t.speaker for t in final if t.end > ms(12_500)} == {"S1"}
    assert requests > _handover_run(DiarizationOptions(probe_gap=0), 0)[2]


def test_acoustic_pauses_are_long_runs_far_below_the_windows_loud_frames() -> None:
    from streaming.voice_segments import acoustic_pauses

    rng = np.random.default_rng(0)
    audio = rng.normal(scale=0.1, size=250 * STEP)          # speech-like level, 5 s
    audio[100 * STEP:110 * STEP] *= 1e-3                     # 200 ms at -60 dB: a pause
    audio[150 * STEP:154 * STEP] *= 1e-3                     # 80 ms: a stop closure, too short
    audio[200 * STEP:215 * STEP] *= 0.1                      # 300 ms at -20 dB: quieter speech, not a pause
    lo = np.arange(250) * STEP
    options = DiarizationOptions(pause_depth=30.0)
    quiet = acoustic_pauses(audio, lo, lo + STEP, options, float(STEP))
    assert runs(quiet) == [(100, 110)]
    assert runs(acoustic_pauses(audio, lo, lo + STEP, DiarizationOptions(pause_depth=15.0), float(STEP))) == \
        [(100, 110), (200, 215)]
    assert not acoustic_pauses(audio, lo, lo + STEP, OPTIONS, float(STEP)).any()  # off by default


def test_an_acoustic_pause_inside_a_local_speakers_speech_cuts_it_into_acoustic_segments() -> None:
    lo = np.arange(250) * STEP
    mask = frames((0, 4000))                                  # the scores bridge everything
    quiet = frames((1900, 2200), (3900, 4100))                # a pause inside, and one at the speech's end
    segments = plan_segments(mask, mask, lo, lo + STEP, OPTIONS, float(STEP), quiet)
    assert [(s.first * 20, s.stop * 20, s.acoustic) for s in segments] == [(0, 1900, False), (2200, 4000, True)]
    assert segments[1].speech == ms(1800)                     # the edge quiet frames stay in the spans
    # a pause in the scores as long as segment_gap is no acoustic cut, even where the audio is quiet too
    scored = frames((0, 1900), (2200, 4000))
    assert [s.acoustic for s in plan_segments(scored, scored, lo, lo + STEP, OPTIONS, float(STEP), quiet)] == \
        [False, False]
    # a piece under min_segment_speech after the cut joins its neighbour again
    assert len(plan_segments(mask, mask, lo, lo + STEP, OPTIONS, float(STEP), frames((3000, 3300)))) == 1


def test_an_acoustic_segment_splits_only_when_it_sounds_like_another_known_speaker() -> None:
    lo = np.arange(250) * STEP
    mask = frames((0, 4000))
    segments = plan_segments(mask, mask, lo, lo + STEP, OPTIONS, float(STEP), frames((1900, 2200)))
    scores = mask.astype(float)
    a, b = np.eye(4)[0], np.eye(4)[1]
    assert len(split_by_voice(scores, segments, [a, b], 0.3, lambda e: int(np.argmax(e)))) == 2
    assert len(split_by_voice(scores, segments, [a, b], 0.3, lambda e: 0)) == 1      # one known voice's sentences
    assert len(split_by_voice(scores, segments, [a, b], 0.3, lambda e: None)) == 1   # nobody known yet
    assert len(split_by_voice(scores, segments, [a, b], 0.3, lambda e: 0 if e[0] > 0.5 else None)) == 1  # new
    assert len(split_by_voice(scores, segments, [a, b], 0.3)) == 1


class BridgingSegmentation(FakeSegmentation):
    """Tones as local speakers, except that every window ending after ``after`` in which both tones 0 and 1 are heard
    gives them one local speaker whose scores bridge the pause between them (0.7 there)."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after

    def _one(self, request):
        result = super()._one(request)
        audio = np.asarray(request.audio, dtype=np.float64)
        scores = np.array(result.scores)
        idx = (np.arange(len(scores))[:, None] * int(result.frame_step)) + np.arange(int(result.frame_duration))
        present = tone_amplitudes(audio[idx]) > self.threshold
        if request.start + len(audio) > self.after and present[:, 0].any() and present[:, 1].any():
            heard = np.flatnonzero(present[:, 0] | present[:, 1])
            scores[:] = 0.03
            scores[heard[0]:heard[-1] + 1, 0] = 0.7
            scores[present[:, 0] | present[:, 1], 0] = 0.95
        return dataclasses.replace(result, scores=scores)


def test_a_handover_the_model_bridges_with_one_local_speaker_is_cut_at_the_silence() -> None:
    # speakers 0 and 1 known; then speaker 0, a 0.3 s silence, speaker 1, all one local speaker with no pause in its
    # scores: without acoustic pauses speaker 1's first words carry speaker 0's label
    start = ms(18_800)
    turns = [Speech(0, 0, ms(6000)), Speech(1, ms(6400), ms(12000)), Speech(0, ms(12500), ms(18500)),
             Speech(1, start, start + ms(5000))]

    def wrong(options: DiarizationOptions) -> int:
        seq = itertools.count()
        diarizer = StreamingDiarizer(options, "s", 0, lambda: next(seq))
        stream(diarizer, synthesize(turns, start + ms(6000)),
               run_fakes(BridgingSegmentation(ms(12_500)), FakeEmbedding()))
        final = diarizer.pop_final_turns()
        assert diarizer.speakers == ("S1", "S2")
        return sum(max(0, min(t.end, start + ms(5000)) - max(t.start, start)) for t in final if t.speaker == "S1")

    assert wrong(OPTIONS) >= ms(300)
    assert wrong(dataclasses.replace(OPTIONS, pause_depth=25.0)) <= ms(100)


def test_pause_options_are_validated_with_the_fix_named() -> None:
    for bad in ({"pause_depth": -1.0}, {"pause_min": 0}, {"pause_min": ms(6000)}, {"pause_margin": -0.1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DiarizationOptions(**bad)


def test_only_segments_whose_acoustic_pieces_hold_two_voices_are_replaced() -> None:
    from streaming.voice_segments import nest_pieces, refine_at_pauses

    lo = np.arange(250) * STEP
    mask = frames((0, 4000))
    segments = plan_segments(mask, mask, lo, lo + STEP, OPTIONS, float(STEP))
    pieces = nest_pieces(segments, plan_segments(mask, mask, lo, lo + STEP, OPTIONS, float(STEP),
                                                 frames((1900, 2200))))
    assert list(pieces) == [0] and len(pieces[0]) == 2
    whole, a, b = np.ones(4), np.eye(4)[0], np.eye(4)[1]
    nearest = lambda e: int(np.argmax(e))  # noqa: E731
    refined, embeddings = refine_at_pauses(segments, [whole], pieces, {0: [a, b]}, 0.3, nearest)
    assert [(s.first * 20, s.stop * 20, s.acoustic) for s in refined] == [(0, 1900, False), (2200, 4000, True)]
    assert np.allclose(embeddings[1], b)
    # one voice on both sides of the silence: the segment and its own embedding, as without acoustic pauses
    refined, embeddings = refine_at_pauses(segments, [whole], pieces, {0: [a, a]}, 0.3, nearest)
    assert refined == segments and embeddings[0] is whole
