"""The "asr" model family: GigaAM (CTC or RNNT head, v1, v2 or v3) behind the :class:`~server.models.base.BatchModel`
protocol.

A model is named by a published name (:mod:`server.models.gigaam_models`: ``v2_ctc``, ``v3_e2e_rnnt``, …, loaded
from gigaam's cache or downloaded into it), by the path of a checkpoint in gigaam's format, or, for speed benchmarks
only, by ``random:<name>`` (a full-size architecture with random weights; :meth:`GigaAmAsr.describe` then says
``"random_weights": True`` so the server can refuse it where transcripts matter). The checkpoint's cfg is
validated (:mod:`server.models.gigaam_spec`; :attr:`GigaAmAsr.spec` is what any engine must compute) and built
into rechka's network (:mod:`server.models.gigaam_net`). Weights that can be neither found nor downloaded, or a cfg
rechka does not implement, raise :class:`ModelUnavailable`; there is no fallback.

:meth:`GigaAmAsr.run_batch` pads a ragged batch, runs the encoder once (:meth:`GigaAmAsr._encode`, the seam an
alternative engine overrides) and decodes each row greedily (CTC, or RNNT batched over rows). Each row gives its
text and its timed words (:mod:`server.models.asr_words`) with sample offsets relative to the request's audio.
:meth:`GigaAmAsr.reference_transcribe` is gigaam's own offline decoder on one unpadded utterance; finals equal it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from gigaam.encoder import ConformerEncoder
from server.models.asr_cache import ChunkedEncoder
from server.models.asr_partials import PartialCaches
from server.models.asr_words import WordBuilder, normalize_text
from server.models.gigaam_compat import (
    DEFAULT_CACHE_DIR,
    DEFAULT_URL,
    ModelUnavailable,
    build_model,
    canonical_name,
    encode_batch,
    load_net,
    random_config,
    resolve_checkpoint,
)
from server.models.gigaam_models import DEFAULT_MODEL, RANDOM_PREFIX, names
from server.models.gigaam_net import GigaAmNet
from server.models.gigaam_spec import AsrSpec
from streaming.config import SAMPLE_RATE
from streaming.work import AsrKind, AsrRequest, AsrResult, Word

__all__ = ["AsrOptions", "GigaAmAsr", "ModelUnavailable", "MAX_AUDIO_SAMPLES"]

MAX_AUDIO_SAMPLES = 25 * SAMPLE_RATE  # gigaam's LONGFORM_THRESHOLD


@dataclass(frozen=True)
class AsrOptions:
    """How to load and run GigaAM.

    model: a published name (``gigaam_models.PUBLISHED``), a checkpoint path, or ``random:<name>`` (benchmarks).
    device: ``cpu``, ``cuda`` or ``cuda:N``.
    max_batch: most utterances per encoder pass (larger calls are split, longest together).
    fp16: half-precision encoder under autocast on CUDA (as gigaam's ``load_model``); ignored on the CPU.
    cache_dir / download_url: gigaam's cache and CDN; a missing published checkpoint is downloaded there.
    download_timeout_s: socket timeout of the download, so an unreachable CDN fails fast instead of hanging.
    quantize: ``"int8"`` = dynamic int8 quantization of the ``Linear`` layers (CPU only; about twice as fast on a
        small CPU, at a small accuracy cost to measure on your data); ``None`` keeps float weights.
    """

    model: str = DEFAULT_MODEL
    device: str = "cpu"
    max_batch: int = 16
    fp16: bool = True
    cache_dir: Path = DEFAULT_CACHE_DIR
    download_url: str = DEFAULT_URL
    download_timeout_s: float = 10.0
    quantize: Optional[str] = None

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError(f"AsrOptions.model is empty: pass a model name ({names()}) or a checkpoint path")
        kind, _, index = self.device.partition(":")
        if kind not in ("cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
            raise ValueError(f"AsrOptions.device {self.device!r} is not one of 'cpu', 'cuda', 'cuda:N'")
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"AsrOptions.device is {self.device!r} but CUDA is not available; use device='cpu'")
        if self.max_batch < 1:
            raise ValueError(f"AsrOptions.max_batch must be >= 1, got {self.max_batch}")
        if self.download_timeout_s <= 0:
            raise ValueError("AsrOptions.download_timeout_s must be positive (seconds); 10 is a good default")
        if self.quantize not in (None, "int8"):
            raise ValueError(f"AsrOptions.quantize {self.quantize!r} is not supported; use None or 'int8'")
        if self.quantize and kind != "cpu":
            raise ValueError("AsrOptions.quantize='int8' runs on the CPU only; on CUDA use fp16 (the default)")
        object.__setattr__(self, "cache_dir", Path(self.cache_dir))


def never_blank(net: GigaAmNet) -> GigaAmNet:
    """A random-weights CTC net that never predicts the blank, so every decode of audio has text, as a trained
    model's decode of speech has. A random head's argmax is often the blank for whole utterances, and an empty
    partial is never sent: benchmarks would see no partials where a real model shows them (first-partial times
    would measure the random weights). Compute is unchanged: one bias of the head."""
    if net.spec.head == "ctc":
        with torch.no_grad():
            net.head.decoder_layers[0].bias[net.spec.num_classes - 1] = -1e4
    return net


def _load(options: AsrOptions) -> tuple[GigaAmNet, Optional[Path], bool]:
    """(network on the CPU, checkpoint path or ``None``, random weights?)."""
    spec = options.model
    if spec.startswith(RANDOM_PREFIX):
        with torch.random.fork_rng():  # the same random weights at every start: an ONNX graph cached once serves all
            torch.manual_seed(0)
            return never_blank(build_model(random_config(spec[len(RANDOM_PREFIX):]))), None, True
    path = Path(spec).expanduser()
    tokenizer: Optional[Path] = None
    if not path.is_file():
        if canonical_name(spec) is None and (path.suffix or "/" in spec):
            raise ModelUnavailable(
                f"GigaAM checkpoint {path} does not exist. Pass an existing checkpoint in gigaam's format with "
                f"--asr-model /path/to/ckpt, or a model name ({names()}) to load it from gigaam's cache "
                f"{options.cache_dir}."
            )
        path, tokenizer = resolve_checkpoint(
            spec, options.cache_dir, options.download_url, options.download_timeout_s
        )
    return load_net(path, tokenizer), path, False


class GigaAmAsr:
    """GigaAM speech recognition for batches of :class:`~streaming.work.AsrRequest` from many sessions."""

    name = "asr"

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "cpu", max_batch: int = 16, **options: Any) -> None:
        self.options = AsrOptions(model=model, device=device, max_batch=max_batch, **options)
        self.max_batch = self.options.max_batch
        self.device = torch.device(self.options.device)
        net, self.checkpoint, self.random_weights = _load(self.options)
        self.fp16 = self.options.fp16 and self.device.type == "cuda"
        if self.fp16:
            net.encoder = net.encoder.half()
        self.model = net.to(self.device)
        if self.options.quantize == "int8":
            self.model = torch.ao.quantization.quantize_dynamic(self.model, {torch.nn.Linear}, dtype=torch.qint8)
        self.spec: AsrSpec = net.spec
        self.head_kind = self.spec.head
        self.tokenizer = net.decoding.tokenizer
        self.blank_id = self.spec.blank_id
        self.words = WordBuilder(self.tokenizer, self.spec.samples_per_frame, self.spec.frame_offset)
        self._partial_caches: Optional[PartialCaches] = None

    # -- BatchModel ---------------------------------------------------------------------------------------------

    def run_batch(self, requests: Sequence[AsrRequest]) -> list[AsrResult]:
        """One :class:`AsrResult` per request, in order. ``ValueError`` for audio that is not 1-D or over 25 s.

        A partial with ``cache_lookahead`` continues its utterance's encoder cache (:attr:`partial_caches`) and
        answers with the whole utterance so far (the batch's cached partials stepped together: up to the adapter's
        ``chunk_rows`` per chunk-graph run on the ONNX engine, one on the CPU; one after another on torch); without
        a chunked encoder
        (RNNT, v1 on ONNX) it is decoded alone. A final
        drops its utterance's cache."""
        audios = [self._check_audio(r) for r in requests]
        caches = self.partial_caches
        cached: dict[int, AsrResult] = {}
        if caches is not None:
            continued = [i for i, r in enumerate(requests) if r.kind != AsrKind.FINAL and r.cache_lookahead is not None]
            if continued:
                found = caches.decode_batch([requests[i] for i in continued],
                                            [requests[i].cache_lookahead for i in continued])
                cached = dict(zip(continued, found))
            for r in requests:  # after the partials: a final's utterance keeps no cache
                if r.kind == AsrKind.FINAL:
                    caches.finished(r)
        decoded: list[tuple[str, tuple[Word, ...]]] = [("", ())] * len(requests)
        shortest = self.spec.frontend.min_samples
        order = sorted((i for i, a in enumerate(audios) if len(a) >= shortest and i not in cached),
                       key=lambda i: -len(audios[i]))
        with torch.inference_mode():
            for chunk_start in range(0, len(order), self.max_batch):
                chunk = order[chunk_start : chunk_start + self.max_batch]
                for i, result in zip(chunk, self._decode([audios[i] for i in chunk])):
                    decoded[i] = result
        return [
            cached[i] if i in cached else AsrResult(session_id=r.session_id, seq=r.seq, text=text, words=words)
            for i, (r, (text, words)) in enumerate(zip(requests, decoded))
        ]

    @property
    def partial_caches(self) -> Optional[PartialCaches]:
        """The cached partials' store (``PartialOptions.cached_context``): an engine with a chunked encoder
        (:meth:`chunk_encoder`; CTC and RNNT), else None (cached partials are then decoded alone)."""
        if self._partial_caches is None and self.has_chunk_encoder:
            self._partial_caches = PartialCaches(self)
        return self._partial_caches

    @property
    def has_chunk_encoder(self) -> bool:
        """Whether :meth:`chunk_encoder` works: the torch encoder is loaded (the ONNX engine has its own)."""
        return isinstance(self.model.encoder, ConformerEncoder)

    def chunk_encoder(self, lookahead: int) -> ChunkedEncoder:
        """A new utterance's cached chunked encoder (torch engine)."""
        return ChunkedEncoder(self.model, lookahead)

    def warmup(self) -> None:
        """A ragged batch of two low-noise clips, so lazy CUDA/cuFFT initialisation happens now."""
        rng = np.random.default_rng(0)
        clips = [(rng.standard_normal(n) * 1e-3).astype(np.float32) for n in (SAMPLE_RATE, SAMPLE_RATE // 2)]
        with torch.inference_mode():
            self._decode(clips)

    def modules(self) -> dict[str, Any]:
        return {"gigaam": self.model}

    def describe(self) -> dict[str, Any]:
        encoder, frontend = self.spec.encoder, self.spec.frontend
        return {
            "name": self.name,
            "model": self.options.model,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "random_weights": self.random_weights,
            "head": self.head_kind,
            "vocab_size": len(self.tokenizer),
            "encoder": f"{encoder.n_layers}x{encoder.d_model} {encoder.self_attention_model}",
            "subsampling": f"{encoder.subsampling} x{encoder.subsampling_factor}",
            "frontend": f"n_fft {frontend.n_fft} win {frontend.win_length} hop {frontend.hop_length} "
                        f"center {frontend.center}",
            "tokenizer": "characters" if self.tokenizer.charwise else "sentencepiece",
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "fp16": self.fp16,
            "quantize": self.options.quantize,
        }

    # -- offline reference ----------------------------------------------------------------------------------------

    def reference_transcribe(self, audio: np.ndarray) -> str:
        """gigaam's own offline path for one unpadded utterance (``GigaAMASR.transcribe`` minus the file loading),
        spaced as :func:`~server.models.asr_words.normalize_text` does. Tests compare :meth:`run_batch` against it."""
        if len(audio) < self.spec.frontend.min_samples:
            return ""
        wav = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).to(self.device)[None, :]
        length = torch.tensor([wav.shape[-1]], device=self.device)
        with torch.inference_mode():
            encoded, encoded_len = self.model(wav, length)
            text = self.model.decoding.decode(self.model.head, encoded.float(), encoded_len)[0]
        return normalize_text(text)

    # -- internals --------------------------------------------------------------------------------------------------

    def _check_audio(self, request: AsrRequest) -> np.ndarray:
        audio = np.asarray(request.audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"AsrRequest.audio must be 1-D mono, got shape {audio.shape}")
        if len(audio) > MAX_AUDIO_SAMPLES:
            raise ValueError(
                f"AsrRequest.audio is {len(audio) / SAMPLE_RATE:.1f} s; GigaAM takes at most "
                f"{MAX_AUDIO_SAMPLES // SAMPLE_RATE} s: cut utterances shorter (VadOptions.max_utterance)"
            )
        return audio

    def _decode(self, audios: Sequence[np.ndarray]) -> list[tuple[str, tuple[Word, ...]]]:
        wavs = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in audios]
        encoded, lengths = self._encode(wavs)
        if self.head_kind == "ctc":
            tokens = self._ctc_tokens(encoded, lengths)
        else:
            tokens = self._rnnt_tokens(encoded, lengths)
        return [self.words.build(row, len(a)) for row, a in zip(tokens, audios)]

    def _encode(self, wavs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 waveforms on :attr:`device` (each at least ``spec.frontend.min_samples`` long) → encoder output
        ``(B, T, D)`` float32 and valid frames per row. The torch engine; another engine overrides this."""
        return encode_batch(self.model, wavs)

    def _ctc_tokens(self, encoded: torch.Tensor, lengths: torch.Tensor) -> list[list[tuple[int, int, int]]]:
        """Greedy CTC per row: (token, first frame, last frame) for each run of one non-blank label."""
        labels = self.model.head(encoder_output=encoded.transpose(1, 2)).argmax(dim=-1)
        padded = torch.arange(labels.shape[1], device=labels.device)[None, :] >= lengths[:, None]
        labels = labels.masked_fill(padded, self.blank_id).cpu().numpy()
        rows = []
        for row, n in zip(labels, lengths.tolist()):
            row = row[:n]
            starts = np.flatnonzero(np.diff(row, prepend=-1))
            ends = np.append(starts[1:], n) - 1
            rows.append([(int(row[s]), int(s), int(e)) for s, e in zip(starts, ends) if row[s] != self.blank_id])
        return rows

    def rnnt_continue(self, frames: np.ndarray, state: Any, offset: int) -> tuple[list[tuple[int, int, int]], Any]:
        """Greedy RNN-T of one utterance's next encoder ``frames (T, D)`` from the prediction network's ``state``
        (``None``: the start) after the frames before: its tokens (frame indices from ``offset``) and the state
        after them. Cached partials decode committed frames once this way (exactly as one whole pass would)."""
        if not len(frames):
            return [], state
        with torch.inference_mode():
            encoded = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).to(self.device)[None]
            lengths = torch.tensor([len(frames)], device=self.device)
            [row], after = self._rnnt_rows(encoded, lengths, state)
        return [(tok, a + offset, b + offset) for tok, a, b in row], after

    def _rnnt_tokens(self, encoded: torch.Tensor, lengths: torch.Tensor) -> list[list[tuple[int, int, int]]]:
        """Greedy RNN-T over all rows at once, step for step the same as gigaam's per-row ``_greedy_decode``:
        at each frame a row emits up to ``max_symbols`` tokens, feeding each back to the prediction network."""
        return self._rnnt_rows(encoded, lengths, None)[0]

    def _rnnt_rows(self, encoded: torch.Tensor, lengths: torch.Tensor,
                   start: Any) -> tuple[list[list[tuple[int, int, int]]], Any]:
        head = self.model.head
        batch, frames, _ = encoded.shape
        max_symbols = self.model.decoding.max_symbols
        g, state = head.decoder.predict(None, None, batch_size=batch) if start is None else start
        rows: list[list[tuple[int, int, int]]] = [[] for _ in range(batch)]
        for t in range(frames):
            pending = lengths > t
            f = encoded[:, t : t + 1, :]
            for _ in range(max_symbols):
                if not bool(pending.any()):
                    break
                k = head.joint.joint(f, g)[:, 0, 0, :].argmax(dim=-1)
                emit = pending & (k != self.blank_id)
                if not bool(emit.any()):
                    break
                for i in torch.nonzero(emit).flatten().tolist():
                    rows[i].append((int(k[i]), t, t))
                g_new, state_new = head.decoder.predict(k[:, None], state)
                g = torch.where(emit[:, None, None], g_new, g)
                state = tuple(torch.where(emit[None, :, None], new, old) for new, old in zip(state_new, state))
                pending = emit
        return rows, (g, state)
