"""PyanNet, pyannote's speaker segmentation network, in plain torch: no pyannote.audio, no lightning.

Importing ``pyannote.audio`` costs ~17 s of server start-up (it pulls in lightning, torch._dynamo, torchmetrics,
scipy.signal); this module is the network alone, enough to run the two checkpoints rechka ships (the whisperx PyanNet
and segmentation-3.0, see :mod:`server.models.cache`), whose weights load into it with ``strict=True``
(:func:`load_pyannet`; :mod:`server.models.checkpoint` reads them without pyannote's classes).

The network: SincNet (instance norm of the waveform; a learnt band-pass sinc filterbank of 80 filters of 251 taps —
40 cosine and 40 sine band-pass pairs — taken in absolute value; two 5-tap convolutions of 60 channels; each stage
max-pooled by 3, instance-normed and leaky-ReLU'd) → a bidirectional multi-layer LSTM → leaky-ReLU linear layers →
a linear classifier → the task's activation: a sigmoid for multi-label (and binary) tasks, a log-softmax over the
speaker sets of a powerset task (:class:`PowersetToSpeakers` turns those into per-speaker probabilities).
Frame geometry (:meth:`PyanNet.num_frames`, :attr:`PyanNet.receptive_field`) follows from the convolution and pooling
kernels and strides, as pyannote computes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

SINC_FILTERS = 80
"""Filters of the sinc filterbank: half cosine (even) band-pass filters, half sine (odd) ones."""
SINC_TAPS = 251
SINC_MIN_LOW_HZ = 50.0
SINC_MIN_BAND_HZ = 50.0
CONV_CHANNELS = 60
CONV_TAPS = 5
POOL = 3
PROBLEMS = {0: "binary", 1: "mono-label", 2: "multi-label", 3: "representation", 4: "regression"}
"""pyannote's ``Problem`` enum values → the names used here."""


@dataclass(frozen=True)
class SegmentationTask:
    """What a segmentation checkpoint was trained for (pyannote's ``Specifications``, as plain values).

    ``problem``: one of :data:`PROBLEMS`' names; ``duration``: training window in seconds; ``classes``: the local
    speakers; ``powerset_max_classes``: at most this many speakers at once when the output is a powerset (None: not).
    """

    problem: str
    duration: float
    classes: tuple[str, ...]
    powerset_max_classes: Optional[int] = None

    def __post_init__(self) -> None:
        if self.problem not in ("binary", "mono-label", "multi-label"):
            raise ValueError(f"a segmentation task is binary, mono-label or multi-label, not {self.problem!r}")
        if self.powerset_max_classes is not None and self.problem != "mono-label":
            raise ValueError("a powerset segmentation task must be mono-label")
        if self.duration <= 0 or not self.classes:
            raise ValueError("a segmentation task needs a positive duration and at least one class")

    @property
    def powerset(self) -> bool:
        return self.powerset_max_classes is not None

    @property
    def dimension(self) -> int:
        """Outputs per frame: one per class, or one per speaker set of a powerset."""
        if self.powerset_max_classes is None:
            return len(self.classes)
        return sum(math.comb(len(self.classes), k) for k in range(self.powerset_max_classes + 1))


@dataclass(frozen=True)
class FrameGeometry:
    """Where output frames lie in the input, in seconds: frame ``i`` covers ``start + i * step`` for ``duration``."""

    start: float
    duration: float
    step: float


@dataclass(frozen=True)
class PyanNetConfig:
    """PyanNet's hyper-parameters (pyannote's defaults where a checkpoint does not say)."""

    sample_rate: int = 16000
    sinc_stride: int = 10
    lstm_hidden: int = 128
    lstm_layers: int = 2
    bidirectional: bool = True
    lstm_dropout: float = 0.0
    linear_hidden: int = 128
    linear_layers: int = 2

    def __post_init__(self) -> None:
        if self.sample_rate != 16000:
            raise ValueError("PyanNet's SincNet only supports 16 kHz audio")
        if min(self.sinc_stride, self.lstm_hidden, self.lstm_layers, self.linear_hidden) < 1 or self.linear_layers < 0:
            raise ValueError("PyanNet sizes must be positive (linear_layers may be 0)")

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> "PyanNetConfig":
        """From a pyannote checkpoint's ``hyper_parameters`` (``sample_rate``, ``sincnet``, ``lstm``, ``linear``)."""
        sincnet, lstm, linear = (dict(hparams.get(k) or {}) for k in ("sincnet", "lstm", "linear"))
        if not lstm.get("monolithic", True):
            raise ValueError("only monolithic-LSTM PyanNet checkpoints are supported")
        if not lstm.get("batch_first", True):
            raise ValueError("only batch-first PyanNet checkpoints are supported")
        return cls(sample_rate=int(hparams.get("sample_rate", 16000)), sinc_stride=int(sincnet.get("stride", 10)),
                   lstm_hidden=int(lstm.get("hidden_size", 128)), lstm_layers=int(lstm.get("num_layers", 2)),
                   bidirectional=bool(lstm.get("bidirectional", True)), lstm_dropout=float(lstm.get("dropout", 0.0)),
                   linear_hidden=int(linear.get("hidden_size", 128)), linear_layers=int(linear.get("num_layers", 2)))

    @property
    def kernels(self) -> tuple[tuple[int, int], ...]:
        """``(size, stride)`` of each convolution and pooling along time, in order."""
        return ((SINC_TAPS, self.sinc_stride), (POOL, POOL), (CONV_TAPS, 1), (POOL, POOL), (CONV_TAPS, 1), (POOL, POOL))


