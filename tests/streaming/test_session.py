"""streaming/session.py: the Session API end to end with fake models (tone bursts → tone words)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np
import pytest
import soxr

from server.offline import drive_session, run_requests_by_kind
from streaming import wire
from streaming.audio import MULAW_TABLE
from streaming.config import AudioFormat, PartialOptions, SessionConfig, VadOptions, ms
from streaming.errors import InvalidAudio, InvalidState, UnsupportedFormat
from streaming.session import Session, SessionState
from streaming.work import (AsrKind, AsrRequest, AsrResult, Request, SegmentationRequest, SegmentationResult,
                            VadRequest, VadResult)
from tests.fakes import FakeAsr, FakeVad, pcm16, seconds, tone_bursts

PAD = VadOptions().speech_pad
SLACK = PAD + 512 + 2 * 160  # padding, one VAD chunk, two fake-ASR frames


def config(**kwargs: object) -> SessionConfig:
    return SessionConfig(diarization=False, **kwargs)  # type: ignore[arg-type]


def of(events: list, kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


class Harness:
    """A session with fake models; requests matching ``hold`` wait in ``held`` until released."""

    def __init__(self, cfg: SessionConfig, extra: Optional[dict] = None, asr: Optional[FakeAsr] = None) -> None:
        self.session = Session("s1", cfg)
        self.asr = asr or FakeAsr(record=True)
        self.run = run_requests_by_kind({VadRequest: FakeVad(), AsrRequest: self.asr, **(extra or {})})
        self.events: list[wire.ServerEvent] = []
        self.held: list[Request] = []
        self.hold: Callable[[Request], bool] = lambda r: False
        self.sent: list[Request] = []

    def pump(self) -> None:
        while True:
            work = self.session.work_to_run()
            self.sent += work
            self.events += self.session.events_to_send()
            work = self.held + work
            self.held = [r for r in work if self.hold(r)]
            now = [r for r in work if not self.hold(r)]
            if not now:
                return
            for result in self.run(now):
                self.session.receive_result(result)

    def feed(self, audio: np.ndarray, chunk: float = 0.1) -> None:
        data, step = pcm16(audio), 2 * seconds(chunk)
        for a in range(0, len(data), step):
            self.session.receive_audio(data[a:a + step])
            self.pump()

    def release(self) -> None:
        self.hold = lambda r: False
        self.pump()

    def end(self) -> None:
        self.session.receive_end()
        self.pump()


def run_whole(audio: np.ndarray, cfg: SessionConfig, chunk_bytes: int = 3200) -> tuple[list, FakeAsr]:
    asr = FakeAsr(record=True)
    events = drive_session(Session("s1", cfg), run_requests_by_kind({VadRequest: FakeVad(), AsrRequest: asr}),
                           pcm16(audio), chunk_bytes=chunk_bytes)
    return events, asr


# --------------------------------------------------------------------------------------------- finals
def test_each_utterance_gets_one_final_over_its_samples_with_absolute_words() -> None:
    b = tone_bursts([(440, 1.0), (660, 0.8), (880, 1.2)], gaps=1.0)
    events, asr = run_whole(b.audio, config(interim_results=False))
    finals = of(events, wire.Final)
    assert [f.utterance_id for f in finals] == [0, 1, 2]
    assert [f.text for f in finals] == list(b.words)
    for f, (a, z) in zip(finals, b.spans):
        assert a - SLACK <= f.start <= a and z <= f.end <= z + SLACK
        (word,) = f.words
        assert abs(word.start - a) <= 2 * 160 and abs(word.end - z) <= 2 * 160 and word.speaker is None
    requests = [r for r in asr.requests if r.kind == AsrKind.FINAL]
    assert [(r.start, r.start + len(r.audio)) for r in requests] == [(f.start, f.end) for f in finals]
    assert events[-1] == wire.End(len(b.audio), 3, (), len(b.audio), 0)
    assert of(events, wire.Partial) == [] and asr.calls[AsrKind.PARTIAL] == 0


def test_unaligned_message_sizes_give_the_same_finals() -> None:
    b = tone_bursts([(500, 0.7), (700, 0.9)], gaps=0.8)
    whole, _ = run_whole(b.audio, config(), chunk_bytes=32_000)
    odd, _ = run_whole(b.audio, config(), chunk_bytes=777)
    assert of(whole, wire.Final) == of(odd, wire.Final) and len(of(odd, wire.Final)) == 2


def test_other_encodings_rates_and_downmix() -> None:
    b = tone_bursts([(440, 0.8), (660, 0.8)], gaps=0.8)
    at8k = soxr.resample(b.audio, 16000, 8000)
    mulaw = np.abs(at8k[:, None] - MULAW_TABLE[None, :]).argmin(axis=1).astype(np.uint8).tobytes()
    cfg = config(audio=AudioFormat("mulaw", 8000, 1))
    events = drive_session(Session("s", cfg), run_requests_by_kind({VadRequest: FakeVad(), AsrRequest: FakeAsr()}),
                           mulaw, chunk_bytes=333)
    assert [f.text for f in of(events, wire.Final)] == list(b.words)
    stereo = np.stack([b.audio, np.zeros_like(b.audio)], axis=1).reshape(-1)  # right channel silent
    cfg = config(audio=AudioFormat("pcm_s16le", 16000, 2))
    events = drive_session(Session("s", cfg), run_requests_by_kind({VadRequest: FakeVad(), AsrRequest: FakeAsr()}),
                           pcm16(stereo), chunk_bytes=1000)
    finals = of(events, wire.Final)
    assert [(f.text, f.channel) for f in finals] == [(w, 0) for w in b.words]


def test_multichannel_transcribes_each_channel_with_its_label() -> None:
    left = tone_bursts([(440, 1.0)], lead=0.3, tail=2.0)
    right = tone_bursts([(660, 1.0)], lead=1.5, tail=0.8)
    stereo = np.stack([left.audio, right.audio], axis=1).reshape(-1)
    cfg = config(multichannel=True, audio=AudioFormat("pcm_s16le", 16000, 2))
    events = drive_session(Session("s", cfg), run_requests_by_kind({VadRequest: FakeVad(), AsrRequest: FakeAsr()}),
                           pcm16(stereo))
    finals = of(events, wire.Final)
    assert sorted((f.channel, f.speaker, f.text) for f in finals) == [(0, "ch0", "w440"), (1, "ch1", "w660")]
    ids = [e.utterance_id for e in events if isinstance(e, (wire.Partial, wire.Final))]
    first_seen = list(dict.fromkeys(ids))
    assert first_seen == sorted(first_seen) == [0, 1]  # ids increase in the order they are first used
    assert events[-1] == wire.End(len(left.audio), 2, ("ch0", "ch1"), len(left.audio), 0)


def test_finalize_closes_the_utterance_at_the_audio_received() -> None:
    b = tone_bursts([(440, 3.0)], lead=0.5, tail=1.0)
    h = Harness(config(interim_results=False))
    split = seconds(2.0)
    h.feed(b.audio[:split])
    h.session.receive_finalize()
    h.pump()
    (first,) = of(h.events, wire.Final)
    assert first.end == split and first.text == "w440"
    h.feed(b.audio[split:])
    h.end()
    second = of(h.events, wire.Final)[1]
    assert second.start >= first.end and second.end >= b.spans[0][1] and second.text == "w440"


def test_utterances_over_max_length_are_cut_without_losing_audio() -> None:
    b = tone_bursts([(440, 12.0)], lead=0.5, tail=1.0)
    cfg = config(vad=VadOptions(max_utterance=ms(5_000), cut_search=ms(1_000)), interim_results=False)
    finals = of(run_whole(b.audio, cfg)[0], wire.Final)
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
    events, asr = run_whole(b.audio, config(partials=PartialOptions(budget_ratio=1.5), speculative_finals=False))
    (final,) = of(events, wire.Final)
    partials = of(events, wire.Partial)
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
    events, asr = run_whole(long_utterance(8).audio, config(interim_results=False))
    assert of(events, wire.Partial) == [] and asr.calls[AsrKind.PARTIAL] == 0
    assert len(of(events, wire.Final)) == 1


def test_one_partial_in_flight_and_late_partials_are_dropped() -> None:
    b = long_utterance(10)
    h = Harness(config())
    h.hold = lambda r: isinstance(r, AsrRequest) and r.kind == AsrKind.PARTIAL
    h.feed(b.audio)
    partial_requests = [r for r in h.sent if isinstance(r, AsrRequest) and r.kind == AsrKind.PARTIAL]
    assert len(partial_requests) == 1  # the first never came back, so no second one was sent
    assert len(of(h.events, wire.Final)) == 1  # the utterance closed while it was in flight
    h.release()
    assert h.session.stats.results_dropped == 1 and of(h.events, wire.Partial) == []


def test_results_that_match_no_request_are_dropped_and_counted() -> None:
    h = Harness(config())
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
    h = Harness(config())
    h.feed(b.audio[:seconds(1.0)])
    h.hold = lambda r: isinstance(r, VadRequest)  # the VAD stalls for 8 s of audio, then catches up
    h.feed(b.audio[seconds(1.0):seconds(9.0)])
    assert h.session.stats.lag >= ms(7_000)
    h.release()
    h.feed(b.audio[seconds(9.0):])
    h.end()
    stats = h.session.stats
    warnings = [w.code for w in of(h.events, wire.Warning)]
    assert stats.partials_dropped >= 1 and warnings == ["partials_dropped"] and stats.audio_dropped == 0
    (final,) = of(h.events, wire.Final)
    assert final.text == " ".join(b.words)


def test_partials_are_skipped_while_many_requests_are_pending() -> None:
    b = tone_bursts([(440, 0.5), (550, 0.5), (660, 0.5), (770, 3.0)], gaps=0.8)
    h = Harness(config(partials=PartialOptions(max_pending_requests=2)))
    h.hold = lambda r: isinstance(r, AsrRequest) and r.kind == AsrKind.FINAL
    h.feed(b.audio)
    last_start = b.spans[3][0] - PAD - 512
    late = [r for r in h.sent if isinstance(r, AsrRequest) and r.kind == AsrKind.PARTIAL and r.start >= last_start]
    assert h.session.stats.partials_dropped >= 4 and late == []  # 3 finals pending: no partial decodes
    h.end()
    h.release()
    assert [f.text for f in of(h.events, wire.Final)] == list(b.words)


def test_audio_beyond_max_pending_is_dropped_oldest_first_with_a_warning() -> None:
    b = long_utterance(40)
    h = Harness(config(max_pending_audio=ms(4_000)))
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
    dropped = [w for w in of(h.events, wire.Warning) if w.code == "audio_dropped"]
    assert dropped and sum(w.dropped_seconds for w in dropped) == pytest.approx(stats.audio_dropped / 16000)
    assert ms(9_000) - ms(4_000) - stalled_end <= stats.audio_dropped <= ms(9_000) - ms(3_600) - stalled_end
    finals = of(h.events, wire.Final)
    assert len(finals) == 2 and finals[0].end <= stalled_end < finals[1].start  # the gap closed the first one
    ids = {e.utterance_id for e in h.events if isinstance(e, (wire.Partial, wire.Final))}
    assert {f.utterance_id for f in finals} == ids  # every utterance got its final
    assert h.events[-1] == wire.End(len(b.audio), 2, (), len(b.audio) - stats.audio_dropped, stats.audio_dropped)


def test_buffers_stay_bounded_on_a_long_stream() -> None:
    tones = [(400 + 20 * (k % 10), 0.6) for k in range(60)]
    b = tone_bursts(tones, gaps=0.9)
    h = Harness(config())
    retained = []
    data = pcm16(b.audio)
    for a in range(0, len(data), 16_000):
        h.session.receive_audio(data[a:a + 16_000])
        h.pump()
        retained.append(len(h.session._channels[0].buffer))
    h.end()
    assert len(of(h.events, wire.Final)) == 60
    assert max(retained) <= ms(600) + 2 * PAD + VadOptions().min_silence + ms(500) + 1024


# --------------------------------------------------------------------------------------------- lifecycle
def test_lifecycle_and_end_after_the_last_final() -> None:
    b = tone_bursts([(440, 0.8)], tail=0.2)
    h = Harness(config(interim_results=False))
    h.hold = lambda r: isinstance(r, AsrRequest)
    h.feed(b.audio)
    assert h.session.state == SessionState.OPEN
    h.end()
    assert h.session.state == SessionState.ENDING and of(h.events, wire.End) == []
    for call in (lambda: h.session.receive_audio(b"\0\0"), h.session.receive_finalize, h.session.receive_end):
        with pytest.raises(InvalidState):
            call()
    h.release()
    assert h.session.state == SessionState.CLOSED
    assert [type(e) for e in h.events] == [wire.SpeechStarted, wire.Final, wire.End]
    h.session.receive_result(AsrResult("s1", 1, "late"))
    assert h.session.stats.results_dropped == 1 and h.session.events_to_send() == []


def test_a_stream_without_speech_ends_with_no_utterances() -> None:
    events, asr = run_whole(np.zeros(seconds(1.3), dtype=np.float32), config())
    assert events == [wire.End(seconds(1.3), 0, (), seconds(1.3), 0)] and asr.requests == []
    s = Session("s1", config())
    s.receive_end()
    assert s.events_to_send() == [wire.End(0, 0, (), 0, 0)] and s.state == SessionState.CLOSED


def test_finalize_in_silence_or_twice_does_nothing_more() -> None:
    b = tone_bursts([(440, 0.8)], lead=0.5, tail=1.0)
    h = Harness(config(interim_results=False))
    h.feed(b.audio[:seconds(0.3)])
    h.session.receive_finalize()  # nothing open
    h.feed(b.audio[seconds(0.3):])
    h.session.receive_finalize()
    h.session.receive_finalize()
    h.end()
    assert [f.text for f in of(h.events, wire.Final)] == ["w440"]


def test_bad_formats_and_audio_raise_the_protocol_errors() -> None:
    with pytest.raises(UnsupportedFormat):
        Session("s", config(audio=AudioFormat("opus")))
    s = Session("s", config(audio=AudioFormat("pcm_f32le")))
    with pytest.raises(InvalidAudio):
        s.receive_audio(np.array([0.0, np.nan], dtype="<f4").tobytes())


def test_vad_requests_chain_one_at_a_time() -> None:
    h = Harness(config())
    h.hold = lambda r: isinstance(r, VadRequest)
    h.feed(tone_bursts([(440, 2.0)]).audio)
    assert len([r for r in h.sent if isinstance(r, VadRequest)]) == 1
    h.release()  # FakeVad raises if a request does not continue the previous one's state
    vads = [r for r in h.sent if isinstance(r, VadRequest)]
    assert all(b.start == a.start + len(a.audio) and b.state == b.start for a, b in zip(vads, vads[1:]))


# --------------------------------------------------------------------------------------------- diarization hook
class ScriptedDiarizer:
    """Stands in for StreamingDiarizer: a segmentation request per second of audio; speakers from a script;
    turns become final ``latency`` behind the newest resolved window."""

    script: list[tuple[str, int, int]] = []
    merge: Optional[tuple[int, str, str]] = None  # (at, merged, into): popped once final_until reaches ``at``
    instances: list["ScriptedDiarizer"] = []

    def __init__(self, options, session_id: str, channel: int, next_seq: Callable[[], int]) -> None:
        self.session_id, self.channel, self.next_seq = session_id, channel, next_seq
        self.final_until, self.windows, self.pending = 0, 0, set()
        self.finished, self.latency, self.popped = 0, ms(1_500), 0
        ScriptedDiarizer.instances.append(self)

    def on_audio(self, buffer) -> list[Request]:
        out: list[Request] = []
        while (self.windows + 1) * ms(1_000) <= buffer.end:
            out.append(self._window((self.windows + 1) * ms(1_000), buffer))
        return out

    def _window(self, end: int, buffer) -> Request:
        self.windows += 1
        seq = self.next_seq()
        self.pending.add(seq)
        return SegmentationRequest(self.session_id, seq, self.channel, end, np.zeros(1, np.float32))

    def finish(self, buffer) -> list[Request]:
        self.finished += 1
        self.latency = 0
        return [self._window(buffer.end, buffer)]

    def owns(self, seq: int) -> bool:
        return seq in self.pending

    def on_result(self, result, buffer) -> list[Request]:
        self.pending.discard(result.seq)
        self.final_until = max(self.final_until, result.scores.shape[0] - self.latency)
        return []

    @property
    def idle(self) -> bool:
        return not self.pending

    @property
    def oldest_needed(self) -> int:
        return self.windows * ms(1_000) - ms(5_000)

    def speaker_for(self, start: int, end: int) -> Optional[str]:
        overlap = {s: min(b, end) - max(a, start) for s, a, b in self.script if min(b, end) > max(a, start)}
        return max(overlap, key=overlap.__getitem__) if overlap else None

    def pop_final_turns(self) -> list[wire.Turn]:
        turns = [wire.Turn(s, a, b) for s, a, b in self.script if self.popped < b <= self.final_until]
        self.popped = max(self.popped, self.final_until)
        return turns

    def pop_merges(self) -> list[wire.SpeakerMerge]:
        if self.merge is None or self.final_until < self.merge[0]:
            return []
        (at, merged, into), self.merge = self.merge, None
        ScriptedDiarizer.script = [(into if s == merged else s, a, b) for s, a, b in self.script]
        return [wire.SpeakerMerge(self.channel, merged, into, at)]

    @property
    def speakers(self) -> tuple[str, ...]:
        return tuple(sorted({s for s, a, b in self.script if b <= self.final_until}))


def segment(requests: list[Request]) -> list[SegmentationResult]:
    """The window end, smuggled in the score shape so the scripted diarizer knows what became final."""
    return [SegmentationResult(r.session_id, r.seq, np.zeros((r.start, 0)), 320.0, 640.0) for r in requests]


def test_the_diarizer_hook_delays_finals_splits_them_and_reports_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    import streaming.diarization

    b = tone_bursts([(440, 1.0), (660, 1.0), (880, 0.8)], gaps=[0.2, 1.2], lead=0.5, tail=0.3)
    (a1, z1), (a2, z2), (a3, z3) = b.spans
    ScriptedDiarizer.script = [("S1", 0, (z1 + a2) // 2), ("S2", (z1 + a2) // 2, z2 + ms(600)), ("S1", a3 - ms(300),
                                                                                              len(b.audio))]
    ScriptedDiarizer.instances, ScriptedDiarizer.merge = [], None
    monkeypatch.setattr(streaming.diarization, "StreamingDiarizer", ScriptedDiarizer)
    cfg = dataclasses.replace(config(interim_results=False, speculative_finals=False), diarization=True,
                              speaker_turns=True, settled_speakers=True)  # one final decode per utterance
    h = Harness(cfg, extra={SegmentationRequest: segment})
    h.feed(b.audio[:z2 + ms(1_600)])  # the first utterance ended; its speakers are not final yet
    assert of(h.events, wire.Final) == [] and h.asr.calls[AsrKind.FINAL] == 1
    h.feed(b.audio[z2 + ms(1_600):])
    h.end()
    (diarizer,) = ScriptedDiarizer.instances
    assert diarizer.finished == 1
    finals = of(h.events, wire.Final)
    assert [(f.utterance_id, f.speaker, f.text) for f in finals] == [(0, "S1", "w440"), (1, "S2", "w660"),
                                                                     (2, "S1", "w880")]
    assert finals[0].end == finals[1].start and finals[0].words[0].speaker == "S1"
    turns = [t for e in of(h.events, wire.SpeakerTurns) for t in e.turns]
    assert [t.speaker for t in turns] == ["S1", "S2", "S1"]
    assert h.events[-1] == wire.End(len(b.audio), 3, ("S1", "S2"), len(b.audio), 0)


def test_finals_go_out_before_diarization_settles_and_a_revision_follows(monkeypatch: pytest.MonkeyPatch) -> None:
    import streaming.diarization

    b = tone_bursts([(440, 1.0), (660, 1.0)], gaps=[1.2], lead=0.5, tail=0.3)
    (a1, z1), (a2, z2) = b.spans
    ScriptedDiarizer.script = [("S1", 0, len(b.audio))]
    ScriptedDiarizer.instances, ScriptedDiarizer.merge = [], None
    monkeypatch.setattr(streaming.diarization, "StreamingDiarizer", ScriptedDiarizer)
    cfg = dataclasses.replace(config(interim_results=False), diarization=True)
    h = Harness(cfg, extra={SegmentationRequest: segment})
    h.feed(b.audio[:z1 + ms(800)])  # the first utterance ended; diarization is not final up to its end
    (diarizer,) = ScriptedDiarizer.instances
    (first,) = of(h.events, wire.Final)
    assert diarizer.final_until < first.end and (first.utterance_id, first.speaker) == (0, "S1")
    ScriptedDiarizer.script = [("S2", 0, (z1 + a2) // 2), ("S1", (z1 + a2) // 2, len(b.audio))]
    h.feed(b.audio[z1 + ms(800):])
    h.end()
    (revision,) = of(h.events, wire.SpeakerRevision)
    assert (revision.utterance_id, revision.speaker) == (0, "S2")
    assert [w.speaker for w in revision.words] == ["S2"] * len(first.words)
    assert h.events.index(revision) < len(h.events) - 1 and isinstance(h.events[-1], wire.End)
    assert [f.speaker for f in of(h.events, wire.Final)] == ["S1", "S1"]


def test_a_speaker_merge_goes_out_before_anything_with_the_kept_label_and_causes_no_revision(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import streaming.diarization

    b = tone_bursts([(440, 1.0), (660, 1.0), (880, 1.0)], gaps=[1.2, 1.2], lead=0.5, tail=0.3)
    (a1, z1), (a2, z2), (a3, z3) = b.spans
    ScriptedDiarizer.script = [("S1", 0, (z1 + a2) // 2), ("S2", (z1 + a2) // 2, len(b.audio))]
    ScriptedDiarizer.instances, ScriptedDiarizer.merge = [], (z2 + ms(100), "S2", "S1")
    monkeypatch.setattr(streaming.diarization, "StreamingDiarizer", ScriptedDiarizer)
    cfg = dataclasses.replace(config(interim_results=False), diarization=True, speaker_turns=True)
    h = Harness(cfg, extra={SegmentationRequest: segment})
    h.feed(b.audio, chunk=0.25)
    h.end()
    (merge,) = of(h.events, wire.SpeakerMerge)
    assert (merge.channel, merge.merged, merge.into, merge.at) == (0, "S2", "S1", z2 + ms(100))
    cut = h.events.index(merge)
    sent_before = [f.speaker for f in of(h.events[:cut], wire.Final)]
    assert "S2" in sent_before  # the second utterance's final went out as S2 ...

    def labels(event: wire.ServerEvent) -> set:
        if isinstance(event, (wire.Final, wire.SpeakerRevision)):
            return {event.speaker} | {w.speaker for w in event.words}
        if isinstance(event, wire.SpeakerTurns):
            return {t.speaker for t in event.turns}
        return set(getattr(event, "speakers", ()))

    assert all("S2" not in labels(e) for e in h.events[cut + 1:])  # ... nothing after the merge says S2
    assert of(h.events, wire.SpeakerRevision) == []  # the relabelled final is what diarization settled on
    assert [f.speaker for f in of(h.events[cut:], wire.Final)] == ["S1"] * (3 - len(sent_before))
    assert h.events[-1].speakers == ("S1",)


def test_real_streaming_diarizer_labels_tone_speakers() -> None:
    fakes = pytest.importorskip("tests.fakes_diarization")
    one, two = fakes.TONES[0], fakes.TONES[1]
    b = tone_bursts([(one, 2.0), (two, 2.0), (one, 2.0)], gaps=[1.0, 1.0], lead=0.5, tail=1.5)
    cfg = dataclasses.replace(config(interim_results=False), diarization=True)
    h = Harness(cfg, extra={SegmentationRequest: fakes.FakeSegmentation(),
                            fakes.EmbeddingRequest: fakes.FakeEmbedding()})
    h.feed(b.audio, chunk=0.25)
    h.end()
    finals = of(h.events, wire.Final)
    assert [f.text for f in finals] == list(b.words)
    assert finals[0].speaker is not None and finals[0].speaker == finals[2].speaker != finals[1].speaker
    assert set(h.events[-1].speakers) == {finals[0].speaker, finals[1].speaker}
