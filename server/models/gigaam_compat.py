"""What the GigaAM adapter needs around gigaam 0.1.0, written against torch 2.9.

* :func:`load_checkpoint`: ``torch.load`` with ``weights_only=True`` after allow-listing the omegaconf classes that a
  gigaam checkpoint's ``cfg`` pickles (torch ≥ 2.6 refuses them otherwise).
* :func:`resolve_checkpoint`: a published model name (:mod:`server.models.gigaam_models`) → its files in gigaam's
  cache, downloading missing ones from gigaam's URL with a short socket timeout through a temporary file, the
  checkpoint checked against upstream's MD5 before it is kept. Anything that cannot be supplied raises
  :class:`server.models.cache.ModelUnavailable`.
* :func:`load_net`: a checkpoint → validated :class:`~server.models.gigaam_spec.AsrSpec` → rechka's network.
* :func:`random_config`: the full-size v2/v3 architectures, for speed benchmarks with random weights.
* :func:`encode_batch` = :func:`features_batch` + :func:`encode_features`: one encoder pass over a ragged batch
  whose valid frames equal those of unpadded, one-by-one runs (features per utterance; the subsampling masks each
  row's padding, attention and the depthwise convolutions are masked). ``encode_features`` is what an exported
  engine traces.
"""

from __future__ import annotations

import collections
import hashlib
import os
import typing
from pathlib import Path
from typing import Any, Optional, Sequence

import gigaam
import omegaconf
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from server.models.cache import ModelUnavailable, download  # one exception for all unavailable weights
from server.models.gigaam_models import RANDOM_MODELS, RANDOM_PREFIX, PublishedModel, names, published
from server.models.gigaam_net import GigaAmNet, build_net
from server.models.gigaam_spec import parse_cfg

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
    model = published(name)
    return model.name if model else None


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(model: PublishedModel, file: str, path: Path, url: str, timeout_s: float, progress: bool) -> None:
    """``url/file`` → ``path``; the checkpoint is kept only if its MD5 is the published one."""
    staged = path.with_name(f"{path.name}.{os.getpid()}.unverified")
    try:
        download(f"{url.rstrip('/')}/{file}", staged, f"GigaAM {file}", progress, timeout=timeout_s)
        if file == model.checkpoint_file and (found := _md5(staged)) != model.md5:
            raise ValueError(f"{file} has MD5 {found}, not the published {model.md5}: a corrupt or different file")
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)


def resolve_checkpoint(name: str, cache_dir: Path = DEFAULT_CACHE_DIR, url: str = DEFAULT_URL,
                       timeout_s: float = 10.0, progress: bool = False) -> tuple[Path, Optional[Path]]:
    """(checkpoint, tokenizer or ``None``) for a published model name, from the cache or downloaded into it.

    A file already in the cache is used as it is (it may be one you placed there); a downloaded checkpoint is
    kept only when its MD5 matches upstream's.
    """
    model = published(name)
    if model is None:
        raise ModelUnavailable(
            f"'{name}' is neither a GigaAM model name ({names()}) nor an existing checkpoint file. "
            "Pass one of those names (weights are downloaded into gigaam's cache) or the path of a checkpoint in "
            "gigaam's format with --asr-model /path/to/ckpt."
        )
    paths = []
    for file in model.files:
        path = Path(cache_dir) / file
        if not path.exists():
            try:
                _fetch(model, file, path, url, timeout_s, progress)
            except (OSError, ValueError) as exc:
                raise ModelUnavailable(
                    f"GigaAM model '{model.name}' is not available: {path} does not exist and downloading "
                    f"{url.rstrip('/')}/{file} failed ({exc}). Supply the checkpoint with --asr-model "
                    f"/path/to/{model.checkpoint_file}, or place the file at {path} (gigaam's cache)"
                    + (f" together with {model.tokenizer_file}" if model.tokenizer_file else "")
                    + "; `rechka-fetch-models --asr-model " + model.name + "` does this where the CDN is reachable."
                ) from exc
        paths.append(path)
    return paths[0], (paths[1] if len(paths) > 1 else None)


def load_net(path: Path, tokenizer: Optional[Path] = None) -> GigaAmNet:
    """A gigaam checkpoint file → rechka's network (on the CPU, eval mode), its cfg validated first.

    A SentencePiece tokenizer is ``tokenizer`` if given, else the cfg's ``decoding.model_path`` if that file
    exists, else ``<checkpoint stem>_tokenizer.model`` next to the checkpoint (gigaam's naming).
    """
    checkpoint = load_checkpoint(path)
    cfg = checkpoint["cfg"]
    decoding = cfg.get("decoding") if isinstance(cfg, DictConfig) else None
    if tokenizer is not None or (decoding is not None and decoding.get("model_path") is not None):
        configured = decoding.get("model_path") if decoding is not None else None
        if tokenizer is None:
            sibling = path.with_name(path.stem + "_tokenizer.model")
            tokenizer = Path(configured) if configured and Path(configured).is_file() else sibling
        if not tokenizer.is_file():
            raise ModelUnavailable(
                f"GigaAM checkpoint {path} needs its SentencePiece tokenizer, expected at {tokenizer}. Place the "
                f"tokenizer file there (gigaam publishes it as <model>_tokenizer.model next to the checkpoint)."
            )
        cfg.decoding.model_path = str(tokenizer)
    return build_net(parse_cfg(cfg), checkpoint["state_dict"])