class SincFilterbank(nn.Module):
    """The learnt band-pass sinc filters (80 × 251 taps) of SincNet's first layer.

    Each of the 40 learnt bands has a low cut-off ``50 + |low_hz_|`` and a high one ``low + 50 + |band_hz_|`` (at most
    Nyquist). Its cosine filter is the difference of two windowed sinc low-pass filters; its sine filter the matching
    odd (Hilbert-pair) filter; both are divided by twice the band width. ``window_`` (the first half of a Hamming
    window) and ``n_`` (``2π t`` at the left half's taps) are kept as buffers, as the checkpoints store them.
    """

    def __init__(self, sample_rate: int = 16000, filters: int = SINC_FILTERS, taps: int = SINC_TAPS) -> None:
        super().__init__()
        if taps % 2 == 0 or filters % 2:
            raise ValueError("the sinc filterbank needs an odd number of taps and an even number of filters")
        self.sample_rate, self.taps = float(sample_rate), taps
        half = taps // 2
        self.low_hz_ = nn.Parameter(torch.zeros(filters // 2, 1))
        self.band_hz_ = nn.Parameter(torch.zeros(filters // 2, 1))
        positions = torch.arange(taps, dtype=torch.float64)[:half]
        self.register_buffer("window_", (0.54 - 0.46 * torch.cos(2 * math.pi * positions / (taps - 1))).float())
        self.register_buffer("n_", 2 * math.pi * torch.arange(-half, 0.0).view(1, -1) / self.sample_rate)

    def forward(self) -> torch.Tensor:
        """The filters, ``(80, 1, 251)``: the 40 cosine ones, then the 40 sine ones."""
        low = SINC_MIN_LOW_HZ + torch.abs(self.low_hz_)
        high = torch.clamp(low + SINC_MIN_BAND_HZ + torch.abs(self.band_hz_), SINC_MIN_LOW_HZ, self.sample_rate / 2)
        band = (high - low)[:, 0]
        phase_low, phase_high = low @ self.n_, high @ self.n_
        scale = self.n_ / 2
        even_left = (torch.sin(phase_high) - torch.sin(phase_low)) / scale * self.window_
        odd_left = (torch.cos(phase_low) - torch.cos(phase_high)) / scale * self.window_
        centre = band.view(-1, 1)
        even = torch.cat([even_left, 2 * centre, torch.flip(even_left, dims=[1])], dim=1)
        odd = torch.cat([odd_left, torch.zeros_like(centre), -torch.flip(odd_left, dims=[1])], dim=1)
        bank = torch.cat([even, odd], dim=0) / (2 * torch.cat([band, band])[:, None])
        return bank.view(-1, 1, self.taps)


class SincConv(nn.Module):
    """Convolution of a mono waveform with the sinc filterbank (no padding)."""

    def __init__(self, sample_rate: int, stride: int) -> None:
        super().__init__()
        self.filterbank = SincFilterbank(sample_rate)
        self.stride = stride

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        return F.conv1d(waveforms, self.filterbank(), stride=self.stride)


class SincNet(nn.Module):
    """``(batch, 1, samples)`` → ``(batch, 60, frames)`` features."""

    def __init__(self, sample_rate: int = 16000, stride: int = 10) -> None:
        super().__init__()
        self.wav_norm1d = nn.InstanceNorm1d(1, affine=True)
        self.conv1d = nn.ModuleList([SincConv(sample_rate, stride), nn.Conv1d(SINC_FILTERS, CONV_CHANNELS, CONV_TAPS),
                                     nn.Conv1d(CONV_CHANNELS, CONV_CHANNELS, CONV_TAPS)])
        self.pool1d = nn.ModuleList([nn.MaxPool1d(POOL, stride=POOL) for _ in range(3)])
        self.norm1d = nn.ModuleList([nn.InstanceNorm1d(n, affine=True)
                                     for n in (SINC_FILTERS, CONV_CHANNELS, CONV_CHANNELS)])

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        return self.after_filterbank(self.conv1d[0](self.wav_norm1d(waveforms)))

    def after_filterbank(self, filtered: torch.Tensor) -> torch.Tensor:
        """Everything after the sinc convolution: ``(batch, 80, frames)`` filter responses of the normalised
        waveform → features (the stage :class:`~server.models.sinc_reuse.SincReuse` resumes at)."""
        outputs = filtered
        for stage, (conv, pool, norm) in enumerate(zip(self.conv1d, self.pool1d, self.norm1d)):
            if stage:
                outputs = conv(outputs)
            else:
                outputs = torch.abs(outputs)  # the sinc filters' responses are signed; their magnitude is the feature
            outputs = F.leaky_relu(norm(pool(outputs)))
        return outputs


class PyanNet(nn.Module):
    """SincNet → LSTM → linear layers → classifier → activation:
    ``(batch, 1, samples)`` → ``(batch, frames, dimension)``."""

    def __init__(self, task: SegmentationTask, config: PyanNetConfig = PyanNetConfig()) -> None:
        super().__init__()
        self.task, self.config = task, config
        self.sample_rate = config.sample_rate
        self.sincnet = SincNet(config.sample_rate, config.sinc_stride)
        self.lstm = nn.LSTM(CONV_CHANNELS, config.lstm_hidden, num_layers=config.lstm_layers,
                            bidirectional=config.bidirectional, dropout=config.lstm_dropout, batch_first=True)
        width = config.lstm_hidden * (2 if config.bidirectional else 1)
        sizes = [width] + [config.linear_hidden] * config.linear_layers
        self.linear = nn.ModuleList([nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])])
        self.classifier = nn.Linear(sizes[-1], task.dimension)
        self.activation: nn.Module = nn.LogSoftmax(dim=-1) if task.problem == "mono-label" else nn.Sigmoid()

    @property
    def specifications(self) -> SegmentationTask:
        """The task (named like pyannote's attribute, so the adapter reads either model alike)."""
        return self.task

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        return self.head(self.sincnet(waveforms))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """SincNet's features ``(batch, 60, frames)`` → the output (LSTM, linear layers, classifier, activation)."""
        outputs, _ = self.lstm(features.transpose(1, 2))
        for linear in self.linear:
            outputs = F.leaky_relu(linear(outputs))
        return self.activation(self.classifier(outputs))

    def num_frames(self, num_samples: int) -> int:
        """Output frames for ``num_samples`` input samples; as pyannote's, not clamped (below one receptive field
        the count is meaningless, even negative: callers pad such input to one frame)."""
        frames = num_samples
        for size, stride in self.config.kernels:
            frames = 1 + (frames - size) // stride
        return frames

    def receptive_field_size(self, num_frames: int = 1) -> int:
        """Input samples that ``num_frames`` consecutive output frames depend on."""
        size = num_frames
        for kernel, stride in reversed(self.config.kernels):
            size = kernel + (size - 1) * stride
        return size

    def receptive_field_center(self, frame: int = 0) -> int:
        """Input sample at the centre of output frame ``frame``'s receptive field."""
        centre = frame
        for kernel, stride in reversed(self.config.kernels):
            centre = centre * stride + (kernel - 1) // 2
        return centre

    @property
    def receptive_field(self) -> FrameGeometry:
        size = self.receptive_field_size(1)
        start = self.receptive_field_center(0) - (size - 1) / 2
        step = self.receptive_field_size(2) - size
        return FrameGeometry(start / self.sample_rate, size / self.sample_rate, step / self.sample_rate)


class PowersetToSpeakers(nn.Module):
    """Log-probabilities over speaker sets → soft per-speaker probabilities: ``exp(log p) @ mapping``.

    Sets are ordered by size, then lexicographically (pyannote's order): with 3 speakers and at most 2 at once,
    ``{}, {0}, {1}, {2}, {0,1}, {0,2}, {1,2}``; ``mapping[s, k]`` is 1 when speaker ``k`` is in set ``s``.
    """

    def __init__(self, speakers: int, max_together: int) -> None:
        super().__init__()
        if not 0 < max_together <= speakers:
            raise ValueError("a powerset needs 0 < max_together <= speakers")
        sets = [group for size in range(max_together + 1) for group in combinations(range(speakers), size)]
        mapping = torch.zeros(len(sets), speakers)
        for row, group in enumerate(sets):
            mapping[row, list(group)] = 1.0
        self.register_buffer("mapping", mapping, persistent=False)

    def forward(self, log_probabilities: torch.Tensor) -> torch.Tensor:
        return torch.exp(log_probabilities) @ self.mapping


def load_pyannet(checkpoint: Any) -> PyanNet:
    """A :class:`PyanNet` in eval mode from a pyannote PyanNet checkpoint file (its weights loaded with
    ``strict=True``); ``ValueError`` when the file is not one (another architecture, a multi-task model…)."""
    from server.models.checkpoint import read_pyannote_checkpoint

    content = read_pyannote_checkpoint(checkpoint)
    if content.architecture.rsplit(".", 1)[-1] != "PyanNet":
        raise ValueError(f"{checkpoint} holds a {content.architecture}, not a PyanNet")
    model = PyanNet(content.task, PyanNetConfig.from_hparams(content.hparams))
    model.load_state_dict(content.state_dict, strict=True)
    return model.eval()
