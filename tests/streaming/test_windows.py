"""SegmentationWindows: the window schedule, padding, and overlap-aware aggregation on the global frame grid."""

from __future__ import annotations

import numpy as np
import pytest

from streaming.config import DiarizationOptions, ms
from streaming.windows import FrameGeometry, SegmentationWindows, Window, top_speakers
from tests.fakes_diarization import ArrayBuffer

OPTIONS = DiarizationOptions(window=ms(5000), step=ms(500), latency=ms(1500), aggregation="mean")
GEOMETRY = FrameGeometry(step=320.0, duration=640.0, offset=0.0)  # frame centres at 320 + 320 f
N_FRAMES = int((OPTIONS.window - 640) // 320) + 1


def windows_with_geometry() -> SegmentationWindows:
    w = SegmentationWindows(OPTIONS)
    w.set_geometry(GEOMETRY)
    return w


# ------------------------------------------------------------------------------------------------ schedule
def test_first_window_is_due_after_one_step_and_padding_marks_the_missing_past() -> None:
    w = SegmentationWindows(OPTIONS)
    assert w.due(ms(499)) == []
    (first,) = w.due(ms(500))
    assert (first.start, first.end) == (ms(500) - ms(5000), ms(500))
    assert first.pad == ms(4500) and first.audio_start == 0


def test_windows_end_every_step_and_several_can_be_due_at_once() -> None:
    w = SegmentationWindows(OPTIONS)
    due = w.due(ms(2300))
    assert [x.end for x in due] == [ms(500), ms(1000), ms(1500), ms(2000)]
    assert w.due(ms(2400)) == []
    assert [x.end for x in w.due(ms(6000))] == [ms(2500 + 500 * i) for i in range(8)]
    assert all(x.end - x.start == OPTIONS.window for x in due)
    assert w.due(ms(6000))[-1:] == [] and w.next_start == ms(6500) - ms(5000)


def test_no_padding_once_a_whole_window_of_audio_exists() -> None:
    w = SegmentationWindows(OPTIONS)
    assert [x.pad for x in w.due(ms(6000)) if x.end >= ms(5000)] == [0, 0, 0]


def test_tail_covers_the_last_samples_and_closes_the_schedule() -> None:
    w = SegmentationWindows(OPTIONS)
    w.due(ms(7300))
    tail = w.tail(ms(7300))
    assert tail is not None and tail.end == ms(7300) and tail.start == ms(2300)
    assert w.due(ms(9000)) == []


def test_tail_is_none_when_the_last_window_already_ends_at_the_end() -> None:
    w = SegmentationWindows(OPTIONS)
    w.due(ms(7000))
    assert w.tail(ms(7000)) is None


def test_cut_zero_pads_the_front_and_copies() -> None:
    w = SegmentationWindows(OPTIONS)
    buffer = ArrayBuffer()
    buffer.append(np.arange(1, ms(700) + 1, dtype=np.float32))
    (window,) = w.due(buffer.end)
    window, audio = w.cut(window, buffer)
    assert len(audio) == OPTIONS.window and window.pad == ms(4500)
    assert not audio[:window.pad].any()
    np.testing.assert_array_equal(audio[window.pad:], np.arange(1, ms(500) + 1))
    audio[-1] = -5.0
    assert buffer.read(ms(500) - 1, ms(500))[0] == ms(500)


def test_cut_pads_what_the_buffer_no_longer_holds() -> None:
    w = SegmentationWindows(OPTIONS)
    buffer = ArrayBuffer()
    buffer.append(np.ones(ms(8000), dtype=np.float32))
    buffer.discard_before(ms(4000))
    window, audio = w.cut(Window(ms(3000), ms(8000)), buffer)
    assert window.pad == ms(1000)
    assert not audio[:ms(1000)].any() and audio[ms(1000):].all()


# ------------------------------------------------------------------------------------------------ aggregation
def test_overlapping_windows_are_averaged_per_frame() -> None:
    w = windows_with_geometry()
    a, b = Window(0, ms(5000)), Window(ms(500), ms(5500))
    w.add(a, np.full((N_FRAMES, 1), 0.9))
    w.add(b, np.full((N_FRAMES, 1), 0.3))
    shift = w.global_index(b) - w.global_index(a)
    assert shift == 25  # 8000 / 320
    activity = w.activity(0, w.global_index(b) + N_FRAMES)[:, 0]
    np.testing.assert_allclose(activity[:shift], 0.9)                  # only window a covers these
    np.testing.assert_allclose(activity[shift:N_FRAMES], 0.6)          # both
    np.testing.assert_allclose(activity[N_FRAMES:], 0.3)               # only window b


def test_hamming_aggregation_trusts_each_window_most_about_its_middle() -> None:
    w = SegmentationWindows(DiarizationOptions(aggregation="hamming"))
    w.set_geometry(GEOMETRY)
    a, b = Window(0, ms(5000)), Window(ms(2500), ms(7500))  # a's second half is b's first half
    w.add(a, np.full((N_FRAMES, 1), 1.0))
    w.add(b, np.zeros((N_FRAMES, 1)))
    activity = w.activity(0, w.global_index(b) + N_FRAMES)[:, 0]
    shared = activity[w.global_index(b):N_FRAMES]
    # early in the shared stretch a (at 2.5 s of 5) outweighs b (at its start); late, b (near its middle) wins
    assert shared[0] > 0.9 and shared[-1] < 0.1
    assert np.all(np.diff(shared) <= 1e-12)
    np.testing.assert_allclose(activity[:w.global_index(b)], 1.0)  # a alone: weights cancel out


def test_two_speakers_can_be_active_in_the_same_frame() -> None:
    w = windows_with_geometry()
    scores = np.zeros((N_FRAMES, 2))
    scores[100:150] = 0.9  # both global speakers at once
    w.add(Window(0, ms(5000)), scores)
    activity = w.activity(0, N_FRAMES)
    assert (activity[100:150] > 0.5).all() and not (activity[:100] > 0.5).any()


def test_merging_speakers_gives_the_kept_one_the_louder_activity_and_silences_the_other() -> None:
    w = windows_with_geometry()
    scores = np.zeros((N_FRAMES, 3))
    scores[:50, 0] = 0.8   # the speaker kept
    scores[40:100, 2] = 0.9  # the one merged into it (a phantom of the same voice)
    w.add(Window(0, ms(5000)), scores)
    w.add(Window(ms(500), ms(5500)), np.zeros((N_FRAMES, 1)))  # from frame 25 on: all silent, halving the means
    w.freeze(10)  # frames before 10 are final: nothing left there to merge
    w.merge_speakers(2, 0)
    activity = w.activity(10, 100)
    assert not activity[:, 2].any()
    np.testing.assert_allclose(activity[:, 0], [0.8] * 15 + [0.4] * 15 + [0.45] * 60)  # max(0.8/2, 0.9/2) from 40
    w.add(Window(ms(1000), ms(6000)), np.zeros((N_FRAMES, 1)))  # a later vote weighs as one of three windows
    np.testing.assert_allclose(w.activity(50, 100)[:, 0], 0.3)
    w.merge_speakers(5, 0)  # a speaker no window has voted on: nothing to do
    assert w.n_speakers == 3


def test_padding_frames_are_never_aggregated() -> None:
    w = windows_with_geometry()
    first = Window(ms(500) - ms(5000), ms(500), pad=ms(4500))
    w.add(first, np.full((N_FRAMES, 1), 0.9))
    valid = w.valid_frames(first, N_FRAMES)
    assert valid.sum() < 30 and not valid[:200].any()  # 500 ms of real audio: about 25 frames
    lo, hi = w.covered
    assert w.frame_start(lo) >= -GEOMETRY.step and hi - lo == valid.sum()


def test_frozen_frames_are_released_and_never_reopened() -> None:
    w = windows_with_geometry()
    w.add(Window(0, ms(5000)), np.full((N_FRAMES, 1), 0.9))
    w.freeze(100)
    assert w.frozen == 100 and w.covered[0] == 100
    assert not w.activity(0, 100).any()  # released
    w.add(Window(ms(500), ms(5500)), np.full((N_FRAMES, 1), 0.1))  # covers global frames 25 … 25 + N_FRAMES
    assert w.covered[0] == 100 and not w.activity(0, 100).any()  # the later window did not write below 100
    np.testing.assert_allclose(w.activity(100, N_FRAMES)[:, 0], 0.5)


def test_abstaining_frames_do_not_count_as_coverage() -> None:
    w = windows_with_geometry()
    w.add(Window(0, ms(5000)), np.full((N_FRAMES, 1), 0.9))
    abstain = np.zeros(N_FRAMES, dtype=bool)
    abstain[:50] = True
    w.add(Window(0, ms(5000)), np.zeros((N_FRAMES, 1)), abstain=abstain)
    activity = w.activity(0, N_FRAMES)[:, 0]
    np.testing.assert_allclose(activity[:50], 0.9)
    np.testing.assert_allclose(activity[50:], 0.45)


def test_a_window_can_abstain_on_one_speaker_and_vote_on_another() -> None:
    w = windows_with_geometry()
    w.add(Window(0, ms(5000)), np.full((N_FRAMES, 2), 0.8))
    second = np.zeros((N_FRAMES, 2))
    second[:, 0] = 0.6                       # it heard speaker 0 and somebody it could not name
    abstain = np.zeros((N_FRAMES, 2), dtype=bool)
    abstain[:, 1] = True                     # so it says nothing about speaker 1
    w.add(Window(0, ms(5000)), second, abstain=abstain)
    activity = w.activity(0, N_FRAMES)
    np.testing.assert_allclose(activity[:, 0], 0.7)
    np.testing.assert_allclose(activity[:, 1], 0.8)  # not diluted to 0.4


def test_a_new_speaker_column_reads_as_silent_where_earlier_windows_voted() -> None:
    w = windows_with_geometry()
    w.add(Window(0, ms(5000)), np.full((N_FRAMES, 1), 0.9))
    w.add(Window(0, ms(5000)), np.hstack([np.full((N_FRAMES, 1), 0.9), np.full((N_FRAMES, 1), 0.8)]))
    np.testing.assert_allclose(w.activity(0, N_FRAMES)[:, 1], 0.4)  # the first window heard nobody else


def test_a_window_that_abstained_says_nothing_about_speakers_it_did_not_know() -> None:
    w = windows_with_geometry()
    unnamed = np.zeros(N_FRAMES, dtype=bool)
    unnamed[:50] = True  # it heard speaker 0 everywhere, and somebody it could not name in the first 50 frames
    w.add(Window(0, ms(5000)), np.full((N_FRAMES, 1), 0.9), unnamed=unnamed)
    w.add(Window(0, ms(5000)), np.hstack([np.full((N_FRAMES, 1), 0.9), np.full((N_FRAMES, 1), 0.8)]))
    activity = w.activity(0, N_FRAMES)  # the second window names a new speaker everywhere
    np.testing.assert_allclose(activity[:, 0], 0.9)
    np.testing.assert_allclose(activity[:50, 1], 0.8)   # the first window said nothing about it there
    np.testing.assert_allclose(activity[50:, 1], 0.4)   # elsewhere the first window heard nobody else


def test_talkers_is_the_rounded_mean_count_of_voices_heard() -> None:
    w = windows_with_geometry()
    one, two = np.ones(N_FRAMES, dtype=np.int64), np.full(N_FRAMES, 2)
    w.add(Window(0, ms(5000)), np.zeros((N_FRAMES, 1)), talkers=two)
    w.add(Window(0, ms(5000)), np.zeros((N_FRAMES, 1)), talkers=two)
    w.add(Window(0, ms(5000)), np.zeros((N_FRAMES, 1)), talkers=one)
    assert (w.talkers(0, N_FRAMES) == 2).all()  # mean 5/3
    w.add(Window(0, ms(5000)), np.zeros((N_FRAMES, 1)), talkers=np.zeros(N_FRAMES))
    w.add(Window(0, ms(5000)), np.zeros((N_FRAMES, 1)), talkers=np.zeros(N_FRAMES))
    assert (w.talkers(0, N_FRAMES) == 1).all()  # mean 1
    assert (w.talkers(N_FRAMES, N_FRAMES + 5) == 0).all()  # never covered


def test_top_speakers_takes_the_counted_number_of_highest_scores() -> None:
    activity = np.array([[0.9, 0.4, 0.1],
                         [0.9, 0.4, 0.1],
                         [0.3, 0.0, 0.0],
                         [0.6, 0.7, 0.2]])
    top = top_speakers(activity, np.array([1, 2, 2, 0]))
    assert top.tolist() == [[True, False, False],
                            [True, True, False],
                            [True, False, False],   # nobody else has any score
                            [False, False, False]]
    assert top_speakers(np.zeros((0, 3)), np.zeros(0)).shape == (0, 3)


def test_new_speaker_columns_appear_when_needed() -> None:
    w = windows_with_geometry()
    w.add(Window(0, ms(5000)), np.full((N_FRAMES, 1), 0.8))
    w.add(Window(ms(500), ms(5500)), np.full((N_FRAMES, 3), 0.8))
    assert w.n_speakers == 3 and w.activity(0, 10).shape == (10, 3)


def test_frame_and_sample_conversions_agree() -> None:
    w = windows_with_geometry()
    for index in (-3, 0, 1, 77, 1000):
        start = w.frame_start(index)
        assert w.frame_at(start) == index and w.frame_at(start - 1) == index - 1
    lo, hi = GEOMETRY.bounds(5)
    assert (lo[1:] == hi[:-1]).all() and (hi - lo == 320).all()


def test_a_different_frame_step_is_rejected() -> None:
    w = windows_with_geometry()
    with pytest.raises(ValueError, match="frame step"):
        w.set_geometry(FrameGeometry(step=270.0, duration=991.0))


def test_reset_forgets_schedule_and_scores() -> None:
    w = windows_with_geometry()
    w.due(ms(3000))
    w.add(Window(0, ms(5000)), np.full((N_FRAMES, 1), 0.9))
    w.reset()
    assert w.geometry is None and w.covered == (0, 0) and [x.end for x in w.due(ms(500))] == [ms(500)]
