"""GigaAM cfg validation: every field that changes the computation is read, anything else is refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from server.models.gigaam_compat import build_model, encode_batch, load_net, random_config
from server.models.gigaam_spec import FrontEnd, UnsupportedCheckpoint, parse_cfg
from tests.server.conftest import small_gigaam_cfg

TINY_V2 = Path(__file__).resolve().parents[2] / "assets" / "tiny_gigaam_ctc.ckpt"


_small = small_gigaam_cfg


def test_v2_and_v3_cfgs_parse_with_their_defaults() -> None:
    v2 = parse_cfg(random_config("v2_ctc"))
    assert v2.frontend == FrontEnd() and v2.frontend.center and v2.encoder.subsampling == "conv2d"
    assert (v2.encoder.subs_kernel_size, v2.encoder.conv_norm_type) == (3, "batch_norm")
    v3 = parse_cfg(random_config("v3_rnnt"))
    assert (v3.frontend.n_fft, v3.frontend.win_length, v3.frontend.center) == (320, 320, False)
    assert (v3.encoder.subsampling, v3.encoder.subs_kernel_size, v3.encoder.conv_norm_type) == ("conv1d", 5,
                                                                                               "layer_norm")
    assert v3.head == "rnnt" and v3.blank_id == 33 and v3.samples_per_frame == 640 and v3.frame_offset == 160


def test_frontend_frame_counts() -> None:
    centred, uncentred = FrontEnd(), FrontEnd(n_fft=320, win_length=320, center=False)
    assert [centred.frames(n) for n in (0, 159, 160, 16000)] == [1, 1, 2, 101]
    assert [uncentred.frames(n) for n in (0, 319, 320, 479, 480, 16000)] == [0, 0, 1, 1, 2, 99]
    assert (centred.min_samples, uncentred.min_samples) == (1, 320)


@pytest.mark.parametrize("section,field", [
    ("", "optimizer"), ("preprocessor", "dither"), ("preprocessor", "normalize"), ("encoder", "dropout"),
    ("encoder", "causal"), ("head", "bias"), ("decoding", "beam_size"),
])
def test_an_unknown_cfg_field_is_refused_by_name(section: str, field: str) -> None:
    cfg = _small()
    (OmegaConf.select(cfg, section) if section else cfg)[field] = 1
    with pytest.raises(UnsupportedCheckpoint, match=f"{field}.*does not understand"):
        parse_cfg(cfg)


@pytest.mark.parametrize("path,value,match", [
    ("preprocessor.mel_scale", "slaney", "mel_scale"),
    ("preprocessor.sample_rate", 8000, "sample_rate"),
    ("preprocessor.n_fft", 400, "center=False with n_fft != win_length"),
    ("preprocessor.win_length", 512, "longer than n_fft"),
    ("preprocessor._target_", "my.Features", "_target_"),
    ("encoder.subsampling", "conv3d", "subsampling"),
    ("encoder.subs_kernel_size", 4, "subs_kernel_size"),
    ("encoder.conv_norm_type", "group_norm", "conv_norm_type"),
    ("encoder.subsampling_factor", 6, "subsampling_factor"),
    ("encoder.feat_in", 80, "feat_in"),
    ("head.num_classes", 40, "vocabulary"),
    ("head._target_", "gigaam.decoder.Other", "CTCHead"),
    ("decoding._target_", "gigaam.decoding.RNNTGreedyDecoding", "_target_"),
    ("model_class", "rnnt", "model_class"),
])
def test_an_unsupported_value_is_refused(path: str, value, match: str) -> None:
    cfg = _small()
    OmegaConf.update(cfg, path, value)
    with pytest.raises(UnsupportedCheckpoint, match=match):
        parse_cfg(cfg)


def test_weights_that_do_not_fit_the_cfg_are_refused(tmp_path: Path) -> None:
    """A v3 cfg claiming layer-norm convolutions over v3 weights with batch norms: unexpected tensors."""
    cfg = _small()
    state = build_model(cfg).state_dict()
    cfg.encoder.conv_norm_type = "batch_norm"
    path = tmp_path / "mismatch.ckpt"
    torch.save({"cfg": cfg, "state_dict": state}, path)
    with pytest.raises(UnsupportedCheckpoint, match="missing or unexpected"):
        load_net(path)
    cfg.encoder.conv_norm_type = "layer_norm"
    cfg.encoder.subs_kernel_size = 3
    torch.save({"cfg": cfg, "state_dict": state}, path)
    with pytest.raises(UnsupportedCheckpoint, match="do not fit"):
        load_net(path)


def test_v3_layers_change_the_computation_as_configured() -> None:
    """conv1d subsampling has no output projection and Conv1d layers; layer_norm replaces the batch norm."""
    net = build_model(_small("v3_ctc"))
    assert not hasattr(net.encoder.pre_encode, "out")
    assert {type(m).__name__ for m in net.encoder.pre_encode.conv} == {"Conv1d", "ReLU"}
    assert all(isinstance(layer.conv.batch_norm, torch.nn.LayerNorm) for layer in net.encoder.layers)
    v2 = build_model(_small("v2_ctc"))
    assert all(isinstance(layer.conv.batch_norm, torch.nn.BatchNorm1d) for layer in v2.encoder.layers)


def test_the_tiny_v2_checkpoint_still_loads_through_the_validated_path() -> None:
    net = load_net(TINY_V2)
    assert net.spec.frontend == FrontEnd() and net.spec.encoder.subsampling == "conv2d"


@pytest.mark.parametrize("name", ["v3_ctc", "v2_ctc"])
def test_ragged_encoder_frames_equal_unbatched_runs(name: str) -> None:
    """Noise up to the last sample, so padding would leak into the subsampling (conv1d for v3, conv2d for v2) and
    the convolutions of the shorter rows if it were not masked."""
    torch.manual_seed(0)
    net = build_model(_small(name))
    rng = np.random.default_rng(0)
    audios = [torch.from_numpy((rng.standard_normal(n) * 0.1).astype(np.float32)) for n in (16000, 7001, 3333, 641)]
    with torch.inference_mode():
        encoded, lengths = encode_batch(net, audios)
        for row, audio in enumerate(audios):
            single, frames = net(audio[None], torch.tensor([len(audio)]))
            assert int(lengths[row]) == int(frames[0]) == single.shape[-1]
            torch.testing.assert_close(encoded[row, : lengths[row]], single[0].transpose(0, 1), atol=1e-4, rtol=1e-4)
