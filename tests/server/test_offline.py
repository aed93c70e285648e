"""server.offline.drive_whole: whole files through sessions side by side, finals batched, the live events; the
overlapped driver (models in their own threads) gives the sequential driver's batches and events."""

from __future__ import annotations

import dataclasses
import threading
from typing import Callable, Optional

import pytest

from server.offline import drive_session, drive_whole, run_requests_by_kind
from streaming import wire
from streaming.config import DiarizationOptions, SessionConfig, ms
from streaming.session import Session, SessionState
from streaming.work import AsrRequest, VadRequest
from tests.fakes import FakeAsr, FakeVad, pcm16, tone_bursts


def _finals(events: list) -> list[tuple]:
    return [(e.utterance_id, e.start, e.end, e.text) for e in events if isinstance(e, wire.Final)]


def test_whole_files_give_the_live_finals_with_finals_decoded_in_large_batches() -> None:
    config = SessionConfig(interim_results=False, diarization=False)
    files = [pcm16(tone_bursts([(300 + 40 * k, 0.6) for k in range(n)], gaps=0.7).audio) for n in (9, 4, 12)]
    live = [drive_session(Session(f"l{i}", config), run_requests_by_kind({VadRequest: FakeVad(),
                                                                        AsrRequest: FakeAsr()}), audio)
            for i, audio in enumerate(files)]
    batches: list[int] = []
    asr = FakeAsr()

    def counting_asr(requests: list) -> list:
        batches.append(len(requests))
        return asr(requests)

    sessions = [Session(f"w{i}", config) for i in range(len(files))]
    whole = drive_whole(sessions, files, run_requests_by_kind({VadRequest: FakeVad(), AsrRequest: counting_asr}),
                        chunk_bytes=2 * 16_000 * 5, asr_batch=8)
    assert [_finals(e) for e in whole] == [_finals(e) for e in live]
    assert sum(batches) == 25 and max(batches) == 8 and len(batches) <= 5  # not one call per utterance
    assert all(s.state == SessionState.CLOSED for s in sessions)
    assert all(isinstance(e[-1], wire.End) for e in whole)


def test_asr_batches_are_bounded_by_their_padded_audio_and_give_the_same_finals() -> None:
    config = SessionConfig(interim_results=False, diarization=False)
    files = [pcm16(tone_bursts([(300 + 40 * k, 0.3 + 0.2 * (k % 4)) for k in range(n)], gaps=0.7).audio)
             for n in (9, 12)]
    shapes: dict[float, list[tuple[int, int]]] = {}
    finals = {}
    for budget in (160.0, 2.5):
        asr = FakeAsr()

        def measured_asr(requests: list, budget: float = budget) -> list:
            shapes.setdefault(budget, []).append((len(requests), max(len(r.audio) for r in requests)))
            return asr(requests)

        sessions = [Session(f"w{i}", config) for i in range(len(files))]
        whole = drive_whole(sessions, files, run_requests_by_kind({VadRequest: FakeVad(), AsrRequest: measured_asr}),
                            chunk_bytes=2 * 16_000 * 5, asr_batch=8, asr_batch_seconds=budget)
        finals[budget] = [_finals(e) for e in whole]
    assert finals[2.5] == finals[160.0] and sum(n for n, _ in shapes[2.5]) == 21
    assert max(n for n, _ in shapes[160.0]) == 8  # the count bounds the batch while the audio is short
    assert max(n for n, _ in shapes[2.5]) < 8 and len(shapes[2.5]) > len(shapes[160.0])
    assert all(n == 1 or n * longest <= 2.5 * 16_000 for n, longest in shapes[2.5])


