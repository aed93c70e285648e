"""Convolutions as one MatMul per kernel tap, for the exported ONNX graph (torch's path is unchanged).

ONNX Runtime's dynamic quantization covers MatMul, not Conv, so GigaAM v2's second subsampling convolution
(768→768 channels, 3×3, stride 2) stayed fp32 in the int8 graph and took a third to a half of its time. A
convolution is a sum over its kernel taps ``(i, j)``: each tap multiplies the input's channels, at the positions the
stride picks shifted by ``(i, j)``, by ``W[:, :, i, j]``. :class:`TapConv2d` computes exactly that — a strided slice
of the padded, channels-last input (the output's size) times ``W[:, :, i, j]ᵀ`` per tap, accumulated, plus the
bias — so every tap is a MatMul with a constant weight that quantization turns into an integer MatMul, and no
im2col tensor (``kh·kw`` times the output) is ever built. In fp32 it equals the convolution up to summation order.
The Conformer layers' pointwise (kernel-1) convolutions, one tap each, become MatMuls too (:class:`PointwiseConv1d`).
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["PointwiseConv1d", "TapConv2d", "with_tap_convs"]


class TapConv2d(nn.Conv2d):
    """A :class:`~torch.nn.Conv2d` (``groups=1``, no dilation, zero padding) whose forward is one MatMul per tap.

    A subclass, so code that walks a network's convolutions (kernel sizes, output lengths) treats it as the one it
    replaces; its weights are the convolution's, rearranged into one ``(C_in, C_out)`` matrix per tap."""

    @classmethod
    def of(cls, conv: nn.Conv2d) -> "TapConv2d":
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding,
                                                                                                     str):
            raise ValueError("TapConv2d covers convolutions with groups=1, dilation 1 and numeric zero padding")
        tap = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  bias=conv.bias is not None, device="meta")
        tap.weight, tap.bias = conv.weight, conv.bias  # shared, not copied
        kh, kw = conv.kernel_size
        with torch.no_grad():
            tap.taps = nn.ParameterList(  # separate tensors: each MatMul's weight is a graph constant of its own
                nn.Parameter(conv.weight[:, :, i, j].t().contiguous(), requires_grad=False)
                for i in range(kh) for j in range(kw))
        return tap

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, T, F)`` → ``(B, C_out, T', F')``, as :class:`~torch.nn.Conv2d` computes it."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        x = nn.functional.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1)  # (B, T + 2ph, F + 2pw, C_in)
        rows = (x.shape[1] - kh) // sh + 1
        cols = (x.shape[2] - kw) // sw + 1
        out = None
        for i in range(kh):
            for j in range(kw):
                window = x[:, i:i + sh * (rows - 1) + 1:sh, j:j + sw * (cols - 1) + 1:sw]  # (B, T', F', C_in)
                term = torch.matmul(window, self.taps[i * kw + j])
                out = term if out is None else out + term
        if self.bias is not None:
            out = out + self.bias
        return out.permute(0, 3, 1, 2)


class PointwiseConv1d(nn.Conv1d):
    """A kernel-1 :class:`~torch.nn.Conv1d` (the Conformer convolution module's pointwise layers) as one MatMul over
    the channels: its single tap. ``(B, C_in, T)`` → ``(B, C_out, T)``."""

    @classmethod
    def of(cls, conv: nn.Conv1d) -> "PointwiseConv1d":
        if not _pointwise(conv):
            raise ValueError("PointwiseConv1d covers kernel-1 convolutions with stride 1, no padding and groups=1")
        point = cls(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None, device="meta")
        point.weight, point.bias = conv.weight, conv.bias
        point.tap = nn.Parameter(conv.weight.detach()[:, :, 0].t().contiguous(), requires_grad=False)
        return point

    def forward(self, x: Tensor) -> Tensor:
        out = torch.matmul(x.transpose(1, 2), self.tap)
        if self.bias is not None:
            out = out + self.bias
        return out.transpose(1, 2)


def with_tap_convs(encoder: nn.Module) -> nn.Module:
    """A view of a GigaAM encoder whose convolutions that carry real channel mixing are MatMuls: every Conv2d with
    more than one input channel (v2's second subsampling convolution) as :class:`TapConv2d`, every pointwise Conv1d
    (the Conformer layers') as :class:`PointwiseConv1d`. The first, one-channel subsampling convolution, depthwise
    convolutions and v3's conv1d subsampling stay Convs. The same weights; the original modules are untouched."""
    return _swapped(encoder)


def _as_matmul(module: nn.Module) -> Optional[nn.Module]:
    if type(module) is nn.Conv2d and module.in_channels > 1:
        return TapConv2d.of(module)
    if type(module) is nn.Conv1d and _pointwise(module):
        return PointwiseConv1d.of(module)
    return None


def _pointwise(conv: nn.Conv1d) -> bool:
    return (conv.kernel_size, conv.stride, conv.padding, conv.groups) == ((1,), (1,), (0,), 1)


def _swapped(module: nn.Module) -> nn.Module:
    """``module`` with :func:`_as_matmul`'s replacements; modules on the way down to one are shallow copies (they
    share parameters and the untouched children), everything else is the original."""
    replacement = _as_matmul(module)
    if replacement is not None:
        return replacement
    children = {name: None if child is None else _swapped(child) for name, child in module._modules.items()}
    if all(children[name] is child for name, child in module._modules.items()):
        return module
    clone = copy.copy(module)
    clone._modules = children  # type: ignore[assignment]  # copy.copy alone would share the children's dict
    return clone
