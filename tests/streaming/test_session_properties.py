"""Property-based test of ``Session`` (hypothesis): random chunk sizes, encodings, rates, channel layouts, result
delays and orders, drops, ``finalize`` and ``stop`` at random moments. Invariants: no exception; exactly one final
per utterance id; ids increase (per channel: channels interleave); nothing after ``end``; received = processed + dropped exactly, in samples."""

from __future__ import annotations

import functools
import random

import numpy as np
import soxr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.offline import run_requests_by_kind
from streaming import wire
from streaming.audio import ALAW_TABLE, MULAW_TABLE
from streaming.config import AudioFormat, SessionConfig, ms
from streaming.session import Session, SessionState
from streaming.work import AsrRequest, VadRequest
from tests.fakes import FakeAsr, FakeVad, tone_bursts

ENCODINGS = ("pcm_s16le", "pcm_f32le", "mulaw", "alaw")
RATES = (8000, 16000, 44100)


@functools.lru_cache(maxsize=None)
def client_bytes(encoding: str, rate: int, channels: int) -> bytes:
    """A few seconds of tone bursts as the client would send them."""
    b = tone_bursts([(440, 0.7), (660, 1.2), (550, 0.5), (880, 0.9)], gaps=[0.7, 0.3, 0.9], lead=0.3, tail=0.6)
    x = b.audio if rate == 16000 else soxr.resample(b.audio, 16000, rate).astype(np.float32)
    frames = np.stack([x * (0.5 + 0.5 * c) for c in range(channels)], axis=1).reshape(-1)
    if encoding == "pcm_s16le":
        return (np.clip(frames, -1, 1) * 32767).round().astype("<i2").tobytes()
    if encoding == "pcm_f32le":
        return frames.astype("<f4").tobytes()
    table = MULAW_TABLE if encoding == "mulaw" else ALAW_TABLE
    order = np.argsort(table)
    idx = np.clip(np.searchsorted(table[order], frames), 0, 255)
    return order[idx].astype(np.uint8).tobytes()


def check_events(events: list[wire.ServerEvent], session: Session) -> None:
    assert isinstance(events[-1], wire.End) and sum(isinstance(e, wire.End) for e in events) == 1
    final_ids = [e.utterance_id for e in events if isinstance(e, wire.Final)]
    assert len(set(final_ids)) == len(final_ids)  # one final per id
    for channel in {e.channel for e in events if isinstance(e, wire.Final)}:  # ids increase on each channel
        ids = [e.utterance_id for e in events if isinstance(e, wire.Final) and e.channel == channel]
        assert ids == sorted(ids)
    closed: set[int] = set()
    for e in events:
        if isinstance(e, wire.Partial):
            assert e.utterance_id not in closed  # no partial after its final
        elif isinstance(e, wire.Final):
            closed.add(e.utterance_id)
    partial_ids = {e.utterance_id for e in events if isinstance(e, wire.Partial)}
    assert partial_ids <= set(final_ids)  # every utterance that was shown gets its final
    stats, end = session.stats, events[-1]
    assert stats.audio_in == stats.audio_processed + stats.audio_dropped and stats.lag == 0
    assert (end.audio_samples, end.processed_samples, end.dropped_samples) == (
        stats.audio_in, stats.audio_processed, stats.audio_dropped)
    dropped = sum(round(e.dropped_seconds * 16000) for e in events
                  if isinstance(e, wire.Warning) and e.code == "audio_dropped")
    assert dropped == stats.audio_dropped
    assert session.state == SessionState.CLOSED and session.work_to_run() == []


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(encoding=st.sampled_from(ENCODINGS), rate=st.sampled_from(RATES), channels=st.integers(1, 2),
       multichannel=st.booleans(), drop=st.booleans(), seed=st.integers(0, 2**31 - 1),
       chunks=st.lists(st.integers(1, 9_000), min_size=1, max_size=12),
       stop_at=st.floats(0.05, 1.0), hold=st.floats(0.0, 0.9), finalize=st.floats(0.0, 0.3))
def test_random_streams_keep_every_invariant(encoding: str, rate: int, channels: int, multichannel: bool,
                                             drop: bool, seed: int, chunks: list[int], stop_at: float, hold: float,
                                             finalize: float) -> None:
    rng = random.Random(seed)
    data = client_bytes(encoding, rate, channels)
    cfg = SessionConfig(audio=AudioFormat(encoding, rate, channels), multichannel=multichannel and channels > 1,
                        diarization=False, max_pending_audio=ms(1_000))
    session = Session("p", cfg)
    session.drop_when_behind = drop
    run = run_requests_by_kind({VadRequest: FakeVad(), AsrRequest: FakeAsr()})
    events: list[wire.ServerEvent] = []
    pending: list = []

    def drop_withdrawn() -> None:
        nonlocal pending
        withdrawn = set(session.withdrawn_work())  # the server cancels these: no result is owed
        pending = [r for r in pending if r.seq not in withdrawn]

    def deliver(fraction: float) -> None:
        nonlocal pending
        pending += session.work_to_run()
        drop_withdrawn()
        rng.shuffle(pending)
        later = [rng.random() < fraction for _ in pending]
        now = [r for r, wait in zip(pending, later) if not wait]
        pending = [r for r, wait in zip(pending, later) if wait]
        for result in run(now):
            session.receive_result(result)
        drop_withdrawn()
        events.extend(session.events_to_send())

    offset, k, stop_byte = 0, 0, int(len(data) * stop_at)
    while offset < stop_byte:
        size = chunks[k % len(chunks)]
        k += 1
        session.receive_audio(data[offset:offset + size])
        offset += size
        if rng.random() < finalize:
            session.receive_finalize()
        deliver(hold)
    session.receive_end()
    for _ in range(10_000):
        if session.state == SessionState.CLOSED:
            break
        deliver(0.5 if rng.random() < 0.5 else 0.0)
    assert not pending, "the session ended with requests still out"
    events.extend(session.events_to_send())
    check_events(events, session)