def test_finals_are_pooled_and_batched_by_length_with_less_padding_and_the_same_finals() -> None:
    config = SessionConfig(interim_results=False, diarization=False)
    lengths = [0.3, 1.9, 0.4, 1.5, 0.3, 2.1, 0.5, 1.7]
    files = [pcm16(tone_bursts([(300 + 40 * k, lengths[(k + f) % 8]) for k in range(16)], gaps=0.7).audio)
             for f in range(3)]
    padded: dict[int, int] = {}
    finals = {}
    for pool in (8, 64):  # 8: a batch as soon as asr_batch finals wait, as they came; 64: pooled, longest first
        asr, shapes = FakeAsr(), []

        def measured_asr(requests: list, shapes: list = shapes) -> list:
            shapes.append([len(r.audio) for r in requests])
            return asr(requests)

        sessions = [Session(f"w{i}", config) for i in range(len(files))]
        whole = drive_whole(sessions, files, run_requests_by_kind({VadRequest: FakeVad(), AsrRequest: measured_asr}),
                            chunk_bytes=2 * 16_000 * 5, asr_batch=8, asr_pool=pool)
        finals[pool] = [_finals(e) for e in whole]
        assert sum(len(rows) for rows in shapes) == 48
        padded[pool] = sum(len(rows) * max(rows) for rows in shapes)
    assert finals[64] == finals[8]  # every session's finals, in order, whatever order they were decoded in
    assert padded[64] < 0.8 * padded[8]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="asr_batch"):
        drive_whole([], [], lambda r: [], asr_batch=0)
    with pytest.raises(ValueError, match="asr_batch_seconds"):
        drive_whole([], [], lambda r: [], asr_batch_seconds=0)
    with pytest.raises(ValueError, match="asr_pool"):
        drive_whole([], [], lambda r: [], asr_pool=0)
    with pytest.raises(ValueError, match="diarization_lead"):
        drive_whole([], [], lambda r: [], diarization_lead=-1)
    with pytest.raises(ValueError, match="asr_lanes"):
        drive_whole([], [], lambda r: [], overlap=True, asr_lanes=0)
    assert drive_whole([], [], lambda r: []) == []
    assert drive_whole([], [], lambda r: [], overlap=True) == []


def _by_kind(events: list) -> dict[str, list]:
    kinds: dict[str, list] = {}
    for event in events:
        kinds.setdefault(type(event).__name__, []).append(event)
    return kinds


def _diarized_files() -> tuple[SessionConfig, list[bytes]]:
    """Three tone "conversations" (30-50 s, two or three voices) and a diarizing whole-file session config."""
    from tests.fakes_diarization import Speech, synthesize

    config = SessionConfig(interim_results=False, speculative_finals=False, diarization=True, speaker_turns=True,
                           diarizer=DiarizationOptions(step=ms(1000), latency=ms(1500), history=None))
    files = []
    for n, voices in ((6, 2), (9, 3), (7, 2)):
        turns = [Speech(k % voices, ms(5000 * k + 300), ms(5000 * k + 300 + 2500 + 400 * (k % 4))) for k in range(n)]
        files.append(pcm16(synthesize(turns, ms(5000 * n + 1000))))
    return config, files


def _diarized_run(record: Optional[list] = None, fail: Optional[type] = None) -> Callable:
    from streaming.work import EmbeddingRequest, SegmentationRequest
    from tests.fakes_diarization import FakeEmbedding, FakeSegmentation

    models: dict = {VadRequest: FakeVad(), AsrRequest: FakeAsr(), SegmentationRequest: FakeSegmentation(),
                    EmbeddingRequest: FakeEmbedding()}
    for kind, model in list(models.items()):
        def call(requests: list, model: Callable = model, kind: type = kind) -> list:
            if record is not None:
                record.append((kind.__name__, threading.current_thread().name,
                               tuple((r.session_id, r.start, len(r.audio)) for r in requests)))
            if kind is fail:
                raise RuntimeError(f"{kind.__name__} failed")
            return model(requests)
        models[kind] = call
    return run_requests_by_kind(models)


