"""streaming/partials.py: partial windows, the committed prefix, the compute budget."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.config import ENCODER_FRAME, VAD_CHUNK, PartialOptions, SessionConfig, VadOptions, ms
from streaming.partials import PartialPolicy
from streaming.session import Session
from streaming.vad import SpeechStart, VadEndpointer
from streaming.wire import WordTiming
from streaming.work import AsrKind, AsrRequest, VadRequest
from server.offline import drive_session, run_requests_by_kind
from tests.fakes import FakeAsr, FakeVad, pcm16, tone_bursts

def windowed(**fields: object) -> PartialOptions:
    """The windowed policy without the encoder cache (the defaults before cached context: budget 1.5, cadence
    0.5 s), which most of these tests exercise; ``fields`` override."""
    return PartialOptions(**{"budget_ratio": 1.5, "cadence": ms(500), "cached_context": False, "cached_lookahead": 0,
                             **fields})


SPARE = windowed(budget_ratio=1.5)  # spare budget: left context, agreement and re-decoding of cut words
TIGHT = windowed(budget_ratio=1.0)  # at most one final pass: each partial encodes only new audio
CACHED = windowed(budget_ratio=1.0, cadence=ms(1000), cached_context=True)  # new audio, cached left context

WORD, STEP = ms(300), ms(400)  # a synthetic talker: a 300 ms word every 400 ms


def truth(n: int = 200) -> list[WordTiming]:
    return [WordTiming(f"w{k}", k * STEP, k * STEP + WORD) for k in range(n)]


def decoder(words: list[WordTiming], min_part: int = ms(50)) -> Callable[[tuple[int, int]], list[WordTiming]]:
    """Decode a window: every word overlapping it, its times clipped to the window (cut words keep their text)."""
    def decode(window: tuple[int, int]) -> list[WordTiming]:
        a, b = window
        out = []
        for w in words:
            s, e = max(w.start, a), min(w.end, b)
            if e - s >= min_part:
                out.append(WordTiming(w.word, s, e))
        return out
    return decode


def run_utterance(policy: PartialPolicy, decode: Callable, length: int, step: int = ms(100)) -> list[tuple]:
    """Grow the utterance ``step`` at a time, decoding whenever due (results return at once)."""
    windows = []
    for now in range(step, length + 1, step):
        window = policy.due(now)
        if window is None:
            continue
        natural_start = max(policy.utterance_start, policy.committed_end - policy.options.left_context)
        policy.start(window)
        windows.append((window, natural_start))
        policy.on_result(decode(window))
        assert policy.encoded <= policy.options.budget_ratio * (now - policy.utterance_start)
    return windows


def test_budget_and_window_bounds_hold_over_a_long_utterance() -> None:
    opt = SPARE
    policy = PartialPolicy(opt, 0)
    windows = run_utterance(policy, decoder(truth()), ms(20_000))
    assert all(b - a <= opt.max_window for (a, b), _ in windows)
    assert all(a >= natural or b - a == opt.max_window for (a, b), natural in windows)
    assert policy.encoded <= opt.budget_ratio * ms(20_000)
    assert len(windows) >= 8  # the cadence stretches but partials keep coming
    gaps = [b2 - b1 for ((_, b1), _), ((_, b2), _) in zip(windows, windows[1:])]
    assert max(gaps) <= opt.max_window  # never starved for long


def test_committed_prefix_follows_the_speech() -> None:
    words = truth()
    policy = PartialPolicy(SPARE, 0)
    windows = run_utterance(policy, decoder(words), ms(20_000))
    last_end = windows[-1][0][1]
    committed = policy.committed
    assert committed == words[:len(committed)]  # a true prefix, with true times
    assert committed[-1].end >= last_end - PartialOptions().max_window  # it keeps up with the audio
    expected = [w.word for w in words if w.start < last_end and min(w.end, last_end) - w.start >= ms(50)]
    assert policy.text == " ".join(expected)


def test_two_agreeing_decodes_commit_words_outside_the_fresh_tail() -> None:
    opt = windowed(fresh_tail=ms(500), agreement_tolerance=ms(50))
    policy = PartialPolicy(opt, 0)
    words = truth(10)
    decode = decoder(words)
    for now in (ms(1_000), ms(2_000)):
        policy.start((0, now))
        policy.on_result(decode((0, now)))
    # both decodes contain w0 and w1 unchanged; w2 ([800, 1100) ms) was cut at 1000 ms in the first: its end moved
    assert [w.word for w in policy.committed] == ["w0", "w1"]
    assert policy.committed_end == words[1].end
    assert policy.text == "w0 w1 w2 w3 w4"


def test_the_fresh_tail_is_never_committed() -> None:
    opt = windowed(fresh_tail=ms(1_500), max_window=ms(4_000))
    policy = PartialPolicy(opt, 0)
    decode = decoder(truth(10))
    for now in (ms(2_000), ms(2_000) + ms(500)):
        policy.start((0, now))
        policy.on_result(decode((0, now)))
    assert all(w.end <= ms(2_500) - ms(1_500) for w in policy.committed)
    assert [w.word for w in policy.committed] == ["w0", "w1"]


@pytest.mark.parametrize("change, committed", [(dict(word="other"), 0), (dict(start=ms(250)), 0),
                                               (dict(start=ms(150)), 1), (dict(end=ms(600)), 0)])
def test_agreement_needs_same_text_and_close_times(change: dict, committed: int) -> None:
    policy = PartialPolicy(windowed(agreement_tolerance=ms(200)), 0)
    first = WordTiming("a", ms(0), ms(300))
    second = WordTiming(change.get("word", "a"), change.get("start", 0), change.get("end", ms(300)))
    for now, w in ((ms(1_500), first), (ms(2_000), second)):
        policy.start((0, now))
        policy.on_result([w])
    assert len(policy.committed) == committed


def test_one_decode_in_flight_first_partial_and_cadence() -> None:
    opt = windowed(first_partial=ms(300), cadence=ms(500), budget_ratio=1.0)
    policy = PartialPolicy(opt, ms(10_000))
    assert policy.due(ms(10_200)) is None  # less than first_partial of audio
    window = policy.due(ms(10_300))
    assert window == (ms(10_000), ms(10_300))
    policy.start(window)
    assert policy.due(ms(11_500)) is None  # in flight
    policy.on_result([])
    assert policy.due(ms(10_700)) is None  # less than cadence since the last window
    assert policy.due(ms(10_800)) == (ms(10_300), ms(10_800))  # budget 1.0: only the new audio


def test_skip_waits_another_cadence() -> None:
    policy = PartialPolicy(windowed(cadence=ms(500)), 0)
    assert policy.due(ms(600)) is not None
    policy.skip(ms(600))
    assert policy.due(ms(1_000)) is None and policy.due(ms(1_100)) == (0, ms(1_100))
    assert policy.encoded == 0


def test_cadence_grows_with_the_utterance() -> None:
    opt = windowed(cadence=ms(500), cadence_growth=0.1, budget_ratio=1.0)  # no budget waits between
    policy = PartialPolicy(opt, 0)
    windows = run_utterance(policy, decoder(truth()), ms(20_000))
    gaps = [(b2, b2 - b1) for ((_, b1), _), ((_, b2), _) in zip(windows, windows[1:])]
    assert all(gap == max(opt.cadence, -(-int(0.1 * b) // ms(100)) * ms(100)) for b, gap in gaps)  # 100 ms steps
    assert gaps[0][1] == ms(500) and gaps[-1][1] >= ms(1_800)


def spelled(n: int = 200) -> list[WordTiming]:
    """Like :func:`truth`, each word 12 characters long, so that a decoder can give the pieces of a cut word."""
    return [WordTiming(f"{k:04d}" * 3, w.start, w.end) for k, w in enumerate(truth(n))]


def piece_decoder(words: list[WordTiming]) -> Callable[[tuple[int, int]], list[WordTiming]]:
    """Decode a window as CTC does: a word cut by the window's edge gives only the characters of its part in the
    window (proportional to the audio), timed to the edge."""
    def decode(window: tuple[int, int]) -> list[WordTiming]:
        a, b = window
        out = []
        for w in words:
            s, e = max(w.start, a), min(w.end, b)
            if e <= s:
                continue
            n = len(w.word)
            text = w.word[round(n * (s - w.start) / (w.end - w.start)):round(n * (e - w.start) / (w.end - w.start))]
            if text:
                out.append(WordTiming(text, s, e))
        return out
    return decode


def test_at_budget_one_each_partial_encodes_only_new_audio_and_rejoins_cut_words() -> None:
    policy = PartialPolicy(TIGHT, 0)
    words = spelled()
    windows = run_utterance(policy, piece_decoder(words), ms(12_000))
    assert windows[0][0][0] == 0
    assert all(a == prev_b for ((a, _), _), ((_, prev_b), _) in zip(windows[1:], windows))  # abutting
    assert policy.encoded == windows[-1][0][1]  # every sample encoded exactly once
    assert policy.encoded <= ms(12_000)
    edges = [b for (_, b), _ in windows[:-1]]
    cut = [e for e in edges if any(w.start < e < w.end for w in words)]
    assert cut and len(cut) < len(edges)  # some window edges fell inside a word, others between two
    heard = [w.word for w in words if w.start < windows[-1][0][1]]
    shown = policy.text.split()
    assert shown[:-1] == heard[:-1]  # the pieces of every cut word joined again, no two words joined
    assert heard[-1].startswith(shown[-1])  # the newest word may still be running past the last window


def test_pieces_are_joined_only_when_the_window_had_no_left_context() -> None:
    for window, text in (((ms(250), ms(1_000)), "abc xyz"), ((ms(500), ms(1_000)), "abcxyz")):
        policy = PartialPolicy(SPARE, 0)
        policy.start((0, ms(500)))
        policy.on_result([WordTiming("abc", ms(100), ms(500))])  # runs to the window's end
        policy.start(window)  # from 250 ms: re-encodes the end of "abc" as context; from 500 ms: no context
        assert policy.on_result([WordTiming("xyz", window[0], ms(900))]) == text


@settings(max_examples=150, deadline=None)
@given(budget=st.floats(0.3, 2.0), first=st.integers(ms(100), ms(1_000)), cadence=st.integers(ms(100), ms(1_500)),
       growth=st.floats(0, 0.5), context=st.integers(0, ms(1_000)), length=st.integers(ms(100), ms(25_000)),
       step=st.sampled_from([VAD_CHUNK, ms(50), ms(100), ms(320), 128 * VAD_CHUNK]), skips=st.sets(st.integers(0, 80)),
       start=st.integers(0, 10 ** 7))
def test_the_budget_is_never_exceeded_on_any_utterance(budget: float, first: int, cadence: int, growth: float,
                                                       context: int, length: int, step: int, skips: set,
                                                       start: int) -> None:
    opt = windowed(budget_ratio=budget, first_partial=first, cadence=cadence, cadence_growth=growth,
                         left_context=context, max_window=max(ms(4_000), context + cadence + 1))
    policy, decode = PartialPolicy(opt, start), decoder([WordTiming(w.word, w.start + start, w.end + start)
                                                         for w in truth(70)])
    decoded_to = start
    for k, now in enumerate(range(start + step, start + length + 1, step)):
        window = policy.due(now)
        if window is None:
            continue
        if k in skips:
            policy.skip(now)
            continue
        a, b = window
        assert b == now and 0 < b - a <= opt.max_window
        if budget >= 1.0 and now - decoded_to <= opt.max_window:
            assert a <= decoded_to  # no audio is left without a partial
        policy.start(window)
        decoded_to = b
        assert policy.encoded <= budget * (now - start)  # the hard cap
        policy.on_result(decode(window))
    assert policy.encoded <= budget * max(length, 0)


def test_the_first_partial_is_due_when_the_vad_opens_the_utterance() -> None:
    """With the default VAD and partial options, the first partial request goes out at speech start + ≤ 0.5 s."""
    vad, opt = VadOptions(), windowed()
    for onset_chunk in (40, 41, 57):
        endpointer = VadEndpointer(vad)
        probs = np.zeros(200)
        probs[onset_chunk:150] = 0.9
        policy = None
        for i, p in enumerate(probs):
            events = endpointer.push(np.array([p]), i * VAD_CHUNK)
            for e in events:
                if isinstance(e, SpeechStart):
                    policy = PartialPolicy(opt, e.start)
            if policy is not None:
                now = min(endpointer.position, endpointer.speech_until)
                if policy.due(now) is not None:
                    break
        onset = onset_chunk * VAD_CHUNK
        assert policy is not None and now - onset <= ms(500) - ms(150)  # leaves ≥ 150 ms for VAD + the decode
        assert policy.due(now) == (policy.utterance_start, now)


def test_finals_do_not_depend_on_the_partial_policy() -> None:
    """The same final requests (samples and offsets) with partials off, at budget 1.0 and at budget 1.5."""
    audio = pcm16(tone_bursts([(300 + 40 * k, 0.3) for k in range(30)], gaps=0.15, lead=0.5, tail=1.0).audio)
    finals = []
    for partials in (PartialOptions(enabled=False), TIGHT, SPARE, CACHED, PartialOptions()):
        asr = FakeAsr(record=True)
        config = SessionConfig(diarization=False, partials=partials)
        drive_session(Session("s", config), run_requests_by_kind({VadRequest: FakeVad(), AsrRequest: asr}), audio)
        last = {r.utterance_id: r for r in asr.requests if r.kind == AsrKind.FINAL}  # earlier: missed speculations
        final = [(r.start, r.audio.tobytes()) for _, r in sorted(last.items())]
        finals.append(final)
        if partials.enabled:
            assert asr.samples[AsrKind.PARTIAL] <= partials.budget_ratio * sum(len(a) // 4 for _, a in final)
    assert finals[0] == finals[1] == finals[2] == finals[3] and len(finals[0]) >= 1



def test_windows_that_outgrow_max_window_commit_what_falls_out() -> None:
    opt = windowed(max_window=ms(3_000), left_context=ms(1_000), cadence=ms(500), budget_ratio=10.0)
    policy = PartialPolicy(opt, 0)
    counter = iter(range(10_000))

    def unstable(window: tuple[int, int]) -> list[WordTiming]:  # never agrees with itself: nothing is agreed
        a, b = window
        return [WordTiming(f"x{next(counter)}", s, s + ms(300)) for s in range(a, b - ms(300), ms(400))]

    windows = run_utterance(policy, unstable, ms(10_000))
    assert all(b - a <= opt.max_window for (a, b), _ in windows)
    assert windows[-1][0][0] > 0 and policy.committed  # old words were committed as they were
    assert policy.committed_end >= windows[-1][0][0] + opt.left_context - ms(500)
    starts = [w.start for w in policy.words]
    assert starts == sorted(starts)


def test_text_without_word_timings_is_shown_but_never_committed() -> None:
    policy = PartialPolicy(windowed(), 0)
    for now in (ms(1_000), ms(2_000)):
        policy.start((0, now))
        assert policy.on_result([], "привет мир") == "привет мир"
    assert policy.committed == []


def test_reset_starts_a_new_utterance() -> None:
    policy = PartialPolicy(windowed(), 0)
    run_utterance(policy, decoder(truth()), ms(5_000))
    policy.reset(ms(60_000))
    assert (policy.committed, policy.encoded, policy.text, policy.in_flight) == ([], 0, "", None)
    assert policy.due(ms(60_300)) == (ms(60_000), ms(60_300))


@pytest.mark.parametrize("kwargs", [dict(cadence=ms(50)), dict(max_window=ms(800)), dict(first_partial=ms(50)),
                                    dict(cadence_growth=1.0), dict(budget_ratio=0),
                                    dict(fresh_tail=ms(5_000)), dict(max_lag=10), dict(max_pending_requests=0),
                                    dict(cached_context=False, cached_lookahead=1), dict(cached_context=True, cached_lookahead=26)])
def test_bad_options_name_the_field(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="PartialOptions"):
        PartialOptions(**kwargs)


def test_cached_context_windows_continue_the_last_one_and_whole_results_replace_the_text() -> None:
    policy = PartialPolicy(windowed(cached_context=True, max_window=ms(2_000)), 0)
    words = truth()
    windows = []
    for now in range(ms(100), ms(8_000) + 1, ms(100)):
        window = policy.due(now)
        if window is not None:
            policy.start(window)
            windows.append(window)
            so_far = decoder(words)((0, window[1]))  # the cache's answer: the whole utterance so far
            assert policy.on_result(so_far, whole=True) == " ".join(w.word for w in so_far)
    assert windows[0] == (0, ms(300)) and all(a == b0 for (_, b0), (a, _) in zip(windows, windows[1:]))
    assert policy.encoded == windows[-1][1]  # every sample once, no left context re-encoded, max_window ignored
    assert policy.committed == []


def test_cached_context_takes_a_result_that_is_not_whole_as_a_context_free_decode() -> None:
    """An engine without the cache answers with the window's words: the text still grows as at budget 1.0."""
    cached, tight = PartialPolicy(CACHED, 0), PartialPolicy(windowed(budget_ratio=1.0, cadence=ms(1000)), 0)
    assert run_utterance(cached, decoder(truth()), ms(6_000)) == run_utterance(tight, decoder(truth()), ms(6_000))
    assert cached.text == tight.text and len(cached.text.split()) >= 10


