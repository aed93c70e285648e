"""The cached chunk step of :mod:`server.models.asr_cache` on ONNX Runtime (``PartialOptions.cached_context`` on the
``--asr-engine onnx`` default CPU engine).

:class:`ChunkStep` is one chunk of :class:`~server.models.asr_cache.ChunkedEncoder` as a stateless module whose
caches are inputs and outputs, exported with ``torch.onnx.export(..., dynamo=False)`` into the model cache (keyed
by :func:`~server.models.asr_onnx.graph_key` of its weights and the recipe) and quantized to int8 as the default
encoder graph is (:func:`~server.models.asr_onnx.quantize_int8`, the channel-mixing convolutions as MatMuls per tap
for int8: :mod:`server.models.conv_taps`). One run takes the chunks of several utterances as rows (``B``), each
padded at its end to the longest in every time axis and masked, so that a row computes what it would alone
(:func:`step_encoders`; relative positions, v1: one row per run). Inputs:

- ``features (B, T, F)``: the log-mel frames the chunk's new subsampled frames need (the stride-2 kernels' reach
  included: a frame or two computed again), zeros where the full forward pads; ``mask1`` … ``(B, T_s)``: per
  intermediate subsampling stage, 1 for the frames that exist and 0 for the full forward's zero padding (and a
  row's end padding). The subsampling runs its convolutions without time padding on that slice, so it gives
  exactly the frames the whole utterance's would.
- ``held (B, h, D)``: layer-0 inputs of the last chunk's provisional (lookahead) frames; ``order (B, n)``: where
  each row's held frames, then its new ones, lie in ``[held, new]`` (the layer-0 input packed from the left).
- ``keys``, ``values (L, B, H, Tc, d_k)``: every committed frame's attention keys and values per layer;
  ``conv_left (L, B, D, pad)``: the depthwise convolutions' inputs of the last ``pad`` committed frames;
  ``positions (B, n)``: the chunk's frames' absolute indices (rotary or relative positions); ``key_mask (B, Tc +
  n)``: 1 for a row's cached keys (from the left) and, after ``Tc``, its new frames (also the frames' validity).

Outputs: ``outputs``: ``(B, n, C)`` log-probs of the CTC head (RNNT: the encoder frames ``(B, n, D)``), ``layer0
(B, n, D)`` (for ``held``), the new frames' ``new_keys``, ``new_values (L, B, H, n, d_k)`` and depthwise inputs
``new_conv (L, B, D, n)``; :class:`OnnxChunkedEncoder` keeps what a chunk commits, exactly as the torch encoder
does (its own state: numpy arrays), and the log-mel front end stays in torch, as for the default graph (so is
RNNT's greedy decoding). On the CPU the adapter runs one row per run (``OnnxGigaAmAsr.chunk_rows``): rows of
several streams were not faster there (``benchmarks/partial_rows.py``; docs/benchmarks.md, cheaper partials).
"""

from __future__ import annotations

import copy as _copy
import io
import logging
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from server.models.asr_cache import _Features, layer_step
from server.models.conv_taps import with_tap_convs

log = logging.getLogger(__name__)

CHUNK_TAPS = "chunk-taps-v2"  # int8: channel-mixing convolutions as MatMuls per tap, as masked-taps-v2
CHUNK_CONVS = "chunk-v2"  # fp32: convolutions as Conv ops, as masked-v1 (v2: rows of several utterances per run)
CHUNK_RECIPES = {"fp32": CHUNK_CONVS, "int8": CHUNK_TAPS}


def _valid_in_time(conv: nn.Module) -> nn.Module:
    """A copy of a subsampling convolution without padding along time (dim 2), sharing its weights.

    A shallow copy, not a new module: constructing one (even on the meta device) runs weight initialisation, whose
    first call imports torch's decompositions (seconds at startup)."""
    copy = _copy.copy(conv)
    copy._parameters = dict(conv._parameters)  # the same tensors, in a dict of the copy's own
    copy._buffers = dict(conv._buffers)
    copy._modules = dict(conv._modules)
    copy.padding = (0, conv.padding[1]) if isinstance(conv, nn.Conv2d) else (0,)
    return copy


def supports_chunk_graph(net: nn.Module) -> bool:
    """A net with a position table (rotary: v2/v3; relative: v1) and stride-2 subsampling: what :class:`ChunkStep`
    covers."""
    return getattr(getattr(net.encoder, "pos_enc", None), "pe", None) is not None


