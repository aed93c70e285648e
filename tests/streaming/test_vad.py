"""streaming/vad.py: thresholds with hysteresis, min speech/silence, padding, max-length cuts, gaps, flush."""

from __future__ import annotations

import numpy as np
import pytest

from streaming.config import VAD_CHUNK, VadOptions, ms
from streaming.vad import SpeechEnd, SpeechStart, VadEndpointer, VadEvent

C = VAD_CHUNK
LOW = 0.05
HIGH = 0.9


def probs(n: int, *spans: tuple[int, int, float]) -> np.ndarray:
    """``n`` chunks at LOW, with ``(first, stop, p)`` chunk ranges set to ``p``."""
    p = np.full(n, LOW, dtype=np.float32)
    for a, b, v in spans:
        p[a:b] = v
    return p


def feed(vad: VadEndpointer, p: np.ndarray, start: int = 0) -> list[tuple[int, VadEvent]]:
    """Push one chunk at a time; return (index of the chunk that produced it, event)."""
    out = []
    for i, v in enumerate(p):
        out += [(i, e) for e in vad.push(p[i:i + 1], start + i * C)]
    return out


def spans_of(events: list[VadEvent]) -> list[tuple[int, int]]:
    return [(e.start, e.end) for e in events if isinstance(e, SpeechEnd)]


def test_one_burst_gives_padded_start_and_end_with_the_documented_delays() -> None:
    opt = VadOptions()
    timed = feed(VadEndpointer(opt), probs(100, (10, 40, HIGH)))
    (i_start, start), (i_end, end) = timed
    assert start == SpeechStart(10 * C - opt.speech_pad)
    assert end == SpeechEnd(10 * C - opt.speech_pad, 40 * C + opt.speech_pad)
    # the start is confirmed once the voiced part reaches min_speech, the end after min_silence of silence
    assert (i_start + 1) * C - 10 * C >= opt.min_speech > i_start * C - 10 * C
    assert (i_end + 1) * C - 40 * C >= opt.min_silence > i_end * C - 40 * C


def test_hysteresis_keeps_dips_between_the_thresholds_inside_speech() -> None:
    opt = VadOptions(threshold=0.5, neg_threshold=0.3)
    between = spans_of([e for _, e in feed(VadEndpointer(opt), probs(120, (10, 60, HIGH), (20, 50, 0.4)))])
    assert between == [(10 * C - opt.speech_pad, 60 * C + opt.speech_pad)]
    # the same level does not *start* speech
    assert feed(VadEndpointer(opt), probs(120, (10, 60, 0.4))) == []


def test_short_pauses_stay_inside_and_long_ones_split() -> None:
    opt = VadOptions()
    short_gap = opt.min_silence // C - 1
    one = spans_of([e for _, e in feed(VadEndpointer(opt), probs(150, (10, 40, HIGH), (40 + short_gap, 80, HIGH)))])
    assert len(one) == 1
    long_gap = opt.min_silence // C + 1
    two = spans_of([e for _, e in feed(VadEndpointer(opt), probs(150, (10, 40, HIGH), (40 + long_gap, 80, HIGH)))])
    assert len(two) == 2 and two[0][1] == 40 * C + opt.speech_pad


def test_bursts_shorter_than_min_speech_are_discarded() -> None:
    opt = VadOptions(min_speech=ms(250))
    too_short = opt.min_speech // C  # 7 chunks = 224 ms
    assert feed(VadEndpointer(opt), probs(100, (10, 10 + too_short, HIGH))) == []
    assert len(feed(VadEndpointer(opt), probs(100, (10, 11 + too_short, HIGH)))) == 2


def test_padding_never_reaches_into_the_previous_utterance() -> None:
    opt = VadOptions(speech_pad=ms(400), min_silence=ms(500))
    gap = opt.min_silence // C + 1
    events = [e for _, e in feed(VadEndpointer(opt), probs(200, (10, 40, HIGH), (40 + gap, 90, HIGH)))]
    first, second = spans_of(events)
    assert first[1] == 40 * C + opt.speech_pad
    assert second[0] == first[1]  # clipped, not (40 + gap) * C - speech_pad
    assert (40 + gap) * C - opt.speech_pad < first[1]


def test_chunk_by_chunk_equals_one_push() -> None:
    rng = np.random.default_rng(3)
    p = np.clip(np.repeat(rng.uniform(0, 1, 200), 8) + rng.normal(0, 0.1, 1600), 0, 1).astype(np.float32)
    one = VadEndpointer(VadOptions()).push(p, 0)
    chunked = [e for _, e in feed(VadEndpointer(VadOptions()), p)]
    assert one == chunked and len(one) >= 4