def test_an_adopted_speculation_does_not_move_the_next_cached_window() -> None:
    policy = PartialPolicy(windowed(cached_context=True, budget_ratio=3.0), 0)
    policy.start(policy.due(ms(300)))
    policy.on_result(decoder(truth())((0, ms(300))), whole=True)
    text = policy.adopt((0, ms(900)), decoder(truth())((0, ms(900))))
    assert text == "w0 w1 w2"  # the speculation is the whole utterance so far
    assert policy.due(ms(1_500)) == (ms(300), ms(1_500))  # the cache ends where the last cached window did


def test_cached_partial_requests_carry_the_lookahead_and_finals_stay_ordinary() -> None:
    audio = pcm16(tone_bursts([(300 + 40 * k, 0.3) for k in range(12)], gaps=0.15, lead=0.5, tail=1.0).audio)
    asr = FakeAsr(record=True)
    config = SessionConfig(diarization=False, partials=windowed(budget_ratio=1.0, cached_context=True,
                                                                       cached_lookahead=2))
    drive_session(Session("s", config), run_requests_by_kind({VadRequest: FakeVad(), AsrRequest: asr}), audio)
    partials = [r for r in asr.requests if r.kind == AsrKind.PARTIAL]
    looks = [r.cache_lookahead for r in partials]
    assert len(partials) >= 3 and looks[0] == 2 and set(looks) == {0, 2}
    assert looks == sorted(looks, reverse=True)  # granted while the budget's lag allows (200 ms), then off
    assert all(b.start == a.start + len(a.audio) for a, b in zip(partials, partials[1:]))
    assert {r.cache_lookahead for r in asr.requests if r.kind == AsrKind.FINAL} == {None}


