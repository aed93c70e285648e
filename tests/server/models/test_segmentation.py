"""server.models.segmentation: the default PyanNet checkpoint, frame geometry, activations, batching, real speech."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch

from server.models.cache import SEGMENTATION_SHA256, ModelUnavailable, load_pyannote_model
from server.models.segmentation import SegmentationModel
from streaming.work import SegmentationRequest, VadRequest

CONVERSATION = (Path(__file__).resolve().parents[3].parent / "shared" / "speech" / "conv" / "pyannote_sample"
                / "pyannote_sample_2spk.wav")
WINDOW = 80000


@pytest.fixture(scope="module")
def segmentation() -> SegmentationModel:
    try:
        return SegmentationModel(device="cpu", max_batch=4)
    except ModelUnavailable as exc:
        pytest.skip(f"default segmentation weights unavailable (no package index?): {exc}")


def noise(seconds: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)


def request(audio: np.ndarray, seq: int = 0) -> SegmentationRequest:
    return SegmentationRequest("s", seq, 0, 0, audio)


def test_default_checkpoint_is_the_pinned_pyannet(segmentation: SegmentationModel) -> None:
    info = segmentation.describe()
    assert info["sha256"] == SEGMENTATION_SHA256 and info["architecture"] == "PyanNet"
    assert info["speakers"] == 3 and info["window"] == WINDOW and not info["powerset"]
    assert Path(info["checkpoint"]).is_file()
    assert not segmentation.model.training  # dropout off


def test_frame_geometry_comes_from_the_receptive_field(segmentation: SegmentationModel) -> None:
    field = segmentation.model.receptive_field
    assert segmentation.frame_step == pytest.approx(field.step * 16000)
    assert segmentation.frame_duration == pytest.approx(field.duration * 16000)
    assert segmentation.frame_offset == pytest.approx(field.start * 16000)
    (result,) = segmentation.run_batch([request(noise(5, 0))])
    frames = result.scores.shape[0]
    # The last frame's receptive field ends inside the window; one more would not.
    last_end = result.frame_offset + (frames - 1) * result.frame_step + result.frame_duration
    assert last_end <= WINDOW < last_end + result.frame_step
    assert (result.frame_step, result.frame_duration) == (segmentation.frame_step, segmentation.frame_duration)


def test_pyannet_returns_probabilities_and_the_adapter_keeps_them(segmentation: SegmentationModel) -> None:
    audio = noise(5, 1)
    assert isinstance(segmentation.model.activation, torch.nn.Sigmoid)
    with torch.inference_mode():
        raw = segmentation.model(torch.from_numpy(audio)[None, None])[0].numpy()
    assert 0.0 <= raw.min() and raw.max() <= 1.0
    (result,) = segmentation.run_batch([request(audio)])
    assert result.scores.shape == (raw.shape[0], 3) and result.scores.dtype == np.float32
    np.testing.assert_allclose(result.scores, raw, atol=1e-6)  # no second sigmoid


def test_batch_equals_windows_run_alone_and_short_windows_keep_their_frames(segmentation: SegmentationModel) -> None:
    windows = [noise(5, 2), noise(5, 3), noise(3.2, 4), noise(5, 5)]
    batch = segmentation.run_batch([request(w, i) for i, w in enumerate(windows)])
    assert [r.seq for r in batch] == [0, 1, 2, 3]
    for window, result in zip(windows, batch):
        (alone,) = segmentation.run_batch([request(window)])
        np.testing.assert_allclose(result.scores, alone.scores, atol=1e-5)
        assert result.scores.shape[0] == segmentation.num_frames(len(window))
    assert batch[2].scores.shape[0] < batch[0].scores.shape[0]


def test_rejects_bad_requests(segmentation: SegmentationModel) -> None:
    with pytest.raises(ValueError, match="1-D and non-empty"):
        segmentation.run_batch([request(np.zeros((2, 100), np.float32))])
    with pytest.raises(TypeError, match="only runs SegmentationRequest"):
        segmentation.run_batch([VadRequest("s", 0, 0, 0, np.zeros(512, np.float32))])


@pytest.mark.skipif(not CONVERSATION.is_file(), reason="shared real speech recordings are absent")
def test_separates_two_real_speakers(segmentation: SegmentationModel) -> None:
    import soundfile as sf

    audio, _ = sf.read(CONVERSATION, dtype="float32")
    start = 7.5  # reference RTTM: speaker90 alone 8.32-9.92 s, speaker91 alone 10.02-10.57 s, speaker90 11.03-14.7 s
    (silent,), (busy,) = (segmentation.run_batch([request(audio[int(t * 16000):int(t * 16000) + WINDOW])])
                          for t in (0.0, start))
    assert silent.scores.max() < 0.5  # no speech before 6.69 s

    centres = (busy.frame_offset + np.arange(len(busy.scores)) * busy.frame_step + busy.frame_duration / 2) / 16000

    def dominant(t0: float, t1: float) -> tuple[int, float]:
        mean = busy.scores[(centres + start >= t0) & (centres + start < t1)].mean(axis=0)
        return int(mean.argmax()), float(mean.max())

    first, second, third = dominant(8.5, 9.8), dominant(10.1, 10.5), dominant(11.2, 12.4)
    assert first[0] != second[0] and first[0] == third[0]
    assert min(first[1], second[1], third[1]) > 0.8


def test_powerset_models_are_converted_to_soft_speaker_probabilities() -> None:
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.segmentation import PyanNet

    torch.manual_seed(0)
    model = PyanNet(lstm={"num_layers": 1, "hidden_size": 16, "bidirectional": True, "monolithic": True},
                    linear={"num_layers": 1, "hidden_size": 8})
    model.specifications = Specifications(problem=Problem.MONO_LABEL_CLASSIFICATION, resolution=Resolution.FRAME,
                                          duration=5.0, classes=["a", "b", "c"], powerset_max_classes=2,
                                          permutation_invariant=True)
    model.build()
    adapter = SegmentationModel.from_model(model, "cpu", 2, checkpoint="tiny powerset")
    audio = noise(2, 6)
    with torch.inference_mode():
        log_probs = model.eval()(torch.from_numpy(audio)[None, None])[0].numpy()
    # Powerset classes in pyannote's order: no speaker, each speaker alone, then each pair.
    sets = [()] + [(k,) for k in range(3)] + list(combinations(range(3), 2))
    assert log_probs.shape[1] == len(sets)
    expected = np.stack([np.exp(log_probs)[:, [i for i, s in enumerate(sets) if k in s]].sum(axis=1)
                         for k in range(3)], axis=1)
    (result,) = adapter.run_batch([request(audio)])
    np.testing.assert_allclose(result.scores, expected, atol=1e-5)
    assert adapter.describe()["powerset"] and set(adapter.modules()) == {"pyannote", "powerset"}


def test_logit_models_get_a_sigmoid(segmentation: SegmentationModel) -> None:
    import copy

    model = copy.deepcopy(segmentation.model)
    model.activation = torch.nn.Identity()
    adapter = SegmentationModel.from_model(model, "cpu", 2)
    audio = noise(5, 7)
    with torch.inference_mode():
        logits = model(torch.from_numpy(audio)[None, None])[0]
    (result,) = adapter.run_batch([request(audio)])
    np.testing.assert_allclose(result.scores, torch.sigmoid(logits).numpy(), atol=1e-6)


def test_unavailable_checkpoints_fail_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    not_a_checkpoint = tmp_path / "model.bin"
    not_a_checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelUnavailable, match="could not be loaded by pyannote.audio"):
        load_pyannote_model(str(not_a_checkpoint), "segmentation")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as on a machine without the hub
    with pytest.raises(ModelUnavailable, match="HF_TOKEN"):
        SegmentationModel("rechka-test/no-such-model")
