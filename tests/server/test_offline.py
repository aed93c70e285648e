"""server.offline.drive_whole: whole files through sessions side by side, finals batched, the live events."""

from __future__ import annotations

import pytest

from server.offline import drive_session, drive_whole, run_requests_by_kind
from streaming import wire
from streaming.config import SessionConfig
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
    assert drive_whole([], [], lambda r: []) == []