@pytest.mark.parametrize("budget", [1.0, 1.5])
def test_lookahead_is_paid_from_the_budget_by_ending_windows_earlier(budget: float) -> None:
    """Each lookahead frame is encoded again by the next window and charged to it: at budget 1.0 the window ends
    that much before the audio, so partial encoding (repeats included) never exceeds the audio so far; lookahead is
    granted only while the lag it causes stays within ``lookahead_lag``; a higher budget pays it without lag."""
    options = windowed(budget_ratio=budget, cadence=ms(1000), cached_context=True, cached_lookahead=2,
                             lookahead_lag=ms(200))
    policy = PartialPolicy(options, 0)
    sent, now = [], 0
    while now < ms(12_000):
        now += ms(100)
        window = policy.due(now)
        if window is None:
            continue
        policy.start(window)
        sent.append((window, policy.lookahead, now))
        policy.on_result([], "x", whole=True)
        assert policy.encoded <= budget * now  # windows + repeats within the budget at every send
    assert len(sent) >= 6
    assert all(b[0][0] == a[0][1] for a, b in zip(sent, sent[1:]))  # contiguous: the cache continues
    lags = [now - w[1] for w, _, now in sent]
    looks = [look for _, look, _ in sent]
    if budget == 1.0:
        assert looks[:2] == [2, 2] and 0 in looks and looks == sorted(looks, reverse=True)
        assert max(lags) <= ms(200) and lags[1] == 2 * ENCODER_FRAME  # the first window's lookahead, paid by the second
        assert policy.encoded == sent[-1][0][1] + sum(looks[:-1]) * ENCODER_FRAME
    else:
        assert set(looks) == {2} and max(lags) == 0


def test_a_missed_speculation_does_not_shorten_the_next_cached_window() -> None:
    """An adopted speculation is charged (the speculation gate reads it) but is the finals' cost: at budget 1.0
    the next cached window still reaches the newest audio, and partial decodes alone stay within the audio."""
    policy = PartialPolicy(windowed(cached_context=True, budget_ratio=1.0), 0)
    policy.start(policy.due(ms(300)))
    policy.on_result(decoder(truth())((0, ms(300))), whole=True)
    assert policy.adopt((0, ms(900)), decoder(truth())((0, ms(900)))) is not None
    assert policy.missed == ms(900) and policy.budget(ms(1_500)) < ms(1_200)  # the gate sees the miss
    assert policy.due(ms(1_500)) == (ms(300), ms(1_500))
    policy.start((ms(300), ms(1_500)))
    assert policy.encoded - policy.missed == ms(1_500)