@pytest.mark.parametrize("asr_lanes", [1, 2])
def test_the_overlapped_driver_gives_every_model_the_same_batches_and_the_same_events(asr_lanes: int) -> None:
    """``overlap=True`` runs GigaAM (``asr_lanes`` batches at once) and diarization in their own threads beside the
    VAD; each model still gets the sequential driver's batches in its order, and each kind of event (finals, turns,
    speech starts, end) is the same list (only how kinds interleave differs)."""
    config, files = _diarized_files()
    calls: dict[bool, list] = {}
    events = {}
    for overlap in (False, True):
        calls[overlap] = []
        sessions = [Session(f"w{i}", config) for i in range(len(files))]
        lanes = {"asr_lanes": asr_lanes} if overlap else {}
        events[overlap] = drive_whole(sessions, files, _diarized_run(calls[overlap]), chunk_bytes=2 * ms(2000),
                                      asr_batch=3, asr_pool=4, overlap=overlap, diarization_lead=4.0, **lanes)
        assert all(s.state == SessionState.CLOSED for s in sessions)
    for kind in ("VadRequest", "SegmentationRequest", "EmbeddingRequest", "AsrRequest"):
        ours, theirs = ([c[2] for c in calls[o] if c[0] == kind] for o in (True, False))
        if kind == "AsrRequest" and asr_lanes > 1:  # batches decoded at once start in any order
            ours, theirs = sorted(ours), sorted(theirs)
        assert ours == theirs, kind
    threads = {c[0]: c[1] for c in calls[True]}
    assert threads["VadRequest"] == threading.current_thread().name
    assert threads["SegmentationRequest"].startswith("rechka-diar") and threads["AsrRequest"].startswith("rechka-asr")
    assert [_by_kind(e) for e in events[True]] == [_by_kind(e) for e in events[False]]
    finals = [f for e in events[True] for f in _by_kind(e)["Final"]]
    assert len(finals) == 22 and all(f.speaker for f in finals)
    assert all(len(set(e.speakers)) >= 2 for e in (_by_kind(x)["End"][0] for x in events[True]))


def test_finals_decoded_long_after_their_speech_keep_its_speakers() -> None:
    """A whole file's finals reach the sessions at its end: with the live history of turns (bounded) the early
    finals would find no speaker; the whole-file sessions keep every turn (``history=None``)."""
    config, files = _diarized_files()
    speakers = {}
    for history in (ms(10_000), None):
        bounded = dataclasses.replace(config, diarizer=dataclasses.replace(config.diarizer, history=history))
        (events,) = drive_whole([Session("w", bounded)], files[1:2], _diarized_run(), chunk_bytes=2 * ms(2000),
                                overlap=True)
        speakers[history] = [f.speaker for f in _by_kind(events)["Final"]]
    assert None in speakers[ms(10_000)] and len(speakers[None]) == 9 and None not in speakers[None]


def test_the_overlapped_driver_feeds_audio_at_most_the_lead_ahead_of_diarization() -> None:
    config, files = _diarized_files()
    lead = 6.0
    done = {"segmented": 0, "worst": 0}
    ahead = threading.Event()  # the VAD has seen audio about a lead past what diarization has segmented
    inner = _diarized_run()

    def run(requests: list) -> list:
        kind = type(requests[0])
        if kind is VadRequest:  # how far the audio is past the newest window diarization has segmented
            done["worst"] = max(done["worst"], max(r.start for r in requests) - done["segmented"])
            if done["worst"] >= ms(1000 * (lead - 1)):  # VAD requests start on whole 32 ms chunks
                ahead.set()
        results = inner(requests)
        if kind.__name__ == "SegmentationRequest":
            if "reached" not in done:  # the first batch waits until the audio is a lead ahead (the driver stops there)
                done["reached"] = ahead.wait(timeout=10)
            done["segmented"] = max(done["segmented"], max(r.start + len(r.audio) for r in requests))
        return results

    (events,) = drive_whole([Session("w", config)], files[1:2], run, chunk_bytes=2 * ms(1000), overlap=True,
                            diarization_lead=lead)
    assert isinstance(events[-1], wire.End)
    assert done["reached"] and done["worst"] <= ms(1000 * (lead + 1 + 1))  # + one chunk + the window's step


@pytest.mark.parametrize("kind", ["SegmentationRequest", "AsrRequest"])
def test_a_failed_batch_in_a_lane_fails_the_whole_run(kind: str) -> None:
    from streaming import work

    config, files = _diarized_files()
    with pytest.raises(RuntimeError, match=f"{kind} failed"):
        drive_whole([Session("w", config)], files[:1], _diarized_run(fail=getattr(work, kind)),
                    chunk_bytes=2 * ms(2000), asr_pool=2, overlap=True)