def random_config(name: str) -> DictConfig:
    """gigaam's cfg for a full-size architecture (16 × 768 rotary Conformer): v2 (conv2d subsampling, batch norm,
    centred 25 ms windows) or v3 (conv1d subsampling with kernel 5, layer norm, uncentred 20 ms windows)."""
    if name not in RANDOM_MODELS:
        raise ModelUnavailable(
            f"'{RANDOM_PREFIX}{name}' is not a random-weights architecture; use one of "
            f"{', '.join(RANDOM_PREFIX + n for n in RANDOM_MODELS)}."
        )
    v3 = name.startswith("v3")
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
    preprocessor: dict[str, Any] = {"_target_": "gigaam.preprocess.FeatureExtractor", "sample_rate": 16000,
                                    "features": 64}
    encoder: dict[str, Any] = {
        "_target_": "gigaam.encoder.ConformerEncoder", "feat_in": 64, "n_layers": 16, "d_model": 768,
        "subsampling_factor": 4, "ff_expansion_factor": 4, "self_attention_model": "rotary",
        "pos_emb_max_len": 5000, "n_heads": 16, "conv_kernel_size": 5, "flash_attn": False,
    }
    if v3:
        preprocessor.update(n_fft=320, win_length=320, hop_length=160, center=False, mel_scale="htk")
        encoder.update(subsampling="conv1d", subs_kernel_size=5, conv_norm_type="layer_norm")
    return OmegaConf.create(
        {
            "model_class": name.split("_")[-1],
            "model_name": f"{RANDOM_PREFIX}{name}",
            "sample_rate": 16000,
            "preprocessor": preprocessor,
            "encoder": encoder,
            "head": head,
            "decoding": decoding,
        }
    )


def build_model(cfg: DictConfig, state_dict: Optional[dict[str, torch.Tensor]] = None) -> GigaAmNet:
    """rechka's network for a gigaam cfg (validated by :func:`~server.models.gigaam_spec.parse_cfg`)."""
    return build_net(parse_cfg(cfg), state_dict)


def features_batch(model: GigaAmNet, wavs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mels of float32 waveforms (on the model's device), computed per utterance (the STFT's padding sees the
    utterance's own end) and zero-padded: ``(B, T, F)`` and frames per row. Every waveform must be at least
    ``spec.frontend.min_samples`` long."""
    device = wavs[0].device
    features, lengths = [], []
    for wav in wavs:
        feats, n = model.preprocessor(wav[None, :], torch.tensor([wav.shape[-1]], device=device))
        features.append(feats[0].transpose(0, 1))
        lengths.append(n)
    return torch.nn.utils.rnn.pad_sequence(features, batch_first=True), torch.cat(lengths)


def encode_features(model: GigaAmNet, x: torch.Tensor, lengths: torch.Tensor,
                    mask_always: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder on zero-padded features ``(B, T, F)``: ``(B, T', D)`` float32 and valid frames per row.

    ``ConformerEncoder.forward``'s computation with every row's padding masked (the subsampling zeroes it, attention
    and the depthwise convolutions mask it), so each row's valid frames equal an unbatched run. ``mask_always``
    builds the attention mask at batch size 1 too (an all-valid mask changes nothing), for a traced export whose
    graph must hold the mask. Traceable: no data-dependent Python control flow.
    """
    encoder = model.encoder
    h, length = encoder.pre_encode(x, lengths)
    h, pos_emb = encoder.pos_enc(x=h)
    frames = h.shape[1]
    valid = torch.arange(frames, device=h.device)[None, :] < length[:, None]
    att_mask = None
    if mask_always or h.shape[0] > 1:
        pair = valid[:, None, :].expand(-1, frames, frames)
        att_mask = ~torch.logical_and(pair, pair.transpose(1, 2))
    for layer in encoder.layers:
        h = layer(x=h, pos_emb=pos_emb, att_mask=att_mask, pad_mask=~valid)
    return h.float(), length.long()


def encode_batch(model: GigaAmNet, wavs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode float32 waveforms in one pass (:func:`features_batch` then :func:`encode_features`, fp16 autocast
    on CUDA): ``(B, T, D)`` float32 and frame counts."""
    device = wavs[0].device
    x, lengths = features_batch(model, wavs)
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda"):
        return encode_features(model, x, lengths)