class ChunkStep(nn.Module):
    """One chunk of the cached encoder plus the CTC head, stateless (see the module docstring)."""

    def __init__(self, net: nn.Module, recipe: str) -> None:
        super().__init__()
        if recipe not in CHUNK_RECIPES.values():
            raise ValueError(f"chunk graph recipe {recipe!r} is unknown; use one of {', '.join(CHUNK_RECIPES.values())}")
        taps = recipe == CHUNK_TAPS
        self.encoder = with_tap_convs(net.encoder) if taps else net.encoder
        sub = net.encoder.pre_encode
        self.kind = sub.kind
        stages = nn.ModuleList(_valid_in_time(m) for m in sub.conv if isinstance(m, (nn.Conv1d, nn.Conv2d)))
        self.stages = with_tap_convs(stages) if taps else stages
        self.out = self.encoder.pre_encode.out if self.kind == "conv2d" else None
        self.head = net.head if net.spec.head == "ctc" else None  # RNNT: the frames; the decoder runs in torch

    def forward(self, features: Tensor, held: Tensor, keys: Tensor, values: Tensor, conv_left: Tensor,
                positions: Tensor, order: Tensor, key_mask: Tensor, *masks: Tensor) -> tuple[Tensor, ...]:
        x = features[:, None] if self.kind == "conv2d" else features.transpose(1, 2)
        for s, conv in enumerate(self.stages):
            x = torch.relu(conv(x))
            if s < len(masks):
                x = x * (masks[s][:, None, :, None] if self.kind == "conv2d" else masks[s][:, None, :])
        x = self.out(x.transpose(1, 2).flatten(2)) if self.out is not None else x.transpose(1, 2)
        # each row's held frames, then its new ones, packed from the left (``order``), padding zeroed
        rows = torch.cat([held, x], dim=1)
        layer0 = rows.gather(1, order[:, :, None].expand(-1, -1, rows.shape[2]))
        valid = key_mask[:, keys.shape[3]:]
        layer0 = layer0 * valid[:, :, None]
        h = layer0
        allowed = key_mask > 0.5
        new_k, new_v, new_conv = [], [], []
        for i, layer in enumerate(self.encoder.layers):
            h, k, v, glu = layer_step(self.encoder, layer, h, keys[i], values[i], conv_left[i], positions, allowed,
                                      valid)
            new_k.append(k)
            new_v.append(v)
            new_conv.append(glu)
        outputs = h if self.head is None else self.head(encoder_output=h.transpose(1, 2))
        return outputs, layer0, torch.stack(new_k), torch.stack(new_v), torch.stack(new_conv)


class ChunkGeometry:
    """Shapes of one net's chunk graph inputs (read at load: the ONNX engine then drops the torch encoder)."""

    def __init__(self, net: nn.Module) -> None:
        enc = net.encoder
        attn, conv = enc.layers[0].self_attn, enc.layers[0].conv
        self.layers, self.heads, self.d_k = len(enc.layers), attn.h, attn.d_k
        self.d_model = attn.h * attn.d_k
        self.conv_channels = conv.depthwise_conv.in_channels
        self.pad = (conv.depthwise_conv.kernel_size[0] - 1) // 2
        self.kernels = [m.kernel_size[0] for m in enc.pre_encode.conv if isinstance(m, (nn.Conv1d, nn.Conv2d))]
        self.features = net.spec.frontend.features
        self.rotary = enc.pos_enc.pe.dim() == 4  # relative positions (v1): one row per run

    def example(self, frames: int = 8, cached: int = 5, held: int = 1, rows: int = 2) -> tuple[Tensor, ...]:
        """Example inputs for tracing: ``rows`` chunks of ``frames`` new frames after ``cached`` committed ones."""
        spans = _ranges(self.kernels, cached, cached + frames)
        features = torch.randn(rows, spans[0][1] - spans[0][0], self.features)
        masks = tuple(torch.ones(rows, b - a) for a, b in spans[1:-1])
        n = held + frames
        return (features, torch.randn(rows, held, self.d_model),
                torch.randn(self.layers, rows, self.heads, cached, self.d_k),
                torch.randn(self.layers, rows, self.heads, cached, self.d_k),
                torch.randn(self.layers, rows, self.conv_channels, self.pad),
                torch.arange(cached, cached + n).repeat(rows, 1), torch.arange(n).repeat(rows, 1),
                torch.ones(rows, cached + n), *masks)

