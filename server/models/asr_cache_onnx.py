"""The cached chunk step of :mod:`server.models.asr_cache` on ONNX Runtime (``PartialOptions.cached_context`` on the
``--asr-engine onnx`` default CPU engine).

:class:`ChunkStep` is one chunk of :class:`~server.models.asr_cache.ChunkedEncoder` as a stateless module whose
caches are inputs and outputs, exported with ``torch.onnx.export(..., dynamo=False)`` into the model cache (keyed
by :func:`~server.models.asr_onnx.graph_key` of its weights and the recipe) and quantized to int8 as the default
encoder graph is (:func:`~server.models.asr_onnx.quantize_int8`, the channel-mixing convolutions as MatMuls per tap
for int8: :mod:`server.models.conv_taps`). Inputs:

- ``features (1, T, F)``: the log-mel frames the chunk's new subsampled frames need (the stride-2 kernels' reach
  included: a frame or two computed again), zeros where the full forward pads; ``mask1`` … : per intermediate
  subsampling stage, 1 for the frames that exist and 0 for the full forward's zero padding. The subsampling runs
  its convolutions without time padding on that slice, so it gives exactly the frames the whole utterance's would.
- ``held (1, h, D)``: layer-0 inputs of the last chunk's provisional (lookahead) frames, put before the new ones.
- ``keys``, ``values (L, H, Tc, d_k)``: every committed frame's attention keys and values per layer;
  ``conv_left (L, D, pad)``: the depthwise convolutions' inputs of the last ``pad`` committed frames;
  ``positions (n,)``: the chunk's frames' absolute indices (rotary or relative positions).

Outputs: ``outputs``: ``(1, n, C)`` log-probs of the CTC head (RNNT: the encoder frames ``(1, n, D)``), ``layer0 (1, n, D)`` (for ``held``), the new frames' ``new_keys``,
``new_values (L, H, n, d_k)`` and depthwise inputs ``new_conv (L, D, n)``; :class:`OnnxChunkedEncoder` keeps what a
chunk commits, exactly as the torch encoder does (its own state: numpy arrays), and the log-mel front end stays in
torch, as for the default graph (so is RNNT's greedy decoding). Rotary (v2, v3) and relative (v1) positions. One
utterance per run: caches of different lengths are not batched (on the CPU
batching did not pay for GigaAM: docs/benchmarks.md, compute per stream-second).
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

CHUNK_TAPS = "chunk-taps-v1"  # int8: channel-mixing convolutions as MatMuls per tap, as masked-taps-v2
CHUNK_CONVS = "chunk-v1"  # fp32: convolutions as Conv ops, as masked-v1
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
                positions: Tensor, *masks: Tensor) -> tuple[Tensor, ...]:
        x = features[:, None] if self.kind == "conv2d" else features.transpose(1, 2)
        for s, conv in enumerate(self.stages):
            x = torch.relu(conv(x))
            if s < len(masks):
                x = x * (masks[s].view(1, 1, -1, 1) if self.kind == "conv2d" else masks[s].view(1, 1, -1))
        x = self.out(x.transpose(1, 2).flatten(2)) if self.out is not None else x.transpose(1, 2)
        layer0 = torch.cat([held, x], dim=1)
        h = layer0
        new_k, new_v, new_conv = [], [], []
        for i, layer in enumerate(self.encoder.layers):
            h, k, v, glu = layer_step(self.encoder, layer, h, keys[i:i + 1], values[i:i + 1], conv_left[i:i + 1],
                                      positions)
            new_k.append(k[0])
            new_v.append(v[0])
            new_conv.append(glu[0])
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

    def example(self, frames: int = 8, cached: int = 5, held: int = 1) -> tuple[Tensor, ...]:
        """Example inputs for tracing: a chunk of ``frames`` new frames after ``cached`` committed ones."""
        spans = _ranges(self.kernels, cached, cached + frames)
        features = torch.randn(1, spans[0][1] - spans[0][0], self.features)
        masks = tuple(torch.ones(b - a) for a, b in spans[1:-1])
        n = held + frames
        return (features, torch.randn(1, held, self.d_model), torch.randn(self.layers, self.heads, cached, self.d_k),
                torch.randn(self.layers, self.heads, cached, self.d_k),
                torch.randn(self.layers, self.conv_channels, self.pad),
                torch.arange(cached, cached + n), *masks)


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
    example = geometry.example()
    masks = [f"mask{s + 1}" for s in range(len(example) - 6)]
    names = ["features", "held", "keys", "values", "conv_left", "positions", *masks]
    axes: dict[str, dict[int, str]] = {"features": {1: "feature_frames"}, "held": {1: "held"}, "keys": {2: "cached"},
                                       "values": {2: "cached"}, "positions": {0: "frames"},
                                       "outputs": {1: "frames"}, "layer0": {1: "frames"}, "new_keys": {2: "frames"},
                                       "new_values": {2: "frames"}, "new_conv": {2: "frames"}}
    axes.update({m: {0: f"{m}_frames"} for m in masks})
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


class OnnxChunkedEncoder:
    """One utterance's cached encoder on an ONNX Runtime session of the chunk graph: the interface of
    :class:`~server.models.asr_cache.ChunkedEncoder` that :class:`~server.models.asr_cache.PartialCaches` uses
    (:meth:`step` → log-probs, ``frames_out``, ``frames_encoded``), the same results within float rounding."""

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
        self.held = np.zeros((1, 0, g.d_model), dtype=np.float32)
        self._held_logprobs = np.zeros((0, 0), dtype=np.float32)
        self.frames_out = 0
        self.frames_encoded = 0

    def step(self, audio: np.ndarray, final: bool = False) -> np.ndarray:
        """Log-probs ``(T, C)`` (RNNT: encoder frames ``(T, D)``) of the frames from the first not yet committed one on (committed ones, then unless
        ``final`` up to ``lookahead`` provisional ones), as :meth:`ChunkedEncoder.step` gives them."""
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
            if final and self.held.shape[1]:
                raise AssertionError("a final chunk with held frames always brings new frames")
            return self._held_logprobs
        spans = _ranges(g.kernels, first, stop)
        a, b = spans[0]
        features = np.zeros((1, b - a, g.features), dtype=np.float32)
        lo, hi = max(a, 0), min(b, len(self.feats))
        features[0, lo - a:hi - a] = self.feats[lo:hi]
        masks = []
        for (a_s, b_s), n_s in zip(spans[1:-1], counts[:-1]):
            index = np.arange(a_s, b_s)
            masks.append(((index >= 0) & (index < n_s)).astype(np.float32))
        n = self.held.shape[1] + stop - first
        feeds = {"features": features, "held": self.held, "keys": self.keys, "values": self.values,
                 "conv_left": self.conv_left, "positions": np.arange(self.frames_out, self.frames_out + n)}
        feeds.update({f"mask{s + 1}": m for s, m in enumerate(masks)})
        logprobs, layer0, new_k, new_v, new_conv = self.session.run(None, feeds)
        commit = n if final else max(n - self.lookahead, 0)
        self.keys = np.concatenate([self.keys, new_k[:, :, :commit]], axis=2)
        self.values = np.concatenate([self.values, new_v[:, :, :commit]], axis=2)
        kept = np.concatenate([self.conv_left, new_conv[:, :, :commit]], axis=2)
        self.conv_left = np.ascontiguousarray(kept[:, :, kept.shape[2] - g.pad:])
        self.held = np.ascontiguousarray(layer0[:, commit:])
        self.emitted = counts
        self.frames_out += commit
        self.frames_encoded += n
        self._held_logprobs = logprobs[0, commit:]
        return logprobs[0]


def chunk_session(path: Path, threads: int, providers: list[Any]) -> Any:
    """An ONNX Runtime session of a chunk graph, with the encoder's session options."""
    import onnxruntime as ort

    from server.models.asr_onnx import session_options

    return ort.InferenceSession(str(path), session_options(threads), providers=providers)


__all__ = ["ChunkGeometry", "ChunkStep", "OnnxChunkedEncoder", "chunk_session", "ensure_chunk_graph", "export_chunk_step",
           "supports_chunk_graph"]
