"""Partials with left context at no re-encoding: GigaAM's encoder run chunk by chunk over one utterance.

For ``PartialOptions.cached_context`` (issue #14 point 3; measured in ``benchmarks/partial_cache.py``): a partial
decode encodes only the audio no partial of its utterance has encoded yet, yet with left context.
:class:`ChunkedEncoder` holds one utterance's state; GigaAM is a full-context Conformer, and here each chunk's new
frames pass every layer with

- attention over the cached keys and values of all earlier frames of the utterance (rotary or relative positions at
  the frames' absolute offsets),
- the depthwise convolution over the cached inputs of the ``(kernel - 1) / 2`` frames before the chunk (its right
  context is what the chunk has: zeros after it, as at an utterance's end),
- the strided subsampling over the few feature frames of overlap its kernels need, and the log-mel frames whose
  STFT window is complete (the rest wait for the next chunk).

Nothing else is computed twice. An earlier frame is not revised by later audio (that is the approximation: in the
full forward every frame sees the whole utterance). ``lookahead`` frames at a chunk's end are provisional: they are
decoded, but not cached, and pass the layers again with the next chunk (the cost of a little right context).
``push(audio, final=True)`` flushes the rest as the full forward would (zero padding at the end), so one final chunk
equals :func:`server.models.gigaam_compat.encode_batch` of the utterance. Batch size 1, no masks.

The adapters' store of these encoders, one per stream channel: :mod:`server.models.asr_partials`.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from gigaam.utils import apply_rotary_pos_emb
from torch import Tensor, nn

from server.models.gigaam_net import LogMelFeatures


class _Strided:
    """One stride-2 convolution of the subsampling (``conv1d`` over time, or ``conv2d`` over time × mel) fed frame
    by frame: an output frame is emitted once every input frame its kernel covers has arrived (or, at ``final``,
    is the zero padding after the end). Time is dim 2."""

    def __init__(self, conv: nn.Module) -> None:
        self.conv = conv
        self.kernel = conv.kernel_size[0]
        self.pad = (self.kernel - 1) // 2
        self.buffer: Optional[Tensor] = None  # inputs from index 2 * emitted on, in padded coordinates
        self.started = False

    def push(self, x: Tensor, final: bool) -> Tensor:
        parts = [] if self.buffer is None else [self.buffer]
        if not self.started:
            parts.append(x.new_zeros(x.shape[:2] + (self.pad,) + x.shape[3:]))
            self.started = True
        parts.append(x)
        if final:
            parts.append(x.new_zeros(x.shape[:2] + (self.pad,) + x.shape[3:]))
        ext = torch.cat(parts, dim=2)
        count = (ext.shape[2] - self.kernel) // 2 + 1 if ext.shape[2] >= self.kernel else 0
        self.buffer = ext[:, :, 2 * count:]
        if count == 0:
            return self._empty(x)
        used = ext[:, :, : 2 * (count - 1) + self.kernel]
        if isinstance(self.conv, nn.Conv2d):
            return F.conv2d(used, self.conv.weight, self.conv.bias, stride=2, padding=(0, self.pad))
        return F.conv1d(used, self.conv.weight, self.conv.bias, stride=2)

    def _empty(self, x: Tensor) -> Tensor:
        if isinstance(self.conv, nn.Conv2d):
            mels = (x.shape[3] + 2 * self.pad - self.kernel) // 2 + 1
            return x.new_zeros((x.shape[0], self.conv.out_channels, 0, mels))
        return x.new_zeros((x.shape[0], self.conv.out_channels, 0))


class _Features:
    """Log-mel frames of a growing utterance: a frame is emitted once its STFT window lies inside the audio received
    (``final``: the rest, with the front end's own end padding). Keeps only the samples still needed."""

    def __init__(self, preprocessor: LogMelFeatures) -> None:
        self.pre = preprocessor
        self.device = next(iter(preprocessor.buffers()), torch.zeros(0)).device
        f = preprocessor.frontend
        self.hop, self.center = f.hop_length, f.center
        self.half = f.n_fft // 2 if f.center else 0
        self.window = f.n_fft if f.center else f.win_length
        self.lead = math.ceil(self.half / self.hop) if f.center else 0  # discarded frames before the first needed
        self.audio = np.zeros(0, dtype=np.float32)
        self.audio_start = 0  # absolute sample of self.audio[0]
        self.total = 0  # samples received
        self.emitted = 0  # frames emitted

    def push(self, audio: np.ndarray, final: bool) -> Tensor:
        self.audio = np.concatenate([self.audio, audio.astype(np.float32)])
        self.total += len(audio)
        if final:
            stop = self.total // self.hop + 1 if self.center else max((self.total - self.window) // self.hop + 1, 0)
        else:  # frame m covers [m * hop - half, m * hop - half + window)
            stop = max((self.total + self.half - self.window) // self.hop + 1, 0)
        if stop <= self.emitted:
            return torch.zeros((1, 0, self.pre.frontend.features), device=self.device)
        first = max(self.emitted - self.lead, 0)  # slice from frame ``first``'s hop: its centre padding is discarded
        begin = first * self.hop
        wav = torch.from_numpy(self.audio[begin - self.audio_start:])[None, :].to(self.device)
        mel = self.pre(wav, torch.tensor([wav.shape[1]], device=self.device))[0]  # (1, F, frames of the slice)
        frames = mel[0].transpose(0, 1)[self.emitted - first: stop - first]
        if not final and frames.shape[0] < stop - self.emitted:
            raise AssertionError("log-mel slice shorter than the complete frames")
        self.emitted = stop
        keep = max(self.emitted - self.lead, 0) * self.hop
        self.audio, self.audio_start = self.audio[keep - self.audio_start:], keep
        return frames[None]


class ChunkedEncoder:
    """One utterance's encoder state; :meth:`push` each new stretch of audio, get its new encoder frames.

    ``net`` is a :class:`~server.models.gigaam_net.GigaAmNet` (or anything with its ``preprocessor`` and
    ``encoder``). Counters: ``frames_encoded`` (frames that passed the Conformer layers, lookahead repeats
    included) and ``frames_out`` (frames committed).
    """

    def __init__(self, net: nn.Module, lookahead: int = 0) -> None:
        self.encoder = net.encoder
        self.head = net.head if net.spec.head == "ctc" else None  # RNNT: step() gives the frames
        self.features = _Features(net.preprocessor)
        sub = self.encoder.pre_encode
        self.kind = sub.kind
        self.stages = [_Strided(m) for m in sub.conv if isinstance(m, (nn.Conv1d, nn.Conv2d))]
        self.lookahead = lookahead
        n = len(self.encoder.layers)
        self.keys: list[Optional[Tensor]] = [None] * n
        self.values: list[Optional[Tensor]] = [None] * n
        self.conv_left: list[Optional[Tensor]] = [None] * n
        self.held: Optional[Tensor] = None  # layer-0 inputs of the provisional frames
        self.frames_out = 0  # committed frames (their keys, values and conv inputs are cached)
        self.frames_encoded = 0

    @torch.inference_mode()
    def push(self, audio: np.ndarray, final: bool = False) -> Tensor:
        """Encoder frames ``(T, D)`` from the first not yet committed one on: committed ones, then (unless
        ``final``) up to ``lookahead`` provisional ones that the next push computes again."""
        device = self.features.device.type
        with torch.autocast(device_type=device, dtype=torch.float16, enabled=device == "cuda"):
            return self._push(audio, final)

    def _push(self, audio: np.ndarray, final: bool) -> Tensor:
        x = self.subsample(audio, final)
        if self.held is not None:
            x = torch.cat([self.held, x], dim=1)
        n = x.shape[1]
        commit = n if final else max(n - self.lookahead, 0)
        self.held = None if commit == n else x[:, commit:]
        if n == 0:
            return x[0]
        self.frames_encoded += n
        h = x
        for i, layer in enumerate(self.encoder.layers):
            h = self._layer(i, layer, h, commit)
        self.frames_out += commit
        return h[0].float()

    def subsample(self, audio: np.ndarray, final: bool) -> Tensor:
        """The subsampling's new output frames ``(1, n, D)`` for new audio: exactly those of the whole
        utterance's subsampling (the frames whose inputs are complete; ``final``: all the rest)."""
        x = self.features.push(audio, final)
        x = x[:, None] if self.kind == "conv2d" else x.transpose(1, 2)
        for stage in self.stages:
            x = torch.relu(stage.push(x, final))
        if self.kind == "conv2d":
            b, c, t, f = x.shape
            return self.encoder.pre_encode.out(x.transpose(1, 2).reshape(b, t, c * f))
        return x.transpose(1, 2)

    def step(self, audio: np.ndarray, final: bool = False) -> np.ndarray:
        """:meth:`push`, then the CTC head: log-probs ``(T, C)`` of the same frames (RNNT: the frames ``(T, D)``) (the engine-neutral interface
        ``PartialCaches`` uses; :class:`server.models.asr_cache_onnx.OnnxChunkedEncoder` has the same)."""
        frames = self.push(audio, final)
        if self.head is None:  # RNNT: the encoder frames (the adapter's greedy decoder continues on them)
            return frames.float().cpu().numpy()
        if not len(frames):
            return np.zeros((0, 0), dtype=np.float32)
        with torch.inference_mode():
            return self.head(encoder_output=frames.T[None])[0].float().cpu().numpy()

    @staticmethod
    def step_many(encoders: list["ChunkedEncoder"], audios: list[np.ndarray], finals: list[bool]) -> list[np.ndarray]:
        """:meth:`step` of several utterances' encoders (one after another: the torch engine runs one row)."""
        return [e.step(a, f) for e, a, f in zip(encoders, audios, finals)]

    # -- one Conformer layer on new frames ---------------------------------------------------------------------
    def _layer(self, i: int, layer: nn.Module, x: Tensor, commit: int) -> Tensor:
        t0 = self.frames_out
        empty = x.new_zeros(x.shape[0], layer.self_attn.h, 0, layer.self_attn.d_k)
        past_k = empty if self.keys[i] is None else self.keys[i]
        past_v = empty if self.values[i] is None else self.values[i]
        pad = (layer.conv.depthwise_conv.kernel_size[0] - 1) // 2
        left = self.conv_left[i] if self.conv_left[i] is not None else x.new_zeros(x.shape[0], x.shape[2], pad)
        out, k, v, glu = layer_step(self.encoder, layer, x, past_k, past_v, left,
                                    torch.arange(t0, t0 + x.shape[1], device=x.device))
        self.keys[i] = torch.cat([past_k, k[:, :, :commit]], dim=2)
        self.values[i] = torch.cat([past_v, v[:, :, :commit]], dim=2)
        kept = torch.cat([left, glu[:, :, :commit]], dim=2)
        self.conv_left[i] = kept[:, :, kept.shape[2] - pad:]
        return out


def layer_step(encoder: nn.Module, layer: nn.Module, x: Tensor, past_k: Tensor, past_v: Tensor, left: Tensor,
               positions: Tensor, key_mask: Optional[Tensor] = None,
               valid: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One Conformer layer on new frames ``x (B, n, D)``, stateless: attention over ``past_k``/``past_v``
    ``(B, h, T, d_k)`` (the earlier frames' keys and values) and the new frames', the depthwise convolution over
    ``left (B, D, pad)`` (the earlier frames' inputs), zeros after the new frames; ``positions``: the new frames'
    absolute indices, ``(n,)`` or per row ``(B, n)`` (rotary or relative positions; relative ones one row only;
    traceable: the ONNX chunk graph runs this). Rows of different lengths (the chunk graph's batch): ``key_mask
    (B, T + n)`` true for the keys a row has (its cached frames first, then its new ones), ``valid (B, n)`` 1 for
    its new frames (the rest are padding, zeroed before the depthwise convolution). Returns the layer's output, the
    new frames' keys, values and depthwise-convolution inputs ``(B, D, n)``: the caller caches what it commits."""
    residual = x + layer.feed_forward1(layer.norm_feed_forward1(x)) * layer.fc_factor
    att, k, v = _attention(encoder, layer.self_attn, layer.norm_self_att(residual), past_k, past_v, positions,
                           key_mask)
    residual = residual + att
    conv, glu = _convolution(layer.conv, layer.norm_conv(residual), left, valid)
    residual = residual + conv
    residual = residual + layer.feed_forward2(layer.norm_feed_forward2(residual)) * layer.fc_factor
    return layer.norm_out(residual), k, v, glu


def _attention(encoder: nn.Module, attn: nn.Module, x: Tensor, past_k: Tensor, past_v: Tensor,
               positions: Tensor, key_mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    rotary = encoder.pos_enc.pe.dim() == 4
    if rotary:
        pe = encoder.pos_enc.pe  # (2L, 1, 1, d_k): cos rows, then sin rows
        half = pe.shape[0] // 2
        index = positions.transpose(0, 1).reshape(-1) if positions.dim() == 2 else positions  # time-major
        cos, sin = pe.index_select(0, index), pe.index_select(0, index + half)  # (n [* B], 1, 1, d_k)
        xt = x.transpose(0, 1).reshape(x.shape[1], x.shape[0], attn.h, attn.d_k)  # (n, B, h, d_k)
        if positions.dim() == 2:
            cos = cos.reshape(x.shape[1], x.shape[0], 1, attn.d_k)
            sin = sin.reshape(x.shape[1], x.shape[0], 1, attn.d_k)
        rotated, _ = apply_rotary_pos_emb(xt, xt, cos, sin)
        rotated = rotated.reshape(x.shape[1], x.shape[0], attn.h * attn.d_k).transpose(0, 1)
        q, k, v = attn.forward_qkv(rotated, rotated, x)
    else:
        q, k, v = attn.forward_qkv(x, x, x)
    keys = torch.cat([past_k, k], dim=2)
    values = torch.cat([past_v, v], dim=2)
    if rotary:
        scores = torch.matmul(q, keys.transpose(-2, -1) / math.sqrt(attn.d_k))
    else:
        scores = _rel_scores(encoder, attn, q, keys, positions.reshape(-1))
    masked = None if key_mask is None else ~key_mask[:, None, :]  # forward_attention adds the head axis
    return attn.forward_attention(values, scores, masked), k, v


def _rel_scores(encoder: nn.Module, attn: nn.Module, q: Tensor, keys: Tensor, positions: Tensor) -> Tensor:
    """Transformer-XL scores of queries at ``positions`` against keys at ``j``: relative position
    ``positions[i] - j``. Traceable: the rows of the position table are picked by index."""
    pe = encoder.pos_enc.pe  # (1, 2L - 1, D): row r is position L - 1 - r
    length = (pe.shape[1] + 1) // 2
    total = keys.shape[2]
    top = positions[-1]  # the newest query's position: the largest relative position
    span = torch.arange(positions.shape[0] + total - 1, device=q.device)  # positions top .. positions[0] - total + 1
    rows = pe[0].index_select(0, (length - 1) - top + span)
    p = attn.linear_pos(rows).view(1, -1, attn.h, attn.d_k).transpose(1, 2)  # (1, h, R, d_k)
    qt = q.transpose(1, 2)
    u = (qt + attn.pos_bias_u).transpose(1, 2)
    v = (qt + attn.pos_bias_v).transpose(1, 2)
    ac = torch.matmul(u, keys.transpose(-2, -1))
    raw = torch.matmul(v, p.transpose(-2, -1))  # (1, h, n, R): column c is position top - c
    index = (top - positions)[:, None] + torch.arange(total, device=q.device)[None, :]  # c = top - (positions[i] - j)
    bd = raw.gather(3, index[None, None].expand(raw.shape[0], raw.shape[1], -1, -1))
    return (ac + bd) / math.sqrt(attn.d_k)


def _convolution(conv: nn.Module, x: Tensor, left: Tensor, valid: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    x = F.glu(conv.pointwise_conv1(x.transpose(1, 2)), dim=1)  # (B, D, n)
    if valid is not None:  # a shorter row's padding: zeros after its frames, as after an utterance's end
        x = x * valid[:, None, :]
    dw = conv.depthwise_conv
    ext = torch.cat([left, x, torch.zeros_like(left)], dim=2)
    y = F.conv1d(ext, dw.weight, dw.bias, groups=dw.groups)
    y = conv.pointwise_conv2(conv.activation(conv.batch_norm(y)))
    return y.transpose(1, 2), x