def _ranges(kernels: list[int], first: int, stop: int) -> list[tuple[int, int]]:
    """The index ranges ``[a, b)`` of every stage's input (features first) that the last stage's outputs
    ``[first, stop)`` need: stride 2, kernel ``k``, the full forward's padding ``(k - 1) // 2``."""
    spans = [(first, stop)]
    for k in reversed(kernels):
        a, b = spans[0]
        pad = (k - 1) // 2
        spans.insert(0, (2 * a - pad, 2 * (b - 1) + k - pad))
    return spans


def _emitted(kernel: int, received: int, final: bool) -> int:
    """Outputs of a stride-2 stage whose inputs are complete after ``received`` inputs (``final``: all of them)."""
    pad = (kernel - 1) // 2
    if final:
        return max((received + 2 * pad - kernel) // 2 + 1, 0)
    return max((received + pad - kernel) // 2 + 1, 0)


def export_chunk_step(net: nn.Module, recipe: str) -> bytes:
    """:class:`ChunkStep` of ``net`` (float32, CPU) as ONNX bytes, dynamic in every time axis."""
    step = ChunkStep(net, recipe).eval()
    geometry = ChunkGeometry(net)
    example = geometry.example(rows=2 if geometry.rotary else 1)  # relative positions: one row per run
    masks = [f"mask{s + 1}" for s in range(len(example) - 8)]
    names = ["features", "held", "keys", "values", "conv_left", "positions", "order", "key_mask", *masks]
    axes: dict[str, dict[int, str]] = {"features": {0: "rows", 1: "feature_frames"}, "held": {0: "rows", 1: "held"},
                                       "keys": {1: "rows", 3: "cached"}, "values": {1: "rows", 3: "cached"},
                                       "conv_left": {1: "rows"}, "positions": {0: "rows", 1: "frames"},
                                       "order": {0: "rows", 1: "frames"}, "key_mask": {0: "rows", 1: "keys"},
                                       "outputs": {0: "rows", 1: "frames"}, "layer0": {0: "rows", 1: "frames"},
                                       "new_keys": {1: "rows", 3: "frames"}, "new_values": {1: "rows", 3: "frames"},
                                       "new_conv": {1: "rows", 3: "frames"}}
    axes.update({m: {0: "rows", 1: f"{m}_frames"} for m in masks})
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shapes and the TorchScript exporter's deprecation
        torch.onnx.export(step, example, buffer, input_names=names,
                          output_names=["outputs", "layer0", "new_keys", "new_values", "new_conv"],
                          opset_version=17, dynamo=False, dynamic_axes=axes)
    return buffer.getvalue()


def ensure_chunk_graph(net: nn.Module, precision: str, root: Optional[Path] = None) -> Path:
    """The cached chunk graph of ``net`` at ``precision`` (``fp32`` or ``int8``), built first when missing."""
    from server.models.asr_onnx import atomic_build, ensure_onnx_graph, quantize_int8

    recipe = CHUNK_RECIPES[precision]
    cpu = net if next(net.parameters()).device.type == "cpu" else _cpu_copy(net)
    # keyed by the plain step's weights and the recipe: the taps copy (rearranged weights) is built only to export
    plain = ChunkStep(cpu, CHUNK_CONVS)
    fp32 = ensure_onnx_graph(f"gigaam-{recipe}-fp32", plain, lambda: export_chunk_step(cpu, recipe), root,
                             recipe=recipe)
    if precision == "fp32":
        return fp32
    int8 = fp32.with_name(fp32.name.replace("-fp32", "-int8r"))
    if not int8.is_file():
        log.info("quantizing %s to int8", fp32)
        atomic_build(lambda tmp: quantize_int8(fp32, tmp), int8)
    return int8


def _cpu_copy(net: nn.Module) -> nn.Module:
    return _copy.deepcopy(net).float().to("cpu")


class _Chunk:
    """One utterance's inputs to a chunk-graph run (:meth:`OnnxChunkedEncoder.prepare`), before padding."""

    def __init__(self, features: np.ndarray, masks: list[np.ndarray], counts: list[int], frames: int) -> None:
        self.features, self.masks, self.counts, self.frames = features, masks, counts, frames


class OnnxChunkedEncoder:
    """One utterance's cached encoder on an ONNX Runtime session of the chunk graph: the interface of
    :class:`~server.models.asr_cache.ChunkedEncoder` that :class:`~server.models.asr_partials.PartialCaches` uses
    (:meth:`step` → log-probs, ``frames_out``, ``frames_encoded``), the same results within float rounding.
    :func:`step_encoders` runs the chunks of several utterances in one call (rows padded and masked)."""

    def __init__(self, session: Any, geometry: ChunkGeometry, preprocessor: nn.Module, lookahead: int = 0) -> None:
        self.session = session
        self.geometry = g = geometry
        self.features = _Features(preprocessor)
        self.lookahead = lookahead
        self.feats = np.zeros((0, g.features), dtype=np.float32)  # every log-mel frame of the utterance so far
        self.emitted = [0] * len(g.kernels)  # outputs of each subsampling stage so far
        self.keys = np.zeros((g.layers, g.heads, 0, g.d_k), dtype=np.float32)
        self.values = np.zeros_like(self.keys)
        self.conv_left = np.zeros((g.layers, g.conv_channels, g.pad), dtype=np.float32)
        self.held = np.zeros((0, g.d_model), dtype=np.float32)
        self._held_logprobs = np.zeros((0, 0), dtype=np.float32)
        self.frames_out = 0
        self.frames_encoded = 0

    def step(self, audio: np.ndarray, final: bool = False) -> np.ndarray:
        """Log-probs ``(T, C)`` (RNNT: encoder frames ``(T, D)``) of the frames from the first not yet committed
        one on (committed ones, then unless ``final`` up to ``lookahead`` provisional ones), as
        :meth:`ChunkedEncoder.step` gives them."""
        return step_encoders([self], [audio], [final])[0]

    @staticmethod
    def step_many(encoders: list["OnnxChunkedEncoder"], audios: list[np.ndarray], finals: list[bool]) -> list[np.ndarray]:
        """:meth:`step` of several utterances' encoders in one run (:func:`step_encoders`)."""
        return step_encoders(encoders, audios, finals)

    def prepare(self, audio: np.ndarray, final: bool) -> Optional[_Chunk]:
        """Take the new audio; the inputs of its run, or None when it brings no new frame."""
        g = self.geometry
        with torch.inference_mode():
            new = self.features.push(audio, final)[0].float().cpu().numpy()
        self.feats = np.concatenate([self.feats, new])
        counts, received = [], len(self.feats)
        for k in g.kernels:
            received = _emitted(k, received, final)
            counts.append(received)
        first, stop = self.emitted[-1], counts[-1]
        if stop == first:  # no new frame: the provisional ones again (the same inputs and caches, the same output)
            if final and len(self.held):
                raise AssertionError("a final chunk with held frames always brings new frames")
            return None
        spans = _ranges(g.kernels, first, stop)
        a, b = spans[0]
        features = np.zeros((b - a, g.features), dtype=np.float32)
        lo, hi = max(a, 0), min(b, len(self.feats))
        features[lo - a:hi - a] = self.feats[lo:hi]
        masks = []
        for (a_s, b_s), n_s in zip(spans[1:-1], counts[:-1]):
            index = np.arange(a_s, b_s)
            masks.append(((index >= 0) & (index < n_s)).astype(np.float32))
        return _Chunk(features, masks, counts, len(self.held) + stop - first)

    def commit(self, chunk: _Chunk, final: bool, logprobs: np.ndarray, layer0: np.ndarray, new_k: np.ndarray,
               new_v: np.ndarray, new_conv: np.ndarray) -> np.ndarray:
        """Keep what the run of ``chunk`` commits (one row of its outputs, padding cut); its log-probs."""
        g, n = self.geometry, chunk.frames
        commit = n if final else max(n - self.lookahead, 0)
        self.keys = np.concatenate([self.keys, new_k[:, :, :commit]], axis=2)
        self.values = np.concatenate([self.values, new_v[:, :, :commit]], axis=2)
        kept = np.concatenate([self.conv_left, new_conv[:, :, :commit]], axis=2)
        self.conv_left = np.ascontiguousarray(kept[:, :, kept.shape[2] - g.pad:])
        self.held = np.ascontiguousarray(layer0[commit:n])
        self.emitted = chunk.counts
        self.frames_out += commit
        self.frames_encoded += n
        self._held_logprobs = logprobs[commit:n]
        return logprobs[:n]


def _stage_lengths(kernels: list[int], features: int) -> list[int]:
    """Output lengths of the subsampling stages without time padding on ``features`` input frames."""
    lengths = []
    for k in kernels:
        features = (features - k) // 2 + 1
        lengths.append(features)
    return lengths


def step_encoders(encoders: list[OnnxChunkedEncoder], audios: list[np.ndarray],
                  finals: list[bool]) -> list[np.ndarray]:
    """:meth:`OnnxChunkedEncoder.step` of several utterances (distinct encoders of one session and geometry) in
    one run of the chunk graph: each row padded to the longest features, held frames, cached frames and new
    frames, and masked (``key_mask``, the stage masks) so that it computes what it would alone. Relative
    positions (v1) run one row at a time."""
    g = encoders[0].geometry
    if len(encoders) > 1 and not g.rotary:
        return [step_encoders([e], [a], [f])[0] for e, a, f in zip(encoders, audios, finals)]
    chunks = [e.prepare(a, f) for e, a, f in zip(encoders, audios, finals)]
    rows = [i for i, c in enumerate(chunks) if c is not None]
    out = [e._held_logprobs for e in encoders]  # no new frame: the provisional frames' log-probs again
    if not rows:
        return out
    run = [chunks[i] for i in rows]
    held = [len(encoders[i].held) for i in rows]
    cached = [encoders[i].keys.shape[2] for i in rows]
    frames = max(c.frames for c in run)
    n_rows, n_held, n_cached = len(rows), max(held), max(cached)
    n_features = max(len(c.features) for c in run)
    features = np.zeros((n_rows, n_features, g.features), dtype=np.float32)
    lengths = _stage_lengths(g.kernels, n_features)
    masks = [np.zeros((n_rows, t), dtype=np.float32) for t in lengths[:-1]]
    held_in = np.zeros((n_rows, n_held, g.d_model), dtype=np.float32)
    order = np.zeros((n_rows, frames), dtype=np.int64)
    key_mask = np.zeros((n_rows, n_cached + frames), dtype=np.float32)
    positions = np.zeros((n_rows, frames), dtype=np.int64)
    if n_rows == 1:  # no padding of the caches: the encoder's arrays as they are (no copy)
        e = encoders[rows[0]]
        keys, values, conv_left = e.keys[:, None], e.values[:, None], e.conv_left[:, None]
    else:
        keys = np.zeros((g.layers, n_rows, g.heads, n_cached, g.d_k), dtype=np.float32)
        values = np.zeros_like(keys)
        conv_left = np.stack([encoders[i].conv_left for i in rows], axis=1)
    for r, (i, c) in enumerate(zip(rows, run)):
        e, h, t = encoders[i], held[r], cached[r]
        features[r, :len(c.features)] = c.features
        for mask, m in zip(masks, c.masks):
            mask[r, :len(m)] = m
        held_in[r, :h] = e.held
        order[r, :h] = np.arange(h)
        order[r, h:c.frames] = n_held + np.arange(c.frames - h)
        key_mask[r, :t] = 1.0
        key_mask[r, n_cached:n_cached + c.frames] = 1.0
        positions[r] = e.frames_out + np.arange(frames)
        if n_rows > 1:
            keys[:, r, :, :t] = e.keys
            values[:, r, :, :t] = e.values
    feeds = {"features": features, "held": held_in, "keys": keys, "values": values, "conv_left": conv_left,
             "positions": positions, "order": order, "key_mask": key_mask}
    feeds.update({f"mask{s + 1}": m for s, m in enumerate(masks)})
    logprobs, layer0, new_k, new_v, new_conv = encoders[rows[0]].session.run(None, feeds)
    for r, i in enumerate(rows):
        out[i] = encoders[i].commit(run[r], finals[i], logprobs[r], layer0[r], new_k[:, r], new_v[:, r],
                                    new_conv[:, r])
    return out


def chunk_session(path: Path, threads: int, providers: list[Any]) -> Any:
    """An ONNX Runtime session of a chunk graph, with the encoder's session options."""
    import onnxruntime as ort

    from server.models.asr_onnx import session_options

    return ort.InferenceSession(str(path), session_options(threads), providers=providers)


__all__ = ["ChunkGeometry", "ChunkStep", "OnnxChunkedEncoder", "chunk_session", "ensure_chunk_graph", "export_chunk_step",
           "step_encoders", "supports_chunk_graph"]
