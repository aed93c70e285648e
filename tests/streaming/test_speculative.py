"""streaming/session.py: speculative finals (``SessionConfig.speculative_finals``) with fake models.

A final's request goes out once a pause has lasted ``speech_pad``; the VAD closing the utterance there makes it the
final; speech resuming makes its result a partial, charged to the partial budget.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from streaming import wire
from streaming.config import PartialOptions, SessionConfig, VadOptions, ms
from streaming.partials import PartialPolicy
from streaming.work import AsrKind, AsrRequest
from streaming.wire import WordTiming
from tests.fakes import SessionHarness, events_of, tone_bursts
from tests.streaming.test_partials import windowed

VAD = VadOptions()
# pauses below speech_pad, between speech_pad and min_silence (speech resumes), and beyond min_silence (a close)
GAPS = [0.05, 0.3, 0.8, 0.2, 0.35, 1.0, 0.12, 0.6]


def bursts() -> np.ndarray:
    return tone_bursts([(300 + 60 * k, 0.4 + 0.1 * (k % 4)) for k in range(len(GAPS) + 1)], gaps=GAPS,
                       lead=0.5, tail=1.0).audio


def run(cfg: SessionConfig, asr_late: bool) -> SessionHarness:
    """Stream ``bursts()`` in 20 ms messages; ``asr_late``: every ASR result arrives only at the end."""
    h = SessionHarness(cfg)
    if asr_late:
        h.hold = lambda r: isinstance(r, AsrRequest)
    h.feed(bursts(), chunk=0.02)
    h.release()
    h.end()
    return h


def answered_finals(h: SessionHarness) -> list[tuple[int, bytes]]:
    """(start, audio bytes) of the request that answered each final: the last final request of its utterance."""
    last = {r.utterance_id: r for r in h.asr.requests if r.kind == AsrKind.FINAL}
    return [(r.start, r.audio.tobytes()) for _, r in sorted(last.items())]


@pytest.mark.parametrize("asr_late", [False, True], ids=["asr-at-once", "asr-late"])
@pytest.mark.parametrize("partials", [PartialOptions(enabled=False), windowed(budget_ratio=1.0),
                                      windowed(budget_ratio=1.5)], ids=["no-partials", "budget-1.0", "budget-1.5"])
def test_finals_do_not_depend_on_speculation(partials: PartialOptions, asr_late: bool) -> None:
    """Byte for byte: the same final events and the same final requests (samples and offsets) with it off and on."""
    off = run(SessionConfig(diarization=False, partials=partials, speculative_finals=False), asr_late)
    on = run(SessionConfig(diarization=False, partials=partials, speculative_finals=True), asr_late)
    finals_off, finals_on = events_of(off.events, wire.Final), events_of(on.events, wire.Final)
    assert finals_on == finals_off and len(finals_off) == 4
    assert answered_finals(on) == answered_finals(off)
    assert off.session.stats.finals_speculated == 0 and off.asr.calls[AsrKind.FINAL] == 4
    stats = on.session.stats
    assert stats.finals_speculated == 4  # every close followed a pause longer than speech_pad
    assert stats.speculations_missed == 3  # the 0.3, 0.2 and 0.35 s pauses ended in speech
    assert on.asr.calls[AsrKind.FINAL] == 4 + 3
    assert isinstance(on.events[-1], wire.End) and on.events[-1] == off.events[-1]


def test_the_final_request_goes_out_while_the_vad_waits() -> None:
    b = tone_bursts([(440, 1.0)], lead=0.5, tail=1.0)
    (a, z), = b.spans
    h = SessionHarness(SessionConfig(diarization=False, interim_results=False))
    h.hold = lambda r: isinstance(r, AsrRequest)
    h.feed(b.audio[:z + ms(250)], chunk=0.02)  # a pause longer than speech_pad, shorter than min_silence
    (request,) = [r for r in h.sent if isinstance(r, AsrRequest)]
    assert request.kind == AsrKind.FINAL and events_of(h.events, wire.Final) == []
    h.release()  # the result is back before the VAD decides: nothing goes out yet
    assert events_of(h.events, wire.Final) == []
    h.feed(b.audio[z + ms(250):], chunk=0.02)
    (final,) = events_of(h.events, wire.Final)
    assert [r for r in h.sent if isinstance(r, AsrRequest)] == [request]  # the close sent no other request
    assert (final.start, final.end) == (request.start, request.start + len(request.audio)) and final.text == "w440"
    assert z <= final.end <= z + VAD.speech_pad + 512


def test_a_speculation_whose_pause_ends_in_speech_becomes_a_partial() -> None:
    b = tone_bursts([(440, 1.0), (660, 1.0)], gaps=0.3, lead=0.5, tail=1.0)
    (a1, z1), (a2, z2) = b.spans
    cfg = SessionConfig(diarization=False, partials=windowed(cadence=ms(3_000), cadence_growth=0.0))
    h = SessionHarness(cfg)
    h.feed(b.audio[:a2 + ms(200)], chunk=0.02)  # the pause (its speculation answered at once), then speech again
    speculative = [r for r in h.sent if isinstance(r, AsrRequest) and r.kind == AsrKind.FINAL]
    assert len(speculative) == 1 and h.session.stats.speculations_missed == 1
    spec_end = speculative[0].start + len(speculative[0].audio)
    partials = [p for p in events_of(h.events, wire.Partial) if p.end == spec_end]
    assert len(partials) == 1 and partials[0].text == "w440"
    assert h.session.withdrawn_work() == [] and h.session.stats.speculations_withdrawn == 0
    h.feed(b.audio[a2 + ms(200):], chunk=0.02)
    h.end()
    (final,) = events_of(h.events, wire.Final)
    assert final.text == "w440 w660" and final.utterance_id == partials[0].utterance_id
    assert h.session.stats.finals_speculated == 1


def test_a_speculation_still_in_flight_when_speech_resumes_is_withdrawn() -> None:
    """Its result would only be a late partial: the caller may cancel it (it must not hold the finals' lane), partials
    of the new speech go out without waiting for it, and if its result comes anyway it is dropped."""
    b = tone_bursts([(440, 1.0), (660, 1.5)], gaps=0.3, lead=0.5, tail=1.0)
    (a1, z1), (a2, z2) = b.spans
    h = SessionHarness(SessionConfig(diarization=False))
    h.hold = lambda r: isinstance(r, AsrRequest) and r.kind == AsrKind.FINAL
    h.feed(b.audio[:a2 + ms(200)], chunk=0.02)
    (spec,) = [r for r in h.sent if isinstance(r, AsrRequest) and r.kind == AsrKind.FINAL]
    assert h.session.withdrawn_work() == [spec.seq] and h.session.withdrawn_work() == []  # handed over once
    assert h.session.stats.speculations_missed == 1 and h.session.stats.speculations_withdrawn == 1
    spec_end = spec.start + len(spec.audio)
    h.feed(b.audio[a2 + ms(200):z2], chunk=0.02)
    assert any(isinstance(r, AsrRequest) and r.kind == AsrKind.PARTIAL and r.start + len(r.audio) > a2 + ms(200)
               for r in h.sent)  # partials resumed with the speculation still held
    h.hold = lambda r: isinstance(r, AsrRequest) and r.kind == AsrKind.FINAL and r.seq != spec.seq
    h.pump()  # the withdrawn request's result comes anyway: dropped
    assert h.session.stats.results_dropped == 1 and not [p for p in events_of(h.events, wire.Partial) if p.end == spec_end]
    h.release()
    h.feed(b.audio[z2:], chunk=0.02)
    h.end()
    (final,) = events_of(h.events, wire.Final)
    assert final.text == "w440 w660" and isinstance(h.events[-1], wire.End)


def test_a_missed_speculation_counts_against_the_partial_budget() -> None:
    policy = PartialPolicy(windowed(budget_ratio=1.5), 0)
    words = [WordTiming("w440", ms(100), ms(900))]
    policy.start((0, ms(1_000)))
    policy.on_result(words)
    assert policy.adopt((0, ms(1_200)), words, "w440") == "w440"  # taken as the latest decode
    assert policy.encoded == ms(2_200) and policy.decodes == 2
    assert policy.due(ms(3_000)) is None  # the window (0, 3 s) does not fit 1.5 x 3 s with 2.2 s spent
    window = policy.due(ms(4_300))
    assert window == (ms(300), ms(4_300))  # max_window: 4 s
    policy.start(window)
    assert policy.adopt((0, ms(4_000)), words, "w440") is None  # a decode of its own is in flight: only charged
    assert policy.encoded == ms(2_200) + ms(4_000) + ms(4_000)


def test_no_speculation_while_the_session_is_behind() -> None:
    cfg = SessionConfig(diarization=False, interim_results=False,
                        partials=windowed(max_pending_requests=1))
    audio = tone_bursts([(300 + 60 * k, 0.5) for k in range(6)], gaps=[0.3, 0.8] * 2 + [0.3], tail=1.0).audio
    h = SessionHarness(dataclasses.replace(cfg, speculative_finals=True))
    h.hold = lambda r: isinstance(r, AsrRequest)  # finals pile up: the channel is behind
    h.feed(audio, chunk=0.02)
    sent = [r for r in h.sent if isinstance(r, AsrRequest)]
    h.release()
    h.end()
    finals = events_of(h.events, wire.Final)
    assert len(finals) == 3 and len(sent) < 3 + 3  # some pauses were not speculated on


def test_while_the_models_are_behind_partials_and_speculation_wait_and_finals_do_not() -> None:
    cfg = SessionConfig(diarization=False)
    normal, shed = SessionHarness(cfg), SessionHarness(cfg)
    shed.session.models_behind = True  # the server: GigaAM's queue waited longer than shed_partials_wait
    for h in (normal, shed):
        h.feed(bursts(), chunk=0.02)
        h.end()
    kinds = lambda h: [r.kind for r in h.sent if isinstance(r, AsrRequest)]  # noqa: E731
    assert kinds(shed) == [AsrKind.FINAL] * 4 and AsrKind.PARTIAL in kinds(normal)
    assert events_of(shed.events, wire.Final) == events_of(normal.events, wire.Final)
    assert shed.session.stats.partials_dropped > 0 and events_of(shed.events, wire.Partial) == []
    assert any(isinstance(e, wire.Warning) and e.code == "partials_dropped" for e in shed.events)


def test_a_diarization_backlog_holds_back_partials_but_not_speculative_finals() -> None:
    """Diarization lagging (its requests piling up in flight) skips partials; a speculative final is the final
    early and finals do not wait for diarization, so it still goes out at the pause (a final backlog stops it)."""
    fakes = pytest.importorskip("tests.fakes_diarization")
    cfg = SessionConfig(diarization=True, partials=windowed(max_pending_requests=2))
    h = SessionHarness(cfg, extra={fakes.SegmentationRequest: fakes.FakeSegmentation(),
                            fakes.EmbeddingRequest: fakes.FakeEmbedding()})
    h.hold = lambda r: isinstance(r, (fakes.SegmentationRequest, fakes.EmbeddingRequest))  # diarization stalls
    h.feed(bursts(), chunk=0.02)
    assert sum(1 for r in h.held if isinstance(r, fakes.SegmentationRequest)) > 2  # the backlog is there
    kinds = [r.kind for r in h.sent if isinstance(r, AsrRequest)]
    stats = h.session.stats
    assert stats.finals_speculated == 4 and stats.speculations_missed == 3 and kinds.count(AsrKind.FINAL) == 4 + 3
    assert stats.partials_dropped > 0 and AsrKind.PARTIAL not in kinds[2:]  # partials stopped once it built up
    h.release()
    h.end()
    assert [f.text for f in events_of(h.events, wire.Final)] == [f.text for f in events_of(run(
        SessionConfig(diarization=False, speculative_finals=False), asr_late=False).events, wire.Final)]
