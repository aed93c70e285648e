"""What the GigaAM adapter needs from gigaam 0.1.0 beyond its public API, written against torch 2.9.

* :func:`load_checkpoint`: ``torch.load`` with ``weights_only=True`` after allow-listing the omegaconf classes that a
  gigaam checkpoint's ``cfg`` pickles (torch ≥ 2.6 refuses them otherwise).
* :func:`resolve_checkpoint`: a model name → the file in gigaam's cache, downloading it from gigaam's URL with a
  short socket timeout into a temporary file first (gigaam's own download has no timeout and leaves a truncated
  file behind when interrupted). Anything that cannot be supplied raises
  :class:`server.models.cache.ModelUnavailable`.
* :func:`random_config`: the full-size v2 architectures, for speed benchmarks with random weights.
* :func:`encode_batch`: one encoder pass over a ragged batch whose valid frames equal those of unpadded,
  one-by-one runs (features per utterance, padding zeroed between the subsampling convolutions).
"""

from __future__ import annotations

import collections
import os
import typing
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional, Sequence

import gigaam
import omegaconf
import torch
from gigaam.model import GigaAMASR
from omegaconf import DictConfig, ListConfig, OmegaConf

from server.models.cache import ModelUnavailable  # one exception for all unavailable weights (re-exported here)

#: Names gigaam publishes ASR checkpoints under; ``ctc``/``rnnt`` are gigaam's aliases for the v2 models.
MODEL_NAMES: tuple[str, ...] = ("v2_ctc", "v2_rnnt", "v1_ctc", "v1_rnnt")
ALIASES: dict[str, str] = {"ctc": "v2_ctc", "rnnt": "v2_rnnt"}
RANDOM_PREFIX = "random:"
RANDOM_MODELS: tuple[str, ...] = ("v2_ctc", "v2_rnnt")
DEFAULT_CACHE_DIR = Path(gigaam._CACHE_DIR)
DEFAULT_URL = gigaam._URL_DIR
V2_VOCABULARY: list[str] = [" "] + [chr(c) for c in range(ord("а"), ord("я") + 1)]

_SAFE_GLOBALS: list[Any] = [
    DictConfig,
    ListConfig,
    omegaconf.base.ContainerMetadata,
    omegaconf.base.Metadata,
    omegaconf.nodes.AnyNode,
    omegaconf.nodes.StringNode,
    omegaconf.nodes.IntegerNode,
    omegaconf.nodes.FloatNode,
    omegaconf.nodes.BooleanNode,
    omegaconf.nodes.BytesNode,
    omegaconf.nodes.PathNode,
    typing.Any,
    dict,
    list,
    tuple,
    set,
    int,
    float,
    bool,
    str,
    collections.defaultdict,
    collections.OrderedDict,
]


def allow_omegaconf_globals() -> None:
    """Allow-list, process-wide, the omegaconf classes a gigaam ``cfg`` pickles, for ``weights_only`` loading."""
    torch.serialization.add_safe_globals(_SAFE_GLOBALS)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a gigaam checkpoint (``{"cfg": DictConfig, "state_dict": ...}``) with ``weights_only=True``."""
    allow_omegaconf_globals()
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # unpickling errors come in many types
        raise ModelUnavailable(
            f"'{path}' could not be read as a GigaAM checkpoint ({type(exc).__name__}: {exc}). Pass a checkpoint "
            "in gigaam's format (a torch file holding 'cfg' and 'state_dict') with --asr-model /path/to/ckpt."
        ) from exc
    if not isinstance(checkpoint, dict) or "cfg" not in checkpoint or "state_dict" not in checkpoint:
        raise ModelUnavailable(
            f"'{path}' is not a GigaAM checkpoint: it must be a dict with 'cfg' (an OmegaConf config) and "
            "'state_dict'. Pass a checkpoint in gigaam's format with --asr-model /path/to/ckpt."
        )
    return checkpoint


def canonical_name(name: str) -> Optional[str]:
    """``v2_ctc`` for ``v2_ctc`` or ``ctc``; ``None`` if ``name`` is not a published ASR model."""
    name = ALIASES.get(name, name)
    return name if name in MODEL_NAMES else None


def _fetch(url: str, path: Path, timeout_s: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + f".{os.getpid()}.part")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(partial, "wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def resolve_checkpoint(
    name: str, cache_dir: Path = DEFAULT_CACHE_DIR, url: str = DEFAULT_URL, timeout_s: float = 10.0
) -> tuple[Path, Optional[Path]]:
    """(checkpoint, tokenizer or ``None``) for a published model name, from the cache or downloaded into it."""
    canonical = canonical_name(name)
    if canonical is None:
        raise ModelUnavailable(
            f"'{name}' is neither a GigaAM model name ({', '.join(MODEL_NAMES)}) nor an existing checkpoint file. "
            "Pass one of those names (weights are downloaded into gigaam's cache) or the path of a checkpoint in "
            "gigaam's format with --asr-model /path/to/ckpt."
        )
    files = [f"{canonical}.ckpt"] + ([f"{canonical}_tokenizer.model"] if canonical == "v1_rnnt" else [])
    paths = []
    for file in files:
        path = Path(cache_dir) / file
        if not path.exists():
            try:
                _fetch(f"{url.rstrip('/')}/{file}", path, timeout_s)
            except (OSError, urllib.error.URLError, ValueError) as exc:
                raise ModelUnavailable(
                    f"GigaAM model '{canonical}' is not available: {path} does not exist and downloading "
                    f"{url.rstrip('/')}/{file} failed ({exc}). Supply the checkpoint with --asr-model "
                    f"/path/to/{canonical}.ckpt, or place the file at {path} (gigaam's cache)"
                    + (" together with its tokenizer" if file.endswith(".ckpt") and len(files) > 1 else "")
                    + "."
                ) from exc
        paths.append(path)
    return paths[0], (paths[1] if len(paths) > 1 else None)


def random_config(name: str) -> DictConfig:
    """gigaam's cfg for the full-size v2 CTC or RNNT architecture (16 × 768 rotary Conformer)."""
    if name not in RANDOM_MODELS:
        raise ModelUnavailable(
            f"'{RANDOM_PREFIX}{name}' is not a random-weights architecture; use one of "
            f"{', '.join(RANDOM_PREFIX + n for n in RANDOM_MODELS)}."
        )
    classes = len(V2_VOCABULARY) + 1
    if name.endswith("ctc"):
        head: dict[str, Any] = {"_target_": "gigaam.decoder.CTCHead", "feat_in": 768, "num_classes": classes}
        decoding: dict[str, Any] = {"_target_": "gigaam.decoding.CTCGreedyDecoding", "vocabulary": V2_VOCABULARY}
    else:
        head = {
            "_target_": "gigaam.decoder.RNNTHead",
            "decoder": {"pred_hidden": 320, "pred_rnn_layers": 1, "num_classes": classes},
            "joint": {"enc_hidden": 768, "pred_hidden": 320, "joint_hidden": 320, "num_classes": classes},
        }
        decoding = {"_target_": "gigaam.decoding.RNNTGreedyDecoding", "vocabulary": V2_VOCABULARY}
    return OmegaConf.create(
        {
            "model_class": name.split("_")[1],
            "model_name": f"{RANDOM_PREFIX}{name}",
            "sample_rate": 16000,
            "preprocessor": {"_target_": "gigaam.preprocess.FeatureExtractor", "sample_rate": 16000, "features": 64},
            "encoder": {
                "_target_": "gigaam.encoder.ConformerEncoder",
                "feat_in": 64,
                "n_layers": 16,
                "d_model": 768,
                "subsampling_factor": 4,
                "ff_expansion_factor": 4,
                "self_attention_model": "rotary",
                "pos_emb_max_len": 5000,
                "n_heads": 16,
                "conv_kernel_size": 5,
                "flash_attn": False,
            },
            "head": head,
            "decoding": decoding,
        }
    )


