"""A GigaAM checkpoint's ``cfg`` → a validated, frozen :class:`AsrSpec`: what any engine must compute, and nothing else.

Every field of ``preprocessor``, ``encoder``, ``head`` and ``decoding`` that changes the computation is read here;
a field this module does not know, a ``_target_`` other than gigaam's class for that part, or a value outside the
supported set raises :class:`UnsupportedCheckpoint` naming the field, instead of computing something silently
different. The fields are those of gigaam's constructors up to the GigaAM-v3 release (upstream bd77657):

* ``preprocessor`` (log-mel): ``sample_rate``, ``features``, and since v3 ``n_fft``, ``win_length``,
  ``hop_length``, ``center`` (defaults 400/400/160/True, gigaam 0.1.0's fixed values) and ``mel_scale`` (``htk``,
  torchaudio's default, the only one accepted). With ``center=False`` the STFT takes no padding and an utterance of
  ``n`` samples has ``(n - win_length) // hop_length + 1`` frames (none when ``n < win_length``).
* ``encoder`` (Conformer): v2's fields, and since v3 ``subsampling`` (``conv2d`` or ``conv1d``), ``subs_kernel_size``
  (default 3) and ``conv_norm_type`` (``batch_norm`` or ``layer_norm``). ``flash_attn`` and
  ``activation_checkpointing`` choose kernels/training memory, not results; they are accepted and not used.
* ``head``: ``CTCHead`` (``feat_in``, ``num_classes``) or ``RNNTHead`` (``decoder`` and ``joint`` sizes).
* ``decoding``: ``vocabulary`` (characters) or ``model_path`` (a SentencePiece model; the e2e models and v1_rnnt),
  and for RNNT ``max_symbols_per_step`` (default 10).

The blank is the last class (``num_classes - 1``); the tokenizer must have exactly ``num_classes - 1`` tokens
(checked where the tokenizer is loaded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from server.models.cache import ModelUnavailable
from streaming.config import SAMPLE_RATE

__all__ = ["AsrSpec", "EncoderSpec", "FrontEnd", "UnsupportedCheckpoint", "parse_cfg"]


class UnsupportedCheckpoint(ModelUnavailable):
    """A checkpoint whose cfg asks for a computation rechka does not implement (the message names the field)."""


@dataclass(frozen=True)
class FrontEnd:
    """Log-mel features: torchaudio ``MelSpectrogram`` (Hann window, power 2) then ``log(clamp(x, 1e-9, 1e9))``."""

    sample_rate: int = SAMPLE_RATE
    features: int = 64
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    center: bool = True
    mel_scale: str = "htk"

    def frames(self, n_samples: int) -> int:
        """Feature frames of an ``n_samples`` utterance (gigaam's ``out_len``)."""
        if self.center:
            return n_samples // self.hop_length + 1
        return max((n_samples - self.win_length) // self.hop_length + 1, 0)

    @property
    def min_samples(self) -> int:
        """The shortest audio that gives a frame (shorter audio transcribes as empty)."""
        return 1 if self.center else self.win_length


@dataclass(frozen=True)
class EncoderSpec:
    """The Conformer encoder's shape."""

    feat_in: int
    n_layers: int
    d_model: int
    n_heads: int
    subsampling: str = "conv2d"
    subs_kernel_size: int = 3
    subsampling_factor: int = 4
    ff_expansion_factor: int = 4
    self_attention_model: str = "rotary"
    pos_emb_max_len: int = 5000
    conv_kernel_size: int = 31
    conv_norm_type: str = "batch_norm"


@dataclass(frozen=True)
class AsrSpec:
    """Everything that determines a GigaAM model's output, as read from its cfg.

    head: ``ctc`` or ``rnnt``; head_sizes: the head's constructor arguments (RNNT: ``{"decoder": {...},
    "joint": {...}}``). vocabulary: characters, or ``None`` with ``tokenizer_path`` for SentencePiece.
    """

    frontend: FrontEnd
    encoder: EncoderSpec
    head: str
    num_classes: int
    head_sizes: Mapping[str, Any]
    vocabulary: Optional[tuple[str, ...]]
    tokenizer_path: Optional[str]
    max_symbols: int = 10

    @property
    def blank_id(self) -> int:
        return self.num_classes - 1

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per encoder frame (hop × subsampling; 640 = 40 ms for every published model)."""
        return self.frontend.hop_length * self.encoder.subsampling_factor

    @property
    def frame_offset(self) -> int:
        """Samples by which frame ``i`` lies later than ``i * samples_per_frame``: ``win_length // 2`` without
        centring (each STFT window starts at its frame's hop instead of being centred on it), else 0."""
        return 0 if self.frontend.center else self.frontend.win_length // 2


_TARGETS = {
    "preprocessor": "gigaam.preprocess.FeatureExtractor",
    "encoder": "gigaam.encoder.ConformerEncoder",
    "ctc": "gigaam.decoder.CTCHead",
    "rnnt": "gigaam.decoder.RNNTHead",
    "ctc_decoding": "gigaam.decoding.CTCGreedyDecoding",
    "rnnt_decoding": "gigaam.decoding.RNNTGreedyDecoding",
}
_IGNORED_ENCODER = ("flash_attn", "activation_checkpointing")  # kernels and training memory, not results
_TOP_LEVEL = ("model_class", "model_name", "sample_rate", "preprocessor", "encoder", "head", "decoding")


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _fields(section: str, cfg: Mapping[str, Any], known: Mapping[str, Callable[[Any], bool]],
            ignored: tuple[str, ...] = (), target: Optional[str] = None) -> dict[str, Any]:
    """The known fields of one cfg section, each checked; unknown fields and bad values are refused."""
    if not isinstance(cfg, Mapping):
        raise UnsupportedCheckpoint(f"GigaAM cfg.{section} must be a mapping, not {type(cfg).__name__}.")
    values = dict(cfg)
    found = values.pop("_target_", None)
    if target is not None and found != target:
        raise UnsupportedCheckpoint(
            f"GigaAM cfg.{section}._target_ is {found!r}; rechka implements only {target!r}. Use a gigaam "
            "checkpoint (v1, v2 or v3) or convert yours to gigaam's components.")
    unknown = sorted(set(values) - set(known) - set(ignored))
    if unknown:
        raise UnsupportedCheckpoint(
            f"GigaAM cfg.{section} has field(s) {', '.join(unknown)} that rechka's loader does not understand "
            f"(it knows {', '.join(sorted(known))}). Loading it anyway could compute something different from what "
            "the checkpoint was trained with, so it is refused; rechka's loader (server/models/gigaam_spec.py) "
            "must learn the field first.")
    for name, ok in known.items():
        if name in values and not ok(values[name]):
            raise UnsupportedCheckpoint(f"GigaAM cfg.{section}.{name} = {values[name]!r} is not supported.")
    return {k: v for k, v in values.items() if k in known}


def _frontend(cfg: Mapping[str, Any]) -> FrontEnd:
    known = {"sample_rate": lambda v: v == SAMPLE_RATE, "features": _positive, "n_fft": _positive,
             "win_length": _positive, "hop_length": _positive, "center": lambda v: isinstance(v, bool),
             "mel_scale": lambda v: v == "htk"}
    values = _fields("preprocessor", cfg, known, target=_TARGETS["preprocessor"])
    frontend = FrontEnd(**values)
    if frontend.win_length > frontend.n_fft:
        raise UnsupportedCheckpoint(f"GigaAM cfg.preprocessor: win_length {frontend.win_length} is longer than "
                                    f"n_fft {frontend.n_fft}; torchaudio cannot compute that STFT.")
    if not frontend.center and frontend.n_fft != frontend.win_length:
        raise UnsupportedCheckpoint(
            "GigaAM cfg.preprocessor: center=False with n_fft != win_length gives a frame count that differs from "
            "gigaam's (len - win_length) // hop_length + 1; rechka refuses it rather than misalign frames.")
    return frontend


def _encoder(cfg: Mapping[str, Any], features: int) -> EncoderSpec:
    known = {
        "feat_in": lambda v: v == features, "n_layers": _positive, "d_model": _positive, "n_heads": _positive,
        "subsampling": lambda v: v in ("conv2d", "conv1d"),
        "subs_kernel_size": lambda v: _positive(v) and v % 2 == 1,
        "subsampling_factor": lambda v: _positive(v) and v > 1 and 2 ** round(math.log2(v)) == v,
        "ff_expansion_factor": _positive, "self_attention_model": lambda v: v in ("rotary", "rel_pos"),
        "pos_emb_max_len": _positive, "conv_kernel_size": lambda v: _positive(v) and v % 2 == 1,
        "conv_norm_type": lambda v: v in ("batch_norm", "layer_norm"),
    }
    values = _fields("encoder", cfg, known, _IGNORED_ENCODER, target=_TARGETS["encoder"])
    for required in ("feat_in", "n_layers", "d_model", "n_heads"):
        if required not in values:
            raise UnsupportedCheckpoint(f"GigaAM cfg.encoder has no {required}; the checkpoint is incomplete.")
    spec = EncoderSpec(**values)
    if spec.d_model % spec.n_heads:
        raise UnsupportedCheckpoint(f"GigaAM cfg.encoder: d_model {spec.d_model} is not a multiple of n_heads.")
    return spec


def _head(cfg: Mapping[str, Any], d_model: int) -> tuple[str, int, dict[str, Any]]:
    target = cfg.get("_target_") if isinstance(cfg, Mapping) else None
    if target not in (_TARGETS["ctc"], _TARGETS["rnnt"]):
        raise UnsupportedCheckpoint(f"GigaAM cfg.head._target_ is {target!r}; rechka implements "
                                    f"{_TARGETS['ctc']} and {_TARGETS['rnnt']}.")
    kind = "ctc" if target == _TARGETS["ctc"] else "rnnt"
    if kind == "ctc":
        values = _fields("head", cfg, {"feat_in": lambda v: v == d_model, "num_classes": _positive},
                         target=_TARGETS["ctc"])
        if set(values) != {"feat_in", "num_classes"}:
            raise UnsupportedCheckpoint("GigaAM cfg.head (CTCHead) needs feat_in and num_classes.")
        return kind, values["num_classes"], values
    values = _fields("head", cfg, {"decoder": lambda v: isinstance(v, Mapping), "joint": lambda v: isinstance(v, Mapping)},
                     target=_TARGETS["rnnt"])
    decoder = _fields("head.decoder", values.get("decoder", {}),
                      {"pred_hidden": _positive, "pred_rnn_layers": _positive, "num_classes": _positive})
    classes = decoder.get("num_classes")
    joint = _fields("head.joint", values.get("joint", {}),
                    {"enc_hidden": lambda v: v == d_model, "pred_hidden": lambda v: v == decoder.get("pred_hidden"),
                     "joint_hidden": _positive, "num_classes": lambda v: v == classes})
    if len(decoder) != 3 or len(joint) != 4:
        raise UnsupportedCheckpoint("GigaAM cfg.head (RNNTHead) needs decoder {pred_hidden, pred_rnn_layers, "
                                    "num_classes} and joint {enc_hidden, pred_hidden, joint_hidden, num_classes}.")
    return kind, classes, {"decoder": decoder, "joint": joint}


def parse_cfg(cfg: Mapping[str, Any]) -> AsrSpec:
    """Validate a gigaam ASR cfg (a DictConfig or plain mapping) into an :class:`AsrSpec`."""
    unknown = sorted(set(cfg) - set(_TOP_LEVEL))
    if unknown:
        raise UnsupportedCheckpoint(
            f"GigaAM cfg has top-level field(s) {', '.join(unknown)} that rechka's loader does not understand "
            f"(it knows {', '.join(_TOP_LEVEL)}); it is refused rather than loaded partially.")
    if cfg.get("sample_rate", SAMPLE_RATE) != SAMPLE_RATE:
        raise UnsupportedCheckpoint(f"GigaAM cfg.sample_rate is {cfg.get('sample_rate')}; rechka runs at 16000 Hz.")
    frontend = _frontend(cfg.get("preprocessor", {}))
    encoder = _encoder(cfg.get("encoder", {}), frontend.features)
    head, num_classes, sizes = _head(cfg.get("head", {}), encoder.d_model)
    if cfg.get("model_class", head) != head:
        raise UnsupportedCheckpoint(f"GigaAM cfg.model_class is {cfg.get('model_class')!r} but its head is {head}.")
    decoding_known: dict[str, Callable[[Any], bool]] = {
        "vocabulary": lambda v: v is None or all(isinstance(t, str) for t in v),
        "model_path": lambda v: v is None or isinstance(v, str),
    }
    if head == "rnnt":
        decoding_known["max_symbols_per_step"] = _positive
    decoding = _fields("decoding", cfg.get("decoding", {}), decoding_known, target=_TARGETS[f"{head}_decoding"])
    path = decoding.get("model_path")
    vocabulary = None if path is not None else tuple(decoding.get("vocabulary") or ())
    if vocabulary is not None and len(vocabulary) != num_classes - 1:
        raise UnsupportedCheckpoint(
            f"GigaAM cfg: the head has {num_classes} classes but the vocabulary {len(vocabulary)} characters; "
            "the blank must be the one extra, last class.")
    return AsrSpec(frontend=frontend, encoder=encoder, head=head, num_classes=num_classes, head_sizes=sizes,
                   vocabulary=vocabulary, tokenizer_path=path, max_symbols=decoding.get("max_symbols_per_step", 10))
