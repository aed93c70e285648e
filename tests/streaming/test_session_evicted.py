"""streaming/session.py: no buffer read crashes a session when the audio it wants was dropped or evicted.

Reproduces issue #13's ``ValueError: samples [...] are not in the buffer``: a VAD result still in flight ends an
utterance whose audio the buffer no longer holds (the VAD stalled while audio kept arriving at full speed).
"""

from __future__ import annotations

import numpy as np
import pytest

from streaming import wire
from streaming.config import AudioFormat, SessionConfig, ms
from streaming.work import AsrKind, AsrRequest, EmbeddingRequest, SegmentationRequest, VadRequest
from tests.fakes import SessionHarness, events_of, pcm16, seconds, tone_bursts


def _speech(total_s: float) -> np.ndarray:
    """Tone bursts (one utterance each) filling ``total_s`` seconds."""
    n = int(total_s / 1.5)
    return tone_bursts([(300 + 20 * (k % 20), 0.9) for k in range(n)], gaps=0.6, lead=0.3,
                       tail=max(0.3, total_s - 1.5 * n)).audio


def _check_stream(h: SessionHarness) -> None:
    events = h.events
    assert isinstance(events[-1], wire.End)
    finals = events_of(events, wire.Final)
    ids = [f.utterance_id for f in finals]
    assert len(ids) == len(set(ids))
    for channel in {f.channel for f in finals}:  # ids increase in emission order per channel
        own = [f.utterance_id for f in finals if f.channel == channel]
        assert own == sorted(own)
    talked = {e.utterance_id for e in events if isinstance(e, (wire.Partial, wire.Final))}
    assert talked == set(ids)  # every utterance with a partial got exactly one final
    stats = h.session.stats
    assert stats.audio_in == stats.audio_processed + stats.audio_dropped


def test_a_stalled_vad_result_ending_an_evicted_utterance_does_not_crash() -> None:
    h = SessionHarness(SessionConfig(diarization=False, max_pending_audio=ms(1_000)))
    audio = _speech(120)
    h.feed(audio[:seconds(0.9)])  # an utterance is open
    h.hold = lambda r: isinstance(r, VadRequest)  # the VAD stalls while audio keeps coming
    h.feed(audio[seconds(0.9):seconds(100)], chunk=1.0)
    assert h.session.stats.audio_dropped > 0
    h.release()  # the stale VAD result ends the utterance whose start was evicted long ago
    h.feed(audio[seconds(100):], chunk=1.0)
    h.end()
    _check_stream(h)
    finals = events_of(h.events, wire.Final)
    assert len(finals) >= 10
    truncated = [w for w in events_of(h.events, wire.Warning) if w.code == "utterance_truncated"]
    assert truncated and h.session.stats.audio_truncated > 0  # reported, not silent
    assert sum(w.dropped_seconds for w in truncated) * 16000 == pytest.approx(h.session.stats.audio_truncated)
    for request in h.sent:  # every request read only audio that existed, none empty
        if isinstance(request, AsrRequest):
            assert len(request.audio) > 0


def test_partial_windows_over_evicted_audio_are_skipped_not_read() -> None:
    h = SessionHarness(SessionConfig(diarization=False, max_pending_audio=ms(1_000)))
    long_speech = tone_bursts([(300 + 7 * k, 0.4) for k in range(40)], gaps=0.1, lead=0.3).audio  # 20 s, no pause
    h.feed(long_speech[:seconds(1.5)])
    h.hold = lambda r: isinstance(r, AsrRequest) and r.kind == AsrKind.PARTIAL
    h.feed(long_speech[seconds(1.5):], chunk=0.3)
    h.release()
    h.end()
    _check_stream(h)


def test_multichannel_with_a_stalled_vad_survives_eviction() -> None:
    left, right = _speech(80), _speech(80)[::-1].copy()
    stereo = np.stack([left, right], axis=1).reshape(-1)
    h = SessionHarness(SessionConfig(multichannel=True, audio=AudioFormat("pcm_s16le", 16000, 2),
                              max_pending_audio=ms(1_000)))
    data = pcm16(stereo)
    step = 4 * seconds(1.0)
    h.session.receive_audio(data[:4 * seconds(0.9)])
    h.pump()
    h.hold = lambda r: isinstance(r, VadRequest)
    for a in range(4 * seconds(0.9), len(data), step):
        h.session.receive_audio(data[a:a + step])
        h.pump()
        if a > len(data) // 2:
            h.hold = lambda r: False
    h.end()
    _check_stream(h)


def test_diarization_windows_over_evicted_audio_do_not_crash() -> None:
    fakes = pytest.importorskip("tests.fakes_diarization")
    cfg = SessionConfig(diarization=True, max_pending_audio=ms(1_000))
    h = SessionHarness(cfg, extra={SegmentationRequest: fakes.FakeSegmentation(), EmbeddingRequest: fakes.FakeEmbedding()})
    audio = _speech(90)
    h.feed(audio[:seconds(0.9)])
    h.hold = lambda r: isinstance(r, (VadRequest, SegmentationRequest))  # VAD and segmentation stall
    h.feed(audio[seconds(0.9):seconds(70)], chunk=1.0)
    h.release()
    h.feed(audio[seconds(70):], chunk=0.5)
    h.end()
    _check_stream(h)