def build_model(cfg: DictConfig, state_dict: Optional[dict[str, torch.Tensor]] = None) -> GigaAMASR:
    """``GigaAMASR(cfg)`` (hydra-instantiated, as gigaam's ``load_model`` does) with ``state_dict`` loaded.

    Like gigaam, loading is non-strict (checkpoints may lack the preprocessor's buffers), but a missing parameter
    of the encoder or head is an error rather than a silently random weight.
    """
    cfg.encoder.flash_attn = False
    model = GigaAMASR(cfg)
    if state_dict is not None:
        missing, _ = model.load_state_dict(state_dict, strict=False)
        missing = [key for key in missing if not key.startswith("preprocessor.")]
        if missing:
            raise ModelUnavailable(
                f"the checkpoint does not match its own cfg: {len(missing)} tensors are missing "
                f"(first: {', '.join(missing[:3])}). Use an unmodified gigaam checkpoint."
            )
    return model.eval()


def _zero_beyond(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero ``x[b, ..., t, :]`` (time on dim 2 of a 4-D conv activation) for ``t >= lengths[b]``."""
    frames = torch.arange(x.shape[2], device=x.device)
    keep = frames[None, :] < lengths[:, None]
    return x * keep[:, None, :, None].to(x.dtype)


def _conv_length(lengths: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    padding, kernel, stride = conv.padding[0], conv.kernel_size[0], conv.stride[0]
    return torch.div(lengths + 2 * padding - kernel, stride, rounding_mode="floor") + 1


def encode_batch(model: GigaAMASR, wavs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode float32 waveforms (on the model's device) in one pass: ``(B, T, D)`` float32 and frame counts.

    Mirrors ``ConformerEncoder.forward`` except where padding would leak into valid frames: log-mels are computed
    per utterance (the STFT's reflect padding sees the utterance's own end), and the padded frames are zeroed
    before each subsampling convolution, as the zero padding of an unbatched run would have them. Attention and
    the depthwise convolutions are already masked by gigaam.
    """
    device = wavs[0].device
    features, lengths = [], []
    for wav in wavs:
        feats, n = model.preprocessor(wav[None, :], torch.tensor([wav.shape[-1]], device=device))
        features.append(feats[0].transpose(0, 1))
        lengths.append(n)
    x = torch.nn.utils.rnn.pad_sequence(features, batch_first=True)  # (B, T, F), zero beyond each length
    length = torch.cat(lengths)
    encoder = model.encoder
    autocast = torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda")
    with autocast:
        x = x[:, None, :, :]  # (B, 1, T, F) as in StridingSubsampling.forward
        for module in encoder.pre_encode.conv:
            if isinstance(module, torch.nn.Conv2d):
                x = module(_zero_beyond(x, length))
                length = _conv_length(length, module)
            else:
                x = module(x)
        b, _, t, _ = x.shape
        x = encoder.pre_encode.out(x.transpose(1, 2).reshape(b, t, -1))
        x, pos_emb = encoder.pos_enc(x=x)
        valid = torch.arange(t, device=device)[None, :] < length[:, None]
        att_mask = None
        if b > 1:
            pair = valid[:, None, :].expand(b, t, t)
            att_mask = ~torch.logical_and(pair, pair.transpose(1, 2))
        for layer in encoder.layers:
            x = layer(x=x, pos_emb=pos_emb, att_mask=att_mask, pad_mask=~valid)
    return x.float(), length.long()
