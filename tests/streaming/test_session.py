"""streaming/session.py: the Session API end to end with fake models (tone bursts → tone words)."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from server.offline import drive_session, run_requests_by_kind
from streaming import wire
from streaming.audio import MULAW_TABLE
from streaming.config import AudioFormat, SessionConfig, VadOptions, ms
from streaming.errors import InvalidAudio, InvalidState, UnsupportedFormat
from streaming.session import Session, SessionState
from streaming.work import AsrKind, AsrRequest, AsrResult, VadRequest, VadResult
from tests.streaming.test_partials import windowed
from tests.fakes import (
    FakeAsr,
    FakeVad,
    SessionHarness,
    events_of,
    pcm16,
    plain_config,
    seconds,
    tone_bursts,
)

PAD = VadOptions().speech_pad
SLACK = PAD + 512 + 2 * 160  # padding, one VAD chunk, two fake-ASR frames



def run_whole(audio: np.ndarray, cfg: SessionConfig, chunk_bytes: int = 3200) -> tuple[list, FakeAsr]:
    asr = FakeAsr(record=True)
    events = drive_session(Session("s1", cfg), run_requests_by_kind({VadRequest: FakeVad(), AsrRequest: asr}),
                           pcm16(audio), chunk_bytes=chunk_bytes)
    return events, asr


# --------------------------------------------------------------------------------------------- finals
def test_each_utterance_gets_one_final_over_its_samples_with_absolute_words() -> None:
    b = tone_bursts([(440, 1.0), (660, 0.8), (880, 1.2)], gaps=1.0)
    events, asr = run_whole(b.audio, plain_config(interim_results=False))
    finals = events_of(events, wire.Final)
    assert [f.utterance_id for f in finals] == [0, 1, 2]
    assert [f.text for f in finals] == list(b.words)
    for f, (a, z) in zip(finals, b.spans):
        assert a - SLACK <= f.start <= a and z <= f.end <= z + SLACK
        (word,) = f.words
        assert abs(word.start - a) <= 2 * 160 and abs(word.end - z) <= 2 * 160 and word.speaker is None
    requests = [r for r in asr.requests if r.kind == AsrKind.FINAL]
    assert [(r.start, r.start + len(r.audio)) for r in requests] == [(f.start, f.end) for f in finals]
    assert events[-1] == wire.End(len(b.audio), 3, (), len(b.audio), 0)
    assert events_of(events, wire.Partial) == [] and asr.calls[AsrKind.PARTIAL] == 0


def test_unaligned_message_sizes_give_the_same_finals() -> None:
    b = tone_bursts([(500, 0.7), (700, 0.9)], gaps=0.8)
    whole, _ = run_whole(b.audio, plain_config(), chunk_bytes=32_000)
    odd, _ = run_whole(b.audio, plain_config(), chunk_bytes=777)
    assert events_of(whole, wire.Final) == events_of(odd, wire.Final) and len(events_of(odd, wire.Final)) == 2


def test_other_encodings_rates_and_downmix() -> None:
    b = tone_bursts([(440, 0.8), (660, 0.8)], gaps=0.8)
    at8k = soxr.resample(b.audio, 16000, 8000)
    mulaw = np.abs(at8k[:, None] - MULAW_TABLE[None, :]).argmin(axis=1).astype(np.uint8).tobytes()
    cfg = plain_config(audio=AudioFormat("mulaw", 8000, 1))
    events = drive_session(Session("s", cfg), run_requests_by_kind({VadRequest: FakeVad(), AsrRequest: FakeAsr()}),
                           mulaw, chunk_bytes=333)
    assert [f.text for f in events_of(events, wire.Final)] == list(b.words)
    stereo = np.stack([b.audio, np.zeros_like(b.audio)], axis=1).reshape(-1)  # right channel silent
    cfg = plain_config(audio=AudioFormat("pcm_s16le", 16000, 2))
    events = drive_session(Session("s", cfg), run_requests_by_kind({VadRequest: FakeVad(), AsrRequest: FakeAsr()}),
                           pcm16(stereo), chunk_bytes=1000)
    finals = events_of(events, wire.Final)
    assert [(f.text, f.channel) for f in finals] == [(w, 0) for w in b.words]


def test_multichannel_transcribes_each_channel_with_its_label() -> None:
    left = tone_bursts([(440, 1.0)], lead=0.3, tail=2.0)
    right = tone_bursts([(660, 1.0)], lead=1.5, tail=0.8)
    stereo = np.stack([left.audio, right.audio], axis=1).reshape(-1)
    cfg = plain_config(multichannel=True, audio=AudioFormat("pcm_s16le", 16000, 2))
    events = drive_session(Session("s", cfg), run_requests_by_kind({VadRequest: FakeVad(), AsrRequest: FakeAsr()}),
                           pcm16(stereo))
    finals = events_of(events, wire.Final)
    assert sorted((f.channel, f.speaker, f.text) for f in finals) == [(0, "ch0", "w440"), (1, "ch1", "w660")]
    ids = [e.utterance_id for e in events if isinstance(e, (wire.Partial, wire.Final))]
    first_seen = list(dict.fromkeys(ids))
    assert first_seen == sorted(first_seen) == [0, 1]  # ids increase in the order they are first used
    assert events[-1] == wire.End(len(left.audio), 2, ("ch0", "ch1"), len(left.audio), 0)


def test_finalize_closes_the_utterance_at_the_audio_received() -> None:
    b = tone_bursts([(440, 3.0)], lead=0.5, tail=1.0)
    h = SessionHarness(plain_config(interim_results=False))
    split = seconds(2.0)
    h.feed(b.audio[:split])
    h.session.receive_finalize()
    h.pump()
    (first,) = events_of(h.events, wire.Final)
    assert first.end == split and first.text == "w440"
    h.feed(b.audio[split:])
    h.end()
    second = events_of(h.events, wire.Final)[1]
    assert second.start >= first.end and second.end >= b.spans[0][1] and second.text == "w440"


def test_utterances_over_max_length_are_cut_without_losing_audio() -> None:
    b = tone_bursts([(440, 12.0)], lead=0.5, tail=1.0)
    cfg = plain_config(vad=VadOptions(max_utterance=ms(5_000), cut_search=ms(1_000)), interim_results=False)
    finals = events_of(run_whole(b.audio, cfg)[0], wire.Final)
    assert len(finals) == 3 and all(f.text == "w440" for f in finals)
    assert all(f.end - f.start <= ms(5_000) for f in finals)
    assert all(a.end == b_.start for a, b_ in zip(finals, finals[1:]))


# --------------------------------------------------------------------------------------------- partials
def long_utterance(n: int = 26) -> tuple:
    """n tones of 300 ms with 150 ms pauses (one utterance), each a different pitch."""
    return tone_bursts([(300 + 40 * k, 0.3) for k in range(n)], gaps=0.15, lead=0.5, tail=1.0)


def test_partials_converge_to_the_final_within_the_budget() -> None:
    b = long_utterance()  # budget 1.5 buys re-decoding of cut words (the default 1.0: tests/streaming/test_partials.py)
    # the partial policy alone (its 150 ms pauses would each send a speculative final: tests/streaming/test_speculative.py)
    cfg = plain_config(partials=windowed(budget_ratio=1.5), speculative_finals=False)
    events, asr = run_whole(b.audio, cfg)
    (final,) = events_of(events, wire.Final)
    partials = events_of(events, wire.Partial)
    assert final.text == " ".join(b.words)
    assert len(partials) >= 4 and all(p.utterance_id == final.utterance_id for p in partials)
    assert events.index(partials[-1]) < events.index(final)
    ends = [p.end for p in partials]
    assert ends == sorted(ends)
    last = partials[-1].text.split()
    assert last[:-1] == final.text.split()[:len(last) - 1]  # all but a possibly cut last word agree
    assert len(last) >= len(final.text.split()) * (partials[-1].end - final.start) / (final.end - final.start) - 2
    assert asr.samples[AsrKind.PARTIAL] <= 1.5 * (final.end - final.start)
    assert asr.calls[AsrKind.FINAL] == 1


def test_interim_results_off_means_no_partial_work() -> None:
    events, asr = run_whole(long_utterance(8).audio, plain_config(interim_results=False))
    assert events_of(events, wire.Partial) == [] and asr.calls[AsrKind.PARTIAL] == 0
    assert len(events_of(events, wire.Final)) == 1


def test_one_partial_in_flight_and_one_still_out_at_the_final_is_withdrawn() -> None:
    b = long_utterance(10)
    h = SessionHarness(plain_config())
    h.hold = lambda r: isinstance(r, AsrRequest) and r.kind == AsrKind.PARTIAL
    h.feed(b.audio)
    partial_requests = [r for r in h.sent if isinstance(r, AsrRequest) and r.kind == AsrKind.PARTIAL]
    assert len(partial_requests) == 1  # the first never came back, so no second one was sent
    assert len(events_of(h.events, wire.Final)) == 1  # the utterance closed while it was in flight
    assert h.session.withdrawn_work() == [partial_requests[0].seq]  # the caller may cancel it
    assert h.session.stats.partials_withdrawn == 1 and h.session.stats.speculations_withdrawn == 0
    h.release()  # a result that comes anyway is dropped and counted
    assert h.session.stats.results_dropped == 1 and events_of(h.events, wire.Partial) == []


def test_results_that_match_no_request_are_dropped_and_counted() -> None:
    h = SessionHarness(plain_config())
    h.hold = lambda r: isinstance(r, VadRequest)
    h.feed(np.zeros(seconds(0.5), dtype=np.float32))
    (vad,) = h.held
    s = h.session
    s.receive_result(AsrResult("s1", 9_999, "x"))  # unknown seq
    s.receive_result(VadResult("other", vad.seq, np.zeros(1, np.float32), None))  # another session's
    s.receive_result(AsrResult("s1", vad.seq, "x"))  # wrong type: the VAD request still waits
    assert s.stats.results_dropped == 3 and s.work_to_run() == []
    h.release()
    assert s.stats.audio_processed > 0 and s.stats.results_dropped == 3


# --------------------------------------------------------------------------------------------- lag
def test_partials_are_skipped_while_the_vad_lags_with_one_warning() -> None:
    b = long_utterance(40)
    h = SessionHarness(plain_config())
    h.feed(b.audio[:seconds(1.0)])
    h.hold = lambda r: isinstance(r, VadRequest)  # the VAD stalls for 8 s of audio, then catches up
    h.feed(b.audio[seconds(1.0):seconds(9.0)])
    assert h.session.stats.lag >= ms(7_000)
    h.release()
    h.feed(b.audio[seconds(9.0):])
    h.end()
    stats = h.session.stats
    warnings = [w.code for w in events_of(h.events, wire.Warning)]
    assert stats.partials_dropped >= 1 and warnings == ["partials_dropped"] and stats.audio_dropped == 0
    (final,) = events_of(h.events, wire.Final)
    assert final.text == " ".join(b.words)


def test_partials_are_skipped_while_many_requests_are_pending() -> None:
    b = tone_bursts([(440, 0.5), (550, 0.5), (660, 0.5), (770, 3.0)], gaps=0.8)
    h = SessionHarness(plain_config(partials=windowed(max_pending_requests=2)))
    h.hold = lambda r: isinstance(r, AsrRequest) and r.kind == AsrKind.FINAL
    h.feed(b.audio)
    last_start = b.spans[3][0] - PAD - 512
    late = [r for r in h.sent if isinstance(r, AsrRequest) and r.kind == AsrKind.PARTIAL and r.start >= last_start]
    assert h.session.stats.partials_dropped >= 4 and late == []  # 3 finals pending: no partial decodes
    h.end()
    h.release()
    assert [f.text for f in events_of(h.events, wire.Final)] == list(b.words)


def test_audio_beyond_max_pending_is_dropped_oldest_first_with_a_warning() -> None:
    b = long_utterance(40)
    h = SessionHarness(plain_config(max_pending_audio=ms(4_000)))
    h.feed(b.audio[:seconds(2.0)])
    h.hold = lambda r: isinstance(r, VadRequest)  # the VAD stalls
    h.feed(b.audio[seconds(2.0):seconds(9.0)])
    (stalled,) = h.held
    stalled_end = stalled.start + len(stalled.audio)
    assert ms(4_000) * 0.9 <= h.session.stats.lag <= ms(4_000)  # dropped audio no longer counts as behind
    h.release()
    h.feed(b.audio[seconds(9.0):])
    h.end()
    stats = h.session.stats
    dropped = [w for w in events_of(h.events, wire.Warning) if w.code == "audio_dropped"]
    assert dropped and sum(w.dropped_seconds for w in dropped) == pytest.approx(stats.audio_dropped / 16000)
    assert ms(9_000) - ms(4_000) - stalled_end <= stats.audio_dropped <= ms(9_000) - ms(3_600) - stalled_end
    finals = events_of(h.events, wire.Final)
    assert len(finals) == 2 and finals[0].end <= stalled_end < finals[1].start  # the gap closed the first one
    ids = {e.utterance_id for e in h.events if isinstance(e, (wire.Partial, wire.Final))}
    assert {f.utterance_id for f in finals} == ids  # every utterance got its final
    assert h.events[-1] == wire.End(len(b.audio), 2, (), len(b.audio) - stats.audio_dropped, stats.audio_dropped)


def test_buffers_stay_bounded_on_a_long_stream() -> None:
    tones = [(400 + 20 * (k % 10), 0.6) for k in range(60)]
    b = tone_bursts(tones, gaps=0.9)
    h = SessionHarness(plain_config())
    retained = []
    data = pcm16(b.audio)
    for a in range(0, len(data), 16_000):
        h.session.receive_audio(data[a:a + 16_000])
        h.pump()
        retained.append(len(h.session._channels[0].buffer))
    h.end()
    assert len(events_of(h.events, wire.Final)) == 60
    assert max(retained) <= ms(600) + 2 * PAD + VadOptions().min_silence + ms(500) + 1024


# --------------------------------------------------------------------------------------------- lifecycle
def test_lifecycle_and_end_after_the_last_final() -> None:
    b = tone_bursts([(440, 0.8)], tail=0.2)
    h = SessionHarness(plain_config(interim_results=False))
    h.hold = lambda r: isinstance(r, AsrRequest)
    h.feed(b.audio)
    assert h.session.state == SessionState.OPEN
    h.end()
    assert h.session.state == SessionState.ENDING and events_of(h.events, wire.End) == []
    for call in (lambda: h.session.receive_audio(b"\0\0"), h.session.receive_finalize, h.session.receive_end):
        with pytest.raises(InvalidState):
            call()
    h.release()
    assert h.session.state == SessionState.CLOSED
    assert [type(e) for e in h.events] == [wire.SpeechStarted, wire.Final, wire.End]
    h.session.receive_result(AsrResult("s1", 1, "late"))
    assert h.session.stats.results_dropped == 1 and h.session.events_to_send() == []


def test_a_stream_without_speech_ends_with_no_utterances() -> None:
    events, asr = run_whole(np.zeros(seconds(1.3), dtype=np.float32), plain_config())
    assert events == [wire.End(seconds(1.3), 0, (), seconds(1.3), 0)] and asr.requests == []
    s = Session("s1", plain_config())
    s.receive_end()
    assert s.events_to_send() == [wire.End(0, 0, (), 0, 0)] and s.state == SessionState.CLOSED


def test_finalize_in_silence_or_twice_does_nothing_more() -> None:
    b = tone_bursts([(440, 0.8)], lead=0.5, tail=1.0)
    h = SessionHarness(plain_config(interim_results=False))
    h.feed(b.audio[:seconds(0.3)])
    h.session.receive_finalize()  # nothing open
    h.feed(b.audio[seconds(0.3):])
    h.session.receive_finalize()
    h.session.receive_finalize()
    h.end()
    assert [f.text for f in events_of(h.events, wire.Final)] == ["w440"]


def test_bad_formats_and_audio_raise_the_protocol_errors() -> None:
    with pytest.raises(UnsupportedFormat):
        Session("s", plain_config(audio=AudioFormat("opus")))
    s = Session("s", plain_config(audio=AudioFormat("pcm_f32le")))
    with pytest.raises(InvalidAudio):
        s.receive_audio(np.array([0.0, np.nan], dtype="<f4").tobytes())


def test_vad_requests_chain_one_at_a_time() -> None:
    h = SessionHarness(plain_config())
    h.hold = lambda r: isinstance(r, VadRequest)
    h.feed(tone_bursts([(440, 2.0)]).audio)
    assert len([r for r in h.sent if isinstance(r, VadRequest)]) == 1
    h.release()  # FakeVad raises if a request does not continue the previous one's state
    vads = [r for r in h.sent if isinstance(r, VadRequest)]
    assert all(b.start == a.start + len(a.audio) and b.state == b.start for a, b in zip(vads, vads[1:]))


# --------------------------------------------------------------------------------------------- diarization hook
