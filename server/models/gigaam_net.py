"""rechka's GigaAM network, built from a validated :class:`~server.models.gigaam_spec.AsrSpec` (v1, v2 and v3).

gigaam 0.1.0 supplies the Conformer layers, heads and greedy decoders; this module supplies what 0.1.0 lacks for
v3, written from the cfg semantics (not from upstream's code): the log-mel front end with configurable
window/hop/FFT/centring (:class:`LogMelFeatures`), strided subsampling with ``conv1d`` or ``conv2d`` and any odd
kernel (:class:`StridedSubsampling`), and the Conformer convolution's ``layer_norm`` variant
(:class:`ChannelLayerNorm`). Parameter names equal gigaam's, so a gigaam ``state_dict`` loads unchanged.

:class:`StridedSubsampling` zeroes each row's frames beyond its length before every convolution, so a padded
batch computes exactly the valid frames of one-by-one runs (an unpadded row is unaffected).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torchaudio
from gigaam.decoder import CTCHead, RNNTHead
from gigaam.decoding import CTCGreedyDecoding, RNNTGreedyDecoding
from gigaam.encoder import ConformerEncoder
from torch import Tensor, nn

from server.models.gigaam_spec import AsrSpec, EncoderSpec, FrontEnd, UnsupportedCheckpoint

__all__ = ["ChannelLayerNorm", "GigaAmNet", "LogMelFeatures", "StridedSubsampling", "build_net"]


class LogMelFeatures(nn.Module):
    """``(B, samples)`` float audio → ``(B, features, frames)`` log-mels and the frame counts."""

    def __init__(self, frontend: FrontEnd) -> None:
        super().__init__()
        self.frontend = frontend
        self.featurizer = nn.Sequential(
            torchaudio.transforms.MelSpectrogram(
                sample_rate=frontend.sample_rate, n_fft=frontend.n_fft, win_length=frontend.win_length,
                hop_length=frontend.hop_length, n_mels=frontend.features, center=frontend.center,
                mel_scale=frontend.mel_scale,
            ),
        )

    def out_len(self, lengths: Tensor) -> Tensor:
        f = self.frontend
        if f.center:
            return torch.div(lengths, f.hop_length, rounding_mode="floor").long() + 1
        return (torch.div(lengths - f.win_length, f.hop_length, rounding_mode="floor") + 1).clamp(min=0).long()

    def forward(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        return torch.log(self.featurizer(wav).clamp(1e-9, 1e9)), self.out_len(lengths)


def _zero_beyond(x: Tensor, lengths: Tensor, time_dim: int) -> Tensor:
    """Zero ``x`` along ``time_dim`` at and beyond each row's length."""
    keep = torch.arange(x.shape[time_dim], device=x.device)[None, :] < lengths[:, None]
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    shape[time_dim] = x.shape[time_dim]
    return x * keep.view(shape).to(x.dtype)


