"""GigaAM's encoder on ONNX Runtime (``--asr-engine onnx``): the same adapter as :class:`~server.models.asr.GigaAmAsr`
with only the encoder swapped, so log-mels, CTC/RNNT decoding and word timings stay the torch path's.

The graph is exported by this module, not by gigaam (whose ``to_onnx`` takes torch 2.9's dynamo exporter and traces
at batch 1 without masks): :class:`MaskedEncoder` wraps :func:`~server.models.gigaam_compat.encode_features`, the
torch path's own masked forward (padded frames zeroed before each subsampling convolution, attention masked), and
``torch.onnx.export(..., dynamo=False)`` traces it with dynamic batch and time axes, so a ragged batch gives what
the torch path gives. ``int8`` is ONNX Runtime's dynamic quantization with QInt8 weights of the MatMul ops only (the
issue's measurements: QUInt8 and quantizing the convolutions too were slower on the CPU), with ``reduce_range``
(7-bit weights): without VNNI, x86's u8×s8 kernels saturate their 16-bit sums; on the 2-core AVX2 benchmark CPU
full 8-bit weights moved log-probs by up to 0.31, 7-bit ones by 0.029, at the same speed
(``benchmarks/asr_engines.py``, docs/benchmarks.md).

Dynamic quantization covers MatMul, not Conv: int8 graphs are exported by the recipe ``masked-taps-v2``, which
computes the convolutions that mix channels — v2's second subsampling Conv2d (768→768, 3×3, stride 2) and every
Conformer layer's two pointwise Conv1d — as MatMuls, one per kernel tap (:mod:`server.models.conv_taps`; exact in
fp32), so int8 quantizes them too. fp32 graphs keep them as Conv ops (``masked-v1``), which ONNX Runtime runs faster
than the taps in fp32.

Graphs live in the rechka cache (``$RECHKA_CACHE/onnx``), named by the SHA-256 of the encoder's weights (the
checkpoint's content, so any checkpoint or random-weights build gets its own), the export recipe and the
precision; they are built on first use (``rechka-fetch-models --asr-engine onnx`` builds them ahead) and never
committed. On CUDA the session uses the CUDA execution provider and fails rather than falling back to the CPU; the
device audit checks the session's providers and ``/health`` shows engine, precision and
providers.

Cached partials (``PartialOptions.cached_context``) run on a second graph of the same weights, one chunk step with
the caches as inputs and outputs (:mod:`server.models.asr_cache_onnx`), built beside this one at load for CTC
models with rotary positions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from server.models.asr import GigaAmAsr
from server.models.asr_cache_onnx import (
    ChunkGeometry,
    OnnxChunkedEncoder,
    chunk_session,
    ensure_chunk_graph,
    supports_chunk_graph,
)
from server.models.audit import onnx_device
from server.models.base import current_interrupt, on_spill_lane
from server.models.cache import cache_dir
from server.models.conv_taps import with_tap_convs
from server.models.gigaam_compat import encode_features, features_batch
from server.models.gigaam_models import DEFAULT_MODEL
from streaming.work import AsrKind, AsrRequest, AsrResult

log = logging.getLogger(__name__)

MATMUL_CONVS = "masked-taps-v2"  # channel-mixing convolutions as MatMuls per kernel tap (conv_taps), int8 with the rest
CONV_OPS = "masked-v1"  # the first recipe: convolutions as Conv ops, which int8 leaves fp32
RECIPES = (MATMUL_CONVS, CONV_OPS)  # part of the cache key: a changed graph form needs a new name
# per precision, measured side by side (docs/benchmarks.md): MatMuls per tap pay off only when int8 quantizes them;
# in fp32, ONNX Runtime's Conv kernels are faster than the taps' slices and sums
DEFAULT_RECIPES = {"fp32": CONV_OPS, "int8": MATMUL_CONVS}
OPSET = 17
PRECISIONS = ("fp32", "int8")


class MaskedEncoder(torch.nn.Module):
    """``(features (B, T, F) zero-padded log-mels, lengths (B,))`` → ``(encoded (B, T', D), encoded lengths)``, with
    the torch path's ragged-batch masks (the attention mask is built at every batch size, so one graph fits all)."""

    def __init__(self, encoder: torch.nn.Module, recipe: str) -> None:
        super().__init__()
        _check_recipe(recipe)
        self.encoder = with_tap_convs(encoder) if recipe == MATMUL_CONVS else encoder  # encode_features reads it

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_features(self, features, lengths, mask_always=True)  # type: ignore[arg-type]


def _check_recipe(recipe: str) -> None:
    if recipe not in RECIPES:
        raise ValueError(f"ONNX export recipe {recipe!r} is unknown; use one of {', '.join(RECIPES)}")


def weights_key(encoder: torch.nn.Module, recipe: str) -> str:
    """SHA-256 over the encoder's parameter and buffer names and bytes (its checkpoint's content) plus the recipe."""
    _check_recipe(recipe)
    return graph_key(encoder, recipe)


def graph_key(module: torch.nn.Module, recipe: str) -> str:
    """SHA-256 over ``recipe``, the opset, torch's version and ``module``'s state (names and bytes): the cache key
    of a graph exported from it."""
    digest = hashlib.sha256(f"{recipe}/opset{OPSET}/torch{torch.__version__}".encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def export_encoder(encoder: torch.nn.Module, path: Path, features: int, recipe: str) -> None:
    """Export :class:`MaskedEncoder` (float32, on the CPU) to ``path`` with dynamic batch and time axes."""
    wrapper = MaskedEncoder(encoder, recipe).eval()
    x = torch.randn(2, 300, features)
    lengths = torch.tensor([300, 211])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is the one that works here
        torch.onnx.export(wrapper, (x, lengths), str(path), input_names=["features", "lengths"],
                          output_names=["encoded", "encoded_lengths"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"features": {0: "batch", 1: "time"}, "lengths": {0: "batch"},
                                        "encoded": {0: "batch", 1: "frames"}, "encoded_lengths": {0: "batch"}})


def quantize_int8(source: Path, target: Path) -> None:
    """ONNX Runtime dynamic quantization: QInt8 weights (7-bit range, see the module docstring), MatMul ops only."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(source, target, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8, reduce_range=True)


ENGINES = ("auto", "torch", "onnx")


def engine_for(what: str, flag: str, device_type: str, engine: str = "auto") -> str:
    """``engine`` (``auto``, ``torch`` or ``onnx``) of the ``what`` models (set by ``flag``) resolved for a device:
    ``auto`` is ONNX Runtime on the CPU (measured cheaper, equal outputs) and torch on CUDA (this environment has no
    onnxruntime-gpu)."""
    if engine not in ENGINES:
        raise ValueError(f"{what} engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "auto":
        return "onnx" if device_type == "cpu" else "torch"
    if engine == "onnx" and device_type != "cpu":
        raise ValueError(f"the onnx {what} engine runs on the CPU only; use {flag} torch (or auto) on CUDA")
    return engine


def ensure_onnx_graph(name: str, module: torch.nn.Module, export: Any, root: Optional[Path] = None,
                      recipe: Optional[str] = None) -> Path:
    """The cached graph ``onnx/NAME-KEY.onnx`` of ``module`` (key: :func:`graph_key` of its weights and ``recipe``,
    default ``name``); ``export()`` returns the graph's bytes and runs only when the file is missing."""
    folder = (root or cache_dir()) / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{graph_key(module, recipe or name)[:24]}.onnx"
    if not path.is_file():
        log.info("exporting %s to %s", name, path)
        atomic_build(lambda tmp: tmp.write_bytes(export()), path)
    return path


def atomic_build(build: Any, target: Path) -> None:
    """Run ``build(tmp_path)`` and move the result to ``target`` (concurrent builders never see half a file)."""
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.onnx", dir=target.parent)
    os.close(fd)
    try:
        build(Path(tmp))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def ensure_graph(encoder: torch.nn.Module, features: int, precision: str, root: Optional[Path] = None,
                 recipe: Optional[str] = None) -> Path:
    """The cached graph of ``encoder`` at ``precision``, exported (and quantized) first if it is missing; ``recipe``
    defaults to the precision's (:data:`DEFAULT_RECIPES`). An int8 graph is quantized from the same recipe's fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"ONNX precision {precision!r} is not supported; use one of {', '.join(PRECISIONS)}")
    recipe = recipe or DEFAULT_RECIPES[precision]
    folder = (root or cache_dir()) / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    key = weights_key(encoder, recipe)[:24]
    fp32 = folder / f"gigaam-encoder-{key}-fp32.onnx"
    if not fp32.is_file():
        log.info("exporting the GigaAM encoder to %s", fp32)
        cpu = encoder if next(encoder.parameters()).device.type == "cpu" else _cpu_copy(encoder)
        atomic_build(lambda tmp: export_encoder(cpu, tmp, features, recipe), fp32)
    if precision == "fp32":
        return fp32
    int8 = folder / f"gigaam-encoder-{key}-int8r.onnx"  # r: reduce_range
    if not int8.is_file():
        log.info("quantizing %s to int8", fp32)
        atomic_build(lambda tmp: quantize_int8(fp32, tmp), int8)
    return int8


def _cpu_copy(encoder: torch.nn.Module) -> torch.nn.Module:
    import copy

    clone = copy.deepcopy(encoder)
    clone = clone.float().to("cpu")
    return clone


def session_options(threads: int) -> Any:
    """ONNX Runtime options of the encoder session: ``threads`` intra-op threads that do not spin between runs (they
    would take the cores from the other models' batchers), and no memory pattern: every request has its own
    (batch, frames) shape and ORT caches a pattern per shape, so with it a long-running server's RSS only grows.
    The CPU arena stays on: it grows to the largest working set and stays there, and without it every run pays
    for fresh allocations (1.45x slower side by side; docs/reliability.md, soak)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.enable_mem_pattern = False
    return so


class OnnxGigaAmAsr(GigaAmAsr):
    """:class:`GigaAmAsr` whose encoder runs on ONNX Runtime (``precision`` ``fp32`` or ``int8``; ``recipe`` one of
    :data:`RECIPES`, how the graph is exported, by default the precision's in :data:`DEFAULT_RECIPES`).

    ``threads``: ONNX Runtime's intra-op threads (default: torch's); see :func:`session_options`. ``final_threads``:
    batches of finals only run on a second session of the same graph with this many threads (the server's finals
    lane: a final decoded on both cores while partials and diarization, on lower-priority threads, wait); None or
    equal to ``threads``: one session for all."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "cpu", max_batch: int = 16, precision: str = "int8",
                 threads: Optional[int] = None, recipe: Optional[str] = None, final_threads: Optional[int] = None,
                 **options: Any) -> None:
        import onnxruntime as ort

        if precision not in PRECISIONS:
            raise ValueError(f"OnnxGigaAmAsr precision {precision!r} is not supported; use one of "
                             f"{', '.join(PRECISIONS)}")
        options.pop("quantize", None)  # torch's dynamic int8 does not apply: precision says what the graph holds
        super().__init__(model, device, max_batch, fp16=False, **options)
        self.precision = precision
        features = self.spec.frontend.features
        self.recipe = recipe or DEFAULT_RECIPES[precision]
        self.graph = ensure_graph(self.model.encoder, features, precision, recipe=recipe)
        if self.device.type == "cuda":
            self._providers: list[Any] = [("CUDAExecutionProvider", {"device_id": self.device.index or 0})]
        else:
            self._providers = ["CPUExecutionProvider"]
        self.threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(str(self.graph), session_options(self.threads), providers=self._providers)
        self.final_threads = final_threads if final_threads and self.device.type == "cpu" else self.threads
        self.final_session = self.session if self.final_threads == self.threads else ort.InferenceSession(
            str(self.graph), session_options(self.final_threads), providers=self._providers)
        self._lane = threading.local()  # the session this thread's batch runs on
        if onnx_device(self.session).type != self.device.type:
            raise RuntimeError(f"ONNX Runtime could not use {self.device} (providers {self.session.get_providers()});"
                               f" install onnxruntime-gpu for CUDA, or use --asr-engine torch")
        self._encoder_parameters = sum(p.numel() for p in self.model.encoder.parameters())
        self.chunk_graph: Optional[Path] = None  # cached partials' chunk step (asr_cache_onnx), CTC with rotary only
        self.chunk_session: Any = None
        if supports_chunk_graph(self.model):
            self.chunk_graph = ensure_chunk_graph(self.model, precision)
            self.chunk_session = chunk_session(self.chunk_graph, self.threads, self._providers)
            self._chunk_geometry = ChunkGeometry(self.model)
        # cached partials per chunk-graph run: on the CPU rows of several streams did not run faster than one run
        # each (benchmarks/partial_rows.py: 0.96-1.05x at 1-4 rows, 1.2x at 8), so one; on CUDA a batch's worth
        self.chunk_rows = 1 if self.device.type == "cpu" else max_batch
        self.model.encoder = torch.nn.Identity()  # its weights live in the graph now; keep only what still runs

    def set_threads(self, threads: int) -> None:
        """Open the graph again with ``threads`` intra-op threads (a whole-file run that overlaps GigaAM with the other
        models may want another count than the one it was loaded with); a no-op at the current count. Batches of
        finals follow when they had no session of their own."""
        import onnxruntime as ort

        if threads < 1:
            raise ValueError("OnnxGigaAmAsr threads must be >= 1")
        if threads != self.threads:
            shared = self.final_session is self.session
            self.session = ort.InferenceSession(str(self.graph), session_options(threads), providers=self._providers)
            self.threads = threads
            if self.chunk_graph is not None:
                self.chunk_session = chunk_session(self.chunk_graph, threads, self._providers)
            if shared:
                self.final_session, self.final_threads = self.session, threads

    @property
    def has_chunk_encoder(self) -> bool:
        return self.chunk_session is not None

    def chunk_encoder(self, lookahead: int) -> OnnxChunkedEncoder:  # type: ignore[override]
        """A new utterance's cached encoder on the chunk graph's session (``PartialOptions.cached_context``)."""
        return OnnxChunkedEncoder(self.chunk_session, self._chunk_geometry, self.model.preprocessor, lookahead)

    def run_batch(self, requests: Sequence[AsrRequest]) -> list[AsrResult]:
        finals = all(r.kind == AsrKind.FINAL for r in requests)
        self._lane.session = self.final_session if finals and not on_spill_lane() else self.session
        return super().run_batch(requests)

    def _encode(self, wavs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = features_batch(self.model, wavs)
        session = getattr(self._lane, "session", self.session)
        feeds = {"features": x.float().cpu().numpy(), "lengths": lengths.cpu().numpy().astype(np.int64)}
        interrupt = current_interrupt()
        if interrupt is None:
            encoded, frames = session.run(None, feeds)
        else:  # the batcher may stop it: every request of the batch cancelled (ORT stops between nodes and raises)
            import onnxruntime as ort

            run_options = ort.RunOptions()
            with interrupt.bound(lambda: setattr(run_options, "terminate", True)):
                encoded, frames = session.run(None, feeds, run_options)
        return torch.from_numpy(encoded).to(self.device), torch.from_numpy(frames).to(self.device)

    def modules(self) -> dict[str, Any]:
        modules = {"gigaam": self.model, "onnx_encoder": self.session}
        if self.final_session is not self.session:
            modules["onnx_encoder_finals"] = self.final_session
        if self.chunk_session is not None:
            modules["onnx_chunk_step"] = self.chunk_session
        return modules

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(engine="onnx", precision=self.precision, recipe=self.recipe, providers=self.session.get_providers(),
                   graph=self.graph.name, chunk_graph=self.chunk_graph.name if self.chunk_graph else None,
                   quantize=None, final_threads=self.final_threads,
                   parameters=out["parameters"] + self._encoder_parameters)
        return out
