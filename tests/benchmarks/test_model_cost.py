"""benchmarks/model_cost.py without models: the request rates of one stream and the requests it times."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.common import SAMPLE_RATE
from benchmarks.model_cost import make_requests, parse_args, time_call, workload
from streaming.config import VAD_CHUNK, DiarizationOptions, PartialOptions
from streaming.work import AsrKind, AsrRequest, EmbeddingRequest, Priority, SegmentationRequest, VadRequest


def test_workload_follows_the_session_defaults() -> None:
    args = parse_args(["--speech-fraction", "0.5", "--utterance", "8", "--vad-chunks", "4"])
    rates = workload(args)
    step, window = DiarizationOptions().step, DiarizationOptions().window
    partials = PartialOptions()
    assert rates["vad"] == (SAMPLE_RATE / (4 * VAD_CHUNK), 4 * VAD_CHUNK)
    assert rates["segmentation"] == (SAMPLE_RATE / step, window)
    assert rates["embedding"] == (SAMPLE_RATE / step, window // 2)
    assert rates["asr_final"] == pytest.approx((0.5 / 8, 8 * SAMPLE_RATE))
    rate, samples = rates["asr_partial"]
    assert samples == min(partials.max_window, 8 * SAMPLE_RATE)
    # partial audio per stream-second = budget × speech fraction
    assert rate * samples / SAMPLE_RATE == pytest.approx(partials.budget_ratio * 0.5)


def test_make_requests_builds_distinct_requests_of_each_kind() -> None:
    audio = np.linspace(-0.5, 0.5, 30 * SAMPLE_RATE, dtype=np.float32)
    expected = {"vad": VadRequest, "segmentation": SegmentationRequest, "embedding": EmbeddingRequest,
                "asr_final": AsrRequest, "asr_partial": AsrRequest}
    for kind, cls in expected.items():
        requests = make_requests(kind, 3, 16000, audio)
        assert [type(r) for r in requests] == [cls] * 3
        assert all(len(r.audio) == 16000 and r.audio.dtype == np.float32 for r in requests)
        assert len({r.session_id for r in requests}) == 3
        assert len({float(r.audio[0]) for r in requests}) == 3, "different excerpts"
    final, partial = make_requests("asr_final", 1, 800, audio)[0], make_requests("asr_partial", 1, 800, audio)[0]
    assert (final.kind, final.priority) == (AsrKind.FINAL, Priority.FINAL)
    assert (partial.kind, partial.priority) == (AsrKind.PARTIAL, Priority.PARTIAL)


def test_time_call_runs_once_untimed_then_repeats() -> None:
    calls: list[int] = []
    assert time_call(lambda: calls.append(1), repeats=4) >= 0.0
    assert len(calls) == 5
