"""server.models.sinc_reuse: a stream's windows reuse the sinc filter responses of the samples they share with its
previous window, and give what the whole-window computation gives (a fake filterbank: exactly; PyanNet's on ONNX
Runtime: within float32's rounding, against the torch network and the whole-window graph)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from server.models.sinc_reuse import SincReuse
from streaming.work import SegmentationRequest

TAPS, STRIDE, WINDOW, STEP = 11, 3, 300, 30


def fake_filterbank(batch: np.ndarray) -> np.ndarray:
    """``(B, 1, n)`` → ``(B, 4, frames)``: each frame from its own taps (float64 sums: chunking cannot matter)."""
    filters = np.random.default_rng(0).normal(size=(4, TAPS))
    frames = sliding_window_view(batch[:, 0].astype(np.float64), TAPS, axis=1)[:, ::STRIDE]
    return np.einsum("bft,ct->bcf", frames, filters).astype(np.float32)


def whole(batch: np.ndarray) -> np.ndarray:
    return fake_filterbank(batch)


def windows(audio: np.ndarray, session: str = "s", channel: int = 0, step: int = STEP) -> list[SegmentationRequest]:
    """The diarizer's schedule: windows ending every ``step`` samples, zero-padded before the stream's start."""
    requests = []
    for end in range(step, len(audio) + 1, step):
        start, window = end - WINDOW, np.zeros(WINDOW, np.float32)
        window[max(0, -(end - WINDOW)):] = audio[max(0, start):end]
        requests.append(SegmentationRequest(session, end, channel, start, window))
    return requests


def run(reuse: SincReuse, requests: list[SegmentationRequest]) -> np.ndarray:
    return reuse.filtered(np.stack([r.audio for r in requests])[:, None], requests)


def test_a_stream_reuses_the_frames_it_shares_with_its_last_window_and_gets_the_same_responses() -> None:
    audio = np.random.default_rng(1).normal(size=3000).astype(np.float32)
    reuse = SincReuse(fake_filterbank, TAPS, STRIDE)
    requests = windows(audio)
    for request in requests:  # one window per call, 100 calls: also moves the kept frames to the front 10 times
        np.testing.assert_array_equal(run(reuse, [request]), whole(request.audio[None, None]))
    frames = reuse.frames(WINDOW)
    assert reuse.frames_computed + reuse.frames_reused == frames * len(requests)
    assert reuse.frames_reused == (frames - STEP // STRIDE) * (len(requests) - 1)  # all but the newest 30 samples'


def test_two_streams_and_a_stream_twice_in_one_batch() -> None:
    rng = np.random.default_rng(2)
    a, b = (rng.normal(size=1200).astype(np.float32) for _ in range(2))
    reuse = SincReuse(fake_filterbank, TAPS, STRIDE)
    first, second = windows(a, "a"), windows(b, "b")
    batches = [first[i:i + 2] + second[i:i + 2] for i in range(0, len(first), 2)]
    for batch in batches:
        np.testing.assert_array_equal(run(reuse, batch), whole(np.stack([r.audio for r in batch])[:, None]))
    assert reuse.frames_reused > 0.8 * (reuse.frames_reused + reuse.frames_computed)


@pytest.mark.parametrize("case", ["misaligned", "changed", "backwards", "other channel", "too far"])
def test_nothing_is_reused_unless_the_shared_samples_are_equal_and_stride_aligned(case: str) -> None:
    audio = np.random.default_rng(3).normal(size=2000).astype(np.float32)
    reuse = SincReuse(fake_filterbank, TAPS, STRIDE)
    run(reuse, [SegmentationRequest("s", 0, 0, 600, audio[600:900])])
    start, channel, window = {"misaligned": 631, "backwards": 570, "too far": 900}.get(case, 630), 0, None
    window = audio[start:start + WINDOW].copy()
    if case == "changed":  # the buffer lost audio: the shared part differs
        window[:10] = 0.0
    if case == "other channel":
        channel = 1
    computed = reuse.frames_computed
    got = run(reuse, [SegmentationRequest("s", 1, channel, start, window)])
    np.testing.assert_array_equal(got, whole(window[None, None]))
    assert reuse.frames_reused == 0 and reuse.frames_computed - computed == reuse.frames(WINDOW)


def test_a_shorter_tail_window_and_no_requests() -> None:
    audio = np.random.default_rng(4).normal(size=1000).astype(np.float32)
    reuse = SincReuse(fake_filterbank, TAPS, STRIDE)
    run(reuse, [SegmentationRequest("s", 0, 0, 300, audio[300:600])])
    tail = audio[330:500]  # starts aligned, ends early: all its frames are reused
    np.testing.assert_array_equal(run(reuse, [SegmentationRequest("s", 1, 0, 330, tail)]), whole(tail[None, None]))
    assert reuse.frames_reused == reuse.frames(len(tail))
    np.testing.assert_array_equal(reuse.filtered(audio[None, None, :WINDOW]), whole(audio[None, None, :WINDOW]))
    with pytest.raises(ValueError, match="at least 11 samples"):
        reuse.filtered(audio[None, None, :5])


def test_streams_beyond_the_limit_are_forgotten_least_recently_used_first() -> None:
    audio = np.random.default_rng(5).normal(size=600).astype(np.float32)
    reuse = SincReuse(fake_filterbank, TAPS, STRIDE, streams=2)
    for session in ("a", "b", "a", "c"):  # c pushes out b (a was used after b)
        run(reuse, [SegmentationRequest(session, 0, 0, 0, audio[:WINDOW])])
    reused = reuse.frames_reused
    run(reuse, [SegmentationRequest("a", 1, 0, 30, audio[30:330])])
    assert reuse.frames_reused > reused
    reused = reuse.frames_reused
    run(reuse, [SegmentationRequest("b", 1, 0, 30, audio[30:330])])
    assert reuse.frames_reused == reused


def test_pyannet_on_onnx_runtime_with_reuse_equals_torch_and_the_whole_window_graph() -> None:
    from server.models.diarization_onnx import OnnxSegmentationModel
    from server.models.segmentation import SegmentationModel
    from tests.server.models.test_diarization_engines import MEAN_TOLERANCE, SCORE_TOLERANCE
    from tests.server.models.test_pyannet import pyannote_sample, real_checkpoint

    real_checkpoint("whisperx")
    sample = pyannote_sample()[:16000 * 14]
    reference, whole_graph, ours = SegmentationModel(), OnnxSegmentationModel(reuse_sinc=False), OnnxSegmentationModel()
    global WINDOW
    saved, WINDOW = WINDOW, ours.window
    try:  # two streams (the sample and its reverse), 0.5 s step, padded first windows, batched as the server does
        calls = [[a, b] for a, b in zip(windows(sample, "a", step=8000), windows(sample[::-1].copy(), "b", step=8000))]
    finally:
        WINDOW = saved
    tail = len(sample) - 5 - ours.window  # the end-of-stream window: not stride-aligned, recomputed
    calls.append([SegmentationRequest("a", 99, 0, tail, sample[tail:tail + ours.window])])
    expected, exported, got = ([r.scores for c in calls for r in model.run_batch(c)]
                               for model in (reference, whole_graph, ours))
    for e, x, g in zip(expected, exported, got):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, atol=SCORE_TOLERANCE, rtol=0)
        np.testing.assert_allclose(g, x, atol=SCORE_TOLERANCE, rtol=0)
        clear = np.abs(e - 0.5) > SCORE_TOLERANCE
        assert ((e > 0.5) == (g > 0.5))[clear].all()
    assert np.mean([np.abs(e - g).mean() for e, g in zip(expected, got)]) < MEAN_TOLERANCE
    assert ours.reuse is not None and ours.reuse.frames_reused > 0.8 * (ours.reuse.frames_reused
                                                                        + ours.reuse.frames_computed)
    assert ours.describe()["reuse_sinc"] and not whole_graph.describe()["reuse_sinc"]


def test_lstm_int8_is_an_approximation_with_its_own_cached_graph() -> None:
    """Opt-in int8 LSTMs (not the default: outputs change; docs/benchmarks.md has its DER): close, not equal."""
    from server.models.diarization_onnx import OnnxResemblyzerEmbedding, OnnxSegmentationModel
    from server.models.embedding import ResemblyzerEmbedding
    from server.models.segmentation import SegmentationModel
    from tests.server.models.test_diarization_engines import embedding_requests
    from tests.server.models.test_pyannet import pyannote_sample, real_checkpoint

    real_checkpoint("whisperx")
    sample = pyannote_sample()
    exact, approximate = SegmentationModel(), OnnxSegmentationModel(int8=True)
    requests = [SegmentationRequest("s", i, 0, s, sample[s:s + exact.window])
                for i, s in enumerate(range(0, len(sample) - exact.window, 8000))]
    expected = np.concatenate([r.scores for r in exact.run_batch(requests)])
    got = np.concatenate([r.scores for r in approximate.run_batch(requests)])
    assert 1e-3 < np.abs(got - expected).mean() < 1e-2 and ((got > 0.5) == (expected > 0.5)).mean() > 0.99
    assert approximate.describe()["lstm_int8"] and "-int8" in approximate.session._model_path
    requests = embedding_requests(sample)
    vectors = [np.stack([r.embedding for r in model.run_batch(requests)])
               for model in (ResemblyzerEmbedding(), OnnxResemblyzerEmbedding(int8=True))]
    cosines = (vectors[0] * vectors[1]).sum(axis=1)
    assert cosines.min() > 0.98 and cosines.max() < 1 - 1e-5
