"""streaming/session.py with a diarizer: finals held or revised, speaker merges, turns (scripted and real tracker)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np
import pytest

from streaming import wire
from streaming.config import ms
from streaming.work import AsrKind, Request, SegmentationRequest, SegmentationResult
from tests.fakes import SessionHarness, events_of, plain_config, tone_bursts


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
    cfg = dataclasses.replace(plain_config(interim_results=False, speculative_finals=False), diarization=True,
                              speaker_turns=True, settled_speakers=True)  # one final decode per utterance
    h = SessionHarness(cfg, extra={SegmentationRequest: segment})
    h.feed(b.audio[:z2 + ms(1_600)])  # the first utterance ended; its speakers are not final yet
    assert events_of(h.events, wire.Final) == [] and h.asr.calls[AsrKind.FINAL] == 1
    h.feed(b.audio[z2 + ms(1_600):])
    h.end()
    (diarizer,) = ScriptedDiarizer.instances
    assert diarizer.finished == 1
    finals = events_of(h.events, wire.Final)
    assert [(f.utterance_id, f.speaker, f.text) for f in finals] == [(0, "S1", "w440"), (1, "S2", "w660"),
                                                                     (2, "S1", "w880")]
    assert finals[0].end == finals[1].start and finals[0].words[0].speaker == "S1"
    turns = [t for e in events_of(h.events, wire.SpeakerTurns) for t in e.turns]
    assert [t.speaker for t in turns] == ["S1", "S2", "S1"]
    assert h.events[-1] == wire.End(len(b.audio), 3, ("S1", "S2"), len(b.audio), 0)


def test_finals_go_out_before_diarization_settles_and_a_revision_follows(monkeypatch: pytest.MonkeyPatch) -> None:
    import streaming.diarization

    b = tone_bursts([(440, 1.0), (660, 1.0)], gaps=[1.2], lead=0.5, tail=0.3)
    (a1, z1), (a2, z2) = b.spans
    ScriptedDiarizer.script = [("S1", 0, len(b.audio))]
    ScriptedDiarizer.instances, ScriptedDiarizer.merge = [], None
    monkeypatch.setattr(streaming.diarization, "StreamingDiarizer", ScriptedDiarizer)
    cfg = dataclasses.replace(plain_config(interim_results=False), diarization=True)
    h = SessionHarness(cfg, extra={SegmentationRequest: segment})
    h.feed(b.audio[:z1 + ms(800)])  # the first utterance ended; diarization is not final up to its end
    (diarizer,) = ScriptedDiarizer.instances
    (first,) = events_of(h.events, wire.Final)
    assert diarizer.final_until < first.end and (first.utterance_id, first.speaker) == (0, "S1")
    ScriptedDiarizer.script = [("S2", 0, (z1 + a2) // 2), ("S1", (z1 + a2) // 2, len(b.audio))]
    h.feed(b.audio[z1 + ms(800):])
    h.end()
    (revision,) = events_of(h.events, wire.SpeakerRevision)
    assert (revision.utterance_id, revision.speaker) == (0, "S2")
    assert [w.speaker for w in revision.words] == ["S2"] * len(first.words)
    assert h.events.index(revision) < len(h.events) - 1 and isinstance(h.events[-1], wire.End)
    assert [f.speaker for f in events_of(h.events, wire.Final)] == ["S1", "S1"]


def test_a_speaker_merge_goes_out_before_anything_with_the_kept_label_and_causes_no_revision(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import streaming.diarization

    b = tone_bursts([(440, 1.0), (660, 1.0), (880, 1.0)], gaps=[1.2, 1.2], lead=0.5, tail=0.3)
    (a1, z1), (a2, z2), (a3, z3) = b.spans
    ScriptedDiarizer.script = [("S1", 0, (z1 + a2) // 2), ("S2", (z1 + a2) // 2, len(b.audio))]
    ScriptedDiarizer.instances, ScriptedDiarizer.merge = [], (z2 + ms(100), "S2", "S1")
    monkeypatch.setattr(streaming.diarization, "StreamingDiarizer", ScriptedDiarizer)
    cfg = dataclasses.replace(plain_config(interim_results=False), diarization=True, speaker_turns=True)
    h = SessionHarness(cfg, extra={SegmentationRequest: segment})
    h.feed(b.audio, chunk=0.25)
    h.end()
    (merge,) = events_of(h.events, wire.SpeakerMerge)
    assert (merge.channel, merge.merged, merge.into, merge.at) == (0, "S2", "S1", z2 + ms(100))
    cut = h.events.index(merge)
    sent_before = [f.speaker for f in events_of(h.events[:cut], wire.Final)]
    assert "S2" in sent_before  # the second utterance's final went out as S2 ...

    def labels(event: wire.ServerEvent) -> set:
        if isinstance(event, (wire.Final, wire.SpeakerRevision)):
            return {event.speaker} | {w.speaker for w in event.words}
        if isinstance(event, wire.SpeakerTurns):
            return {t.speaker for t in event.turns}
        return set(getattr(event, "speakers", ()))

    assert all("S2" not in labels(e) for e in h.events[cut + 1:])  # ... nothing after the merge says S2
    assert events_of(h.events, wire.SpeakerRevision) == []  # the relabelled final is what diarization settled on
    assert [f.speaker for f in events_of(h.events[cut:], wire.Final)] == ["S1"] * (3 - len(sent_before))
    assert h.events[-1].speakers == ("S1",)


def test_real_streaming_diarizer_labels_tone_speakers() -> None:
    fakes = pytest.importorskip("tests.fakes_diarization")
    one, two = fakes.TONES[0], fakes.TONES[1]
    b = tone_bursts([(one, 2.0), (two, 2.0), (one, 2.0)], gaps=[1.0, 1.0], lead=0.5, tail=1.5)
    cfg = dataclasses.replace(plain_config(interim_results=False), diarization=True)
    h = SessionHarness(cfg, extra={SegmentationRequest: fakes.FakeSegmentation(),
                            fakes.EmbeddingRequest: fakes.FakeEmbedding()})
    h.feed(b.audio, chunk=0.25)
    h.end()
    finals = events_of(h.events, wire.Final)
    assert [f.text for f in finals] == list(b.words)
    assert finals[0].speaker is not None and finals[0].speaker == finals[2].speaker != finals[1].speaker
    assert set(h.events[-1].speakers) == {finals[0].speaker, finals[1].speaker}
