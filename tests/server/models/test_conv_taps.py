"""TapConv2d computes a strided Conv2d as one MatMul per kernel tap, PointwiseConv1d a kernel-1 Conv1d as one
MatMul: the convolution's output (up to float summation order) for every input size; the encoder view swaps them in
and leaves the original modules, the first one-channel convolution and v3's conv1d subsampling alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from server.models.conv_taps import PointwiseConv1d, TapConv2d, with_tap_convs
from server.models.gigaam_compat import encode_features, load_net
from tests.server.models.test_asr import TINY_CKPT
from tests.server.models.test_asr_v3 import V3_CTC


@pytest.mark.parametrize("kernel,stride,padding", [(3, 2, 1), (3, 1, 1), ((3, 5), (2, 1), (1, 2)), (2, 2, 1)])
@pytest.mark.parametrize("rows,cols", [(1, 1), (2, 3), (7, 32), (8, 32), (33, 9)])
def test_tap_conv_equals_the_convolution(kernel, stride, padding, rows: int, cols: int) -> None:
    torch.manual_seed(rows * 100 + cols)
    conv = nn.Conv2d(6, 5, kernel, stride=stride, padding=padding)
    x = torch.randn(3, 6, rows, cols)
    want = conv(x)
    got = TapConv2d.of(conv)(x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_tap_conv_without_bias_and_its_taps_are_the_weights() -> None:
    conv = nn.Conv2d(4, 3, 3, stride=2, padding=1, bias=False)
    tap = TapConv2d.of(conv)
    x = torch.randn(2, 4, 9, 6)
    assert torch.allclose(tap(x), conv(x), atol=1e-5)
    assert len(tap.taps) == 9 and torch.equal(tap.taps[5], conv.weight[:, :, 1, 2].t())
    assert tap.weight is conv.weight and isinstance(tap, nn.Conv2d)


@pytest.mark.parametrize("conv", [nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 4, 3, dilation=2),
                                  nn.Conv2d(4, 4, 3, padding="same"), nn.Conv2d(4, 4, 3, padding_mode="reflect")])
def test_convolutions_it_does_not_cover_are_refused(conv: nn.Conv2d) -> None:
    with pytest.raises(ValueError, match="groups=1"):
        TapConv2d.of(conv)


def test_pointwise_conv_equals_the_convolution_and_others_are_refused() -> None:
    conv = nn.Conv1d(8, 6, 1)
    x = torch.randn(2, 8, 13)
    point = PointwiseConv1d.of(conv)
    assert torch.allclose(point(x), conv(x), atol=1e-5) and point.weight is conv.weight
    for other in (nn.Conv1d(8, 6, 3), nn.Conv1d(8, 8, 1, groups=2), nn.Conv1d(8, 6, 1, stride=2)):
        with pytest.raises(ValueError, match="kernel-1"):
            PointwiseConv1d.of(other)


class _Holder(nn.Module):
    """What encode_features reads: a module with ``.encoder``."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder


def _same_encoding(net: nn.Module, view: nn.Module) -> None:
    x = torch.randn(3, 250, net.spec.encoder.feat_in)
    lengths = torch.tensor([250, 171, 96])
    with torch.inference_mode():
        want, want_len = encode_features(net, x, lengths)
        got, got_len = encode_features(_Holder(view), x, lengths)  # type: ignore[arg-type]
    assert torch.equal(want_len, got_len)
    for row, n in enumerate(want_len.tolist()):
        assert float((want[row, :n] - got[row, :n]).abs().max()) <= 1e-4


def _kinds(encoder: nn.Module) -> list[type]:
    return [type(m) for m in encoder.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]


def test_the_v2_view_computes_the_channel_mixing_convolutions_as_matmuls_and_leaves_the_encoder_alone() -> None:
    net = load_net(TINY_CKPT)
    encoder = net.encoder
    before = _kinds(encoder)
    view = with_tap_convs(encoder)
    assert [type(m) for m in view.pre_encode.conv] == [nn.Conv2d, nn.ReLU, TapConv2d, nn.ReLU]  # one-channel first
    for layer in view.layers:
        conv = layer.conv
        assert (type(conv.pointwise_conv1), type(conv.depthwise_conv), type(conv.pointwise_conv2)) == (
            PointwiseConv1d, nn.Conv1d, PointwiseConv1d)
    assert _kinds(encoder) == before and set(before) == {nn.Conv1d, nn.Conv2d}  # the original is untouched
    assert view.pre_encode.out is encoder.pre_encode.out and view.pos_enc is encoder.pos_enc  # weights shared
    assert view.layers[0].feed_forward1 is encoder.layers[0].feed_forward1
    _same_encoding(net, view)


def test_v3_keeps_its_conv1d_subsampling_and_its_layers_pointwise_convs_become_matmuls() -> None:
    net = load_net(V3_CTC)
    view = with_tap_convs(net.encoder)
    assert view.pre_encode is net.encoder.pre_encode
    assert {type(m) for m in view.layers.modules() if isinstance(m, nn.Conv1d)} == {nn.Conv1d, PointwiseConv1d}
    _same_encoding(net, view)