class StridedSubsampling(nn.Module):
    """log2(factor) stride-2 convolutions, each followed by ReLU: ``conv2d`` (over time × mel, then a linear layer
    to ``d_model``) or ``conv1d`` (over time, mels as channels). ``forward(x (B, T, F), lengths)``."""

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.kind = spec.subsampling
        kernel, self.stages = spec.subs_kernel_size, spec.subsampling_factor.bit_length() - 1
        conv = nn.Conv2d if self.kind == "conv2d" else nn.Conv1d
        layers: list[nn.Module] = []
        channels = 1 if self.kind == "conv2d" else spec.feat_in
        for _ in range(self.stages):
            layers += [conv(channels, spec.d_model, kernel, stride=2, padding=(kernel - 1) // 2), nn.ReLU()]
            channels = spec.d_model
        self.conv = nn.Sequential(*layers)
        if self.kind == "conv2d":
            mels = spec.feat_in
            for _ in range(self.stages):
                mels = self._stage_length(mels, kernel)
            self.out = nn.Linear(spec.d_model * mels, spec.d_model)

    @staticmethod
    def _stage_length(length: Any, kernel: int) -> Any:
        return (length + 2 * ((kernel - 1) // 2) - kernel) // 2 + 1

    def output_length(self, lengths: Tensor) -> Tensor:
        for module in self.conv:
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                lengths = self._stage_length(lengths, module.kernel_size[0])
        return lengths

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = x[:, None] if self.kind == "conv2d" else x.transpose(1, 2)  # (B, 1, T, F) or (B, F, T): time on dim 2
        lengths = lengths.long()
        for module in self.conv:
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                x = module(_zero_beyond(x, lengths, 2))
                lengths = self._stage_length(lengths, module.kernel_size[0])
            else:
                x = module(x)
        if self.kind == "conv2d":
            b, _, t, _ = x.shape
            return self.out(x.transpose(1, 2).reshape(b, t, -1)), lengths
        return x.transpose(1, 2), lengths


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a ``(B, C, T)`` activation (the Conformer convolution's ``layer_norm``)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def build_encoder(spec: EncoderSpec) -> ConformerEncoder:
    """gigaam's Conformer with rechka's subsampling and, for ``layer_norm``, its convolution norm swapped in."""
    encoder = ConformerEncoder(
        feat_in=spec.feat_in, n_layers=spec.n_layers, d_model=spec.d_model,
        subsampling_factor=spec.subsampling_factor, ff_expansion_factor=spec.ff_expansion_factor,
        self_attention_model=spec.self_attention_model, n_heads=spec.n_heads, pos_emb_max_len=spec.pos_emb_max_len,
        conv_kernel_size=spec.conv_kernel_size, flash_attn=False,
    )
    encoder.pre_encode = StridedSubsampling(spec)
    if spec.conv_norm_type == "layer_norm":
        for layer in encoder.layers:
            layer.conv.batch_norm = ChannelLayerNorm(spec.d_model)
    return encoder


class GigaAmNet(nn.Module):
    """preprocessor → encoder → head, with gigaam's attribute names; ``decoding`` is gigaam's greedy decoder (the
    offline reference) and holds the tokenizer. ``forward(wav (B, n), lengths)`` → ``((B, D, T), frames)``."""

    def __init__(self, spec: AsrSpec) -> None:
        super().__init__()
        self.spec = spec
        self.preprocessor = LogMelFeatures(spec.frontend)
        self.encoder = build_encoder(spec.encoder)
        vocabulary = list(spec.vocabulary) if spec.vocabulary is not None else []
        if spec.head == "ctc":
            self.head: nn.Module = CTCHead(**spec.head_sizes)
            self.decoding: Any = CTCGreedyDecoding(vocabulary, spec.tokenizer_path)
        else:
            self.head = RNNTHead(decoder=dict(spec.head_sizes["decoder"]), joint=dict(spec.head_sizes["joint"]))
            self.decoding = RNNTGreedyDecoding(vocabulary, spec.tokenizer_path, spec.max_symbols)
        tokens = len(self.decoding.tokenizer)
        if tokens != spec.num_classes - 1:
            raise UnsupportedCheckpoint(
                f"the tokenizer has {tokens} tokens but the head {spec.num_classes} classes; the blank must be the "
                "one extra, last class. Is the tokenizer file the one published with this checkpoint?")

    def forward(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        features, frames = self.preprocessor(wav, lengths)
        device = wav.device.type
        with torch.autocast(device_type=device, dtype=torch.float16, enabled=device == "cuda"):
            return self.encoder(features, frames)


def build_net(spec: AsrSpec, state_dict: Optional[dict[str, Tensor]] = None) -> GigaAmNet:
    """The network for ``spec`` in eval mode, with ``state_dict`` loaded.

    The preprocessor's buffers (window, mel filters) may be absent from a checkpoint (gigaam's v1/v2 are loaded
    non-strictly); any other missing or unexpected tensor means the cfg does not describe the weights, and is an
    error rather than a silently random or ignored weight.
    """
    net = GigaAmNet(spec)
    if state_dict is not None:
        try:
            missing, unexpected = net.load_state_dict(state_dict, strict=False)
        except RuntimeError as exc:  # tensor shapes that differ from the cfg's
            raise UnsupportedCheckpoint(f"the checkpoint's tensors do not fit its own cfg ({exc}).") from None
        wrong = [k for k in missing + unexpected if not k.startswith("preprocessor.")]
        if wrong:
            raise UnsupportedCheckpoint(
                f"the checkpoint does not match its own cfg: {len(wrong)} tensors are missing or unexpected "
                f"(first: {', '.join(wrong[:3])}). Use an unmodified gigaam checkpoint.")
    return net.eval()