def test_long_speech_is_cut_at_the_least_speechy_chunk_of_the_search_range() -> None:
    opt = VadOptions(max_utterance=ms(5_000), cut_search=ms(1_000))
    start = 10 * C - opt.speech_pad
    trigger = -(-(start + opt.max_utterance - opt.speech_pad) // C)  # first chunk end reaching the limit
    dip = trigger - 12  # inside the last cut_search samples
    events = [e for _, e in feed(VadEndpointer(opt), probs(700, (10, 600, HIGH), (dip, dip + 1, 0.6)))]
    spans = spans_of(events)
    assert spans[0] == (start, dip * C + C // 2)
    assert isinstance(events[2], SpeechStart) and events[2].start == spans[0][1]
    assert [e.cut for e in events if isinstance(e, SpeechEnd)][:-1] == [True] * (len(spans) - 1)
    for (a, b), (c, _) in zip(spans, spans[1:]):
        assert b == c  # contiguous: nothing lost at a cut
    assert all(b - a <= opt.max_utterance for a, b in spans)
    assert spans[-1][1] == 600 * C + opt.speech_pad
    assert len(spans) == -(-(spans[-1][1] - start) // opt.max_utterance)  # no more pieces than needed


def test_a_cut_due_during_a_pause_ends_the_utterance_at_the_pause() -> None:
    opt = VadOptions(max_utterance=ms(5_000), cut_search=ms(1_000))
    start = 10 * C - opt.speech_pad
    trigger = -(-(start + opt.max_utterance - opt.speech_pad) // C)
    events = feed(VadEndpointer(opt), probs(400, (10, trigger - 3, HIGH), (trigger + 5, 300, HIGH)))
    (_, first), (i, end), (_, restart) = events[:3]
    assert first == SpeechStart(start)
    assert end == SpeechEnd(start, min((trigger - 3) * C + opt.speech_pad, trigger * C), cut=True)
    assert i == trigger - 1  # the chunk that reached the limit
    assert restart == SpeechStart((trigger + 5) * C - opt.speech_pad)


def test_random_probabilities_keep_the_invariants() -> None:
    opt = VadOptions(max_utterance=ms(3_000), cut_search=ms(800), min_speech=ms(100), speech_pad=ms(60))
    rng = np.random.default_rng(4)
    p = np.clip(np.repeat(rng.uniform(0, 1, 800), rng.integers(1, 30, 800)), 0, 1).astype(np.float32)
    vad = VadEndpointer(opt)
    events = vad.push(p, 7 * C) + vad.flush(7 * C + len(p) * C)
    kinds = [type(e) for e in events]
    assert kinds == [SpeechStart, SpeechEnd] * (len(events) // 2)
    spans = spans_of(events)
    assert len(spans) > 10
    assert all(7 * C <= a < b <= 7 * C + len(p) * C and b - a <= opt.max_utterance for a, b in spans)
    assert all(b <= c for (_, b), (c, _) in zip(spans, spans[1:]))


def test_a_gap_in_chunk_offsets_closes_speech_where_the_audio_stopped() -> None:
    opt = VadOptions()
    vad = VadEndpointer(opt)
    assert vad.push(probs(30, (10, 30, HIGH)), 0) == [SpeechStart(10 * C - opt.speech_pad)]
    events = vad.push(probs(5), 100 * C)
    assert events == [SpeechEnd(10 * C - opt.speech_pad, 30 * C)]
    assert not vad.in_speech


def test_flush_closes_open_speech_only() -> None:
    opt = VadOptions()
    vad = VadEndpointer(opt)
    assert vad.flush(0) == []
    vad.push(probs(40, (10, 40, HIGH)), 0)
    assert vad.in_speech and vad.utterance_start == 10 * C - opt.speech_pad
    assert vad.flush(40 * C + 100) == [SpeechEnd(10 * C - opt.speech_pad, 40 * C + 100)]
    assert vad.flush(40 * C + 100) == []
    # speech resuming right away after a flush starts no earlier than the flush point
    events = vad.push(probs(30, (0, 30, HIGH)), 40 * C)
    assert events == [SpeechStart(40 * C + 100)]


def test_reset_forgets_everything() -> None:
    p = probs(60, (10, 60, HIGH))
    vad = VadEndpointer(VadOptions())
    first = vad.push(p, 0)
    vad.reset()
    assert not vad.in_speech and vad.position is None
    assert vad.push(p, 0) == first


def test_retain_from_covers_every_possible_start() -> None:
    opt = VadOptions()
    vad = VadEndpointer(opt)
    vad.push(probs(20), 0)
    assert vad.retain_from == 20 * C - opt.speech_pad
    vad.push(probs(3, (0, 3, HIGH)), 20 * C)  # tentative: not confirmed yet
    assert not vad.in_speech and vad.retain_from == 20 * C - opt.speech_pad
    vad.push(probs(20, (0, 20, HIGH)), 23 * C)
    assert vad.in_speech and vad.retain_from == vad.utterance_start


@pytest.mark.parametrize("kwargs", [dict(threshold=0.0), dict(threshold=0.5, neg_threshold=0.6),
                                    dict(min_silence=100), dict(max_utterance=ms(30_000)),
                                    dict(cut_search=ms(20_000))])
def test_bad_options_name_the_field(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="VadOptions"):
        VadOptions(**kwargs)
