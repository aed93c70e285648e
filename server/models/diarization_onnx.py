"""Diarization's models on ONNX Runtime (``--diarization-engine onnx``; the default ``auto`` picks it on the CPU): the
same networks and weights as the torch adapters, exported once into the model cache and run on the CPU.

- Segmentation (:class:`OnnxSegmentationModel`): rechka's :class:`~server.models.pyannet.PyanNet` (the whisperx
  PyanNet and segmentation-3.0 checkpoints, or any local PyanNet checkpoint) together with the adapter's activation
  (sigmoid, or the powerset → per-speaker conversion, then the clamp to [0, 1]), as two graphs: the sinc filterbank
  on raw samples, ``waveforms (B, 1, n)`` → ``filtered (B, 80, frames)``, and the rest, ``waveforms, filtered`` →
  ``probabilities (B, frames, speakers)`` (the window's instance norm applied to the responses, see
  :mod:`server.models.sinc_reuse`), batch and length dynamic. Consecutive windows of a stream overlap ten-fold, so
  the filterbank runs only over the samples a stream's previous window did not cover (:class:`SincReuse`;
  ``reuse_sinc=False``: one whole-window graph, as before). Windows of equal length share a call as in torch (the
  model normalises each waveform as a whole, so nothing is padded).
- resemblyzer (:class:`OnnxResemblyzerEmbedding`): the GE2E encoder (3-layer LSTM, linear, ReLU, L2 norm) on every
  1.6 s partial, ``mels (N, 160, 40)`` → ``(N, 256)``; the mel front end (one STFT over the batch, 1.7 ms of ~25) and
  the per-request mean stay in torch.
- CAM++ (:class:`OnnxCamPlusPlusEmbedding`): the whole masked network, ``features (B, T, 80), lengths (B,)`` →
  ``(B, 192)`` with the torch path's masks, so a padded row gives what it gives alone. The Kaldi fbank stays in torch
  (``torchaudio.compliance.kaldi.fbank``, the reference implementation; ~1.3 ms per 2 s request, a few per cent of
  the network's cost); exporting it would need ONNX's DFT and change its numerics.

Graphs are exported by torch's TorchScript exporter (``dynamo=False``) into ``onnx/NAME-KEY.onnx`` of the model
cache, keyed by the weights, opset and torch version (:func:`server.models.asr_onnx.graph_key`), built atomically;
later starts load the file. Requests and results are the torch adapters', unchanged; other segmentation
architectures and pyannote embedding models have no ONNX engine (``auto`` keeps them on torch).
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from server.models.asr_onnx import OPSET, atomic_build, engine_for, ensure_onnx_graph, session_options
from server.models.audit import note_onnx_parameters
from server.models.cache import (CAMPPLUS, EMBEDDING_DEFAULT, EMBEDDING_REUSE, EMBEDDING_REUSE_DEFAULT, SEGMENTATION_DEFAULT,
                                 check_embedding_reuse)
from server.models.campplus import CamPlusPlusEmbedding
from server.models.embedding import ResemblyzerEmbedding, _l2_normalize, load_embedding_model
from server.models.pyannet import PyanNet
from server.models.segmentation import SegmentationModel
from server.models.sinc_reuse import SincReuse
from streaming.work import SegmentationRequest

log = logging.getLogger(__name__)

ONNX_EMBEDDINGS = (EMBEDDING_DEFAULT, CAMPPLUS)


def diarization_engine_for(device_type: str, engine: str = "auto") -> str:
    """``--diarization-engine`` resolved for a device (:func:`~server.models.asr_onnx.engine_for`)."""
    return engine_for("diarization", "--diarization-engine", device_type, engine)


def export_graph(module: nn.Module, example: tuple[torch.Tensor, ...], inputs: list[str], outputs: list[str],
                 axes: dict[str, dict[int, str]]) -> bytes:
    """``module`` (float32, CPU, eval) as an ONNX graph with the dynamic ``axes``."""
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings of shape arithmetic the graph keeps dynamic (tested)
        torch.onnx.export(module.eval(), example, buffer, input_names=inputs, output_names=outputs,
                          opset_version=OPSET, dynamic_axes=axes, dynamo=False)
    return buffer.getvalue()


def lstm_int8(path: Path) -> Path:
    """``path``'s graph with ONNX Runtime's dynamic int8 quantization of its LSTM nodes (QInt8 weights, activations
    quantized per call) but the first, cached beside it as ``NAME-int8.onnx``. The first LSTM's input is left alone:
    resemblyzer's mel powers span 0..6 with a median of 4e-5, which one 8-bit scale per tensor flattens to zero."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = path.with_name(f"{path.stem}-int8.onnx")
    if not target.is_file():
        lstms = [node.name for node in onnx.load(str(path)).graph.node if node.op_type == "LSTM"]
        atomic_build(lambda tmp: quantize_dynamic(path, tmp, op_types_to_quantize=["LSTM"],
                                                  weight_type=QuantType.QInt8, nodes_to_exclude=lstms[:1]), target)
    return target


def cpu_session(path: Path, threads: int, module: nn.Module, counted_elsewhere: Optional[nn.Module] = None) -> Any:
    """An ONNX Runtime CPU session of ``path`` (``threads`` intra-op threads, no spinning); the audit reports the
    parameters of the ``module`` it was exported from (less those of ``counted_elsewhere``: another session's)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    other = {id(p) for p in counted_elsewhere.parameters()} if counted_elsewhere is not None else set()
    mine = [p for p in module.parameters() if id(p) not in other]
    note_onnx_parameters(session, sum(p.numel() for p in mine),
                         sorted({str(p.dtype).removeprefix("torch.") for p in mine}))
    return session


def _check_cpu(device: Union[str, torch.device], adapter: str) -> None:
    if torch.device(device).type != "cpu":
        raise ValueError(f"{adapter} runs on the CPU only; use the torch adapter on CUDA")


class _SegmentationScores(nn.Module):
    """What is exported: PyanNet and the adapter's activation, ``(B, 1, samples)`` → ``(B, frames, speakers)``."""

    def __init__(self, adapter: SegmentationModel) -> None:
        super().__init__()
        self.net = adapter.model
        self.powerset = adapter.powerset  # registered here, so its mapping is exported with the graph
        self.activate = adapter.probabilities  # the torch adapter's own activation code (it uses the two above)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        return self.activate(self.net(waveforms))


class _SincFilterbank(nn.Module):
    """What is exported first: the sinc filterbank on raw samples, ``(B, 1, n)`` → ``(B, 80, frames)``."""

    def __init__(self, net: PyanNet) -> None:
        super().__init__()
        self.conv = net.sincnet.conv1d[0]

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        return self.conv(waveforms)


class _ScoresAfterSinc(_SegmentationScores):
    """What is exported second: the rest of :class:`_SegmentationScores` from the raw filter responses ``filtered``
    ``(B, 80, frames)`` of ``waveforms``: the instance norm's ``k x + c`` becomes ``k filtered + c sum(filter)`` (the
    filterbank is linear), then SincNet's later stages, the head and the activation."""

    def forward(self, waveforms: torch.Tensor, filtered: torch.Tensor) -> torch.Tensor:
        sincnet = self.net.sincnet
        norm = sincnet.wav_norm1d
        mean = waveforms.mean(dim=2, keepdim=True)
        variance = ((waveforms - mean) ** 2).mean(dim=2, keepdim=True)
        scale = norm.weight.view(1, 1, 1) / torch.sqrt(variance + norm.eps)
        shift = norm.bias.view(1, 1, 1) - scale * mean
        sums = sincnet.conv1d[0].filterbank().sum(dim=(1, 2)).view(1, -1, 1)
        return self.activate(self.net.head(sincnet.after_filterbank(filtered * scale + shift * sums)))


class OnnxSegmentationModel(SegmentationModel):
    """The "segmentation" batch model on ONNX Runtime (PyanNet checkpoints only; CPU, ``threads`` intra-op threads);
    ``reuse_sinc``: the filterbank once per stream (:class:`SincReuse`, ``streams`` of them kept), else one graph."""

    def __init__(self, model: str = SEGMENTATION_DEFAULT, device: Union[str, torch.device] = "cpu",
                 max_batch: int = 32, *, wheel: Optional[Path] = None, threads: int = 1, reuse_sinc: bool = True,
                 streams: int = 32, int8: bool = False) -> None:
        _check_cpu(device, "OnnxSegmentationModel")
        super().__init__(model, "cpu", max_batch, wheel=wheel)
        if not isinstance(self.model, PyanNet):
            raise ValueError(f"segmentation model {self.checkpoint} is a {type(self.model).__name__}; the onnx "
                             "engine runs PyanNet checkpoints only (use --diarization-engine torch)")
        self.threads, self.int8 = threads, int8
        waveforms = torch.zeros(2, 1, self.window)
        self.reuse: Optional[SincReuse] = None
        if not reuse_sinc:
            scores = _SegmentationScores(self).eval()
            path = ensure_onnx_graph("pyannet", scores, lambda: export_graph(
                scores, (waveforms,), ["waveforms"], ["probabilities"],
                {"waveforms": {0: "batch", 2: "samples"}, "probabilities": {0: "batch", 1: "frames"}}))
            self.session = cpu_session(lstm_int8(path) if int8 else path, threads, scores)
            return
        bank = _SincFilterbank(self.model).eval()
        path = ensure_onnx_graph("pyannet-sinc", bank, lambda: export_graph(
            bank, (waveforms,), ["waveforms"], ["filtered"],
            {"waveforms": {0: "batch", 2: "samples"}, "filtered": {0: "batch", 2: "frames"}}))
        self.sinc_session = cpu_session(path, threads, bank)
        rest = _ScoresAfterSinc(self).eval()
        with torch.no_grad():
            filtered = bank(waveforms)
        path = ensure_onnx_graph("pyannet-after-sinc", rest, lambda: export_graph(
            rest, (waveforms, filtered), ["waveforms", "filtered"], ["probabilities"],
            {"waveforms": {0: "batch", 2: "samples"}, "filtered": {0: "batch", 2: "frames"},
             "probabilities": {0: "batch", 1: "frames"}}), recipe="pyannet-after-sinc")
        self.session = cpu_session(lstm_int8(path) if int8 else path, threads, rest, counted_elsewhere=bank)
        conv = self.model.sincnet.conv1d[0]
        self.reuse = SincReuse(lambda batch: self.sinc_session.run(None, {"waveforms": batch})[0],
                               conv.filterbank.taps, conv.stride, streams)

    def _scores(self, batch: np.ndarray, requests: Optional[list[SegmentationRequest]] = None) -> np.ndarray:
        if self.reuse is None:
            return self.session.run(None, {"waveforms": batch})[0]
        return self.session.run(None, {"waveforms": batch, "filtered": self.reuse.filtered(batch, requests)})[0]

    def modules(self) -> dict[str, Any]:
        if self.reuse is None:
            return {"pyannet": self.session}
        return {"pyannet_sinc": self.sinc_session, "pyannet": self.session}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "engine": "onnx", "threads": self.threads, "reuse_sinc": self.reuse is not None,
                "lstm_int8": self.int8}


class _GE2EPartials(nn.Module):
    """What is exported: resemblyzer's encoder on partials, ``(N, 160, 40)`` mels → ``(N, 256)`` unit vectors."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.encoder.lstm(mels)
        return _l2_normalize(self.encoder.relu(self.encoder.linear(hidden[-1])))


class OnnxResemblyzerEmbedding(ResemblyzerEmbedding):
    """The "embedding" batch model with resemblyzer's GE2E encoder on ONNX Runtime (the mel front end in torch)."""

    def __init__(self, device: Union[str, torch.device] = "cpu", max_batch: int = 32, *, threads: int = 1,
                 int8: bool = False, **options: Any) -> None:
        _check_cpu(device, "OnnxResemblyzerEmbedding")
        super().__init__("cpu", max_batch, **options)
        self.threads, self.int8 = threads, int8
        partials = _GE2EPartials(self.encoder).eval()
        path = ensure_onnx_graph("ge2e", partials, lambda: export_graph(
            partials, (torch.zeros(3, 160, 40),), ["mels"], ["embeddings"],
            {"mels": {0: "partials"}, "embeddings": {0: "partials"}}))
        self.session = cpu_session(lstm_int8(path) if int8 else path, threads, partials)

    def _encode(self, mels: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"mels": mels.contiguous().numpy()})[0])

    def modules(self) -> dict[str, Any]:
        return {"voice_encoder": self.session, "mel": self.frontend}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "engine": "onnx", "threads": self.threads, "lstm_int8": self.int8}


class OnnxCamPlusPlusEmbedding(CamPlusPlusEmbedding):
    """The "embedding" batch model with CAM++ on ONNX Runtime (the fbank in torch)."""

    def __init__(self, checkpoint: Optional[str] = None, device: Union[str, torch.device] = "cpu",
                 max_batch: int = 32, *, threads: int = 1, **options: Any) -> None:
        _check_cpu(device, "OnnxCamPlusPlusEmbedding")
        super().__init__(checkpoint, "cpu", max_batch, **options)
        self.threads = threads
        example = (torch.zeros(2, 300, 80), torch.tensor([300, 211]))
        path = ensure_onnx_graph("campplus", self.model, lambda: export_graph(
            self.model, example, ["features", "lengths"], ["embeddings"],
            {"features": {0: "batch", 1: "frames"}, "lengths": {0: "batch"}, "embeddings": {0: "batch"}}))
        self.session = cpu_session(path, threads, self.model)

    def _forward(self, features: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
        return self.session.run(None, {"features": features.contiguous().numpy(), "lengths": lengths.numpy()})[0]

    def modules(self) -> dict[str, Any]:
        return {"campplus": self.session}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "engine": "onnx", "threads": self.threads}


def load_segmentation(model: str, device: str, max_batch: int, engine: str = "auto", *,
                      wheel: Optional[Path] = None, threads: int = 1) -> SegmentationModel:
    """The segmentation adapter on ``engine`` (:func:`diarization_engine_for`); with ``auto`` a model the onnx
    engine cannot run (not a PyanNet) stays on torch."""
    if diarization_engine_for(torch.device(device).type, engine) == "onnx":
        try:
            return OnnxSegmentationModel(model, device, max_batch, wheel=wheel, threads=threads)
        except ValueError:
            if engine == "onnx":
                raise
            log.info("segmentation model %s has no onnx engine; running it on torch", model)
    return SegmentationModel(model, device, max_batch, wheel=wheel)


def load_embedding(model: str, device: str, max_batch: int, engine: str = "auto", *, threads: int = 1,
                   reuse: str = EMBEDDING_REUSE_DEFAULT) -> Any:
    """The embedding adapter on ``engine``: resemblyzer and CAM++ have an onnx engine; with ``auto`` any other
    (pyannote) model stays on torch, with ``onnx`` it is refused. ``reuse``: resemblyzer's partial reuse
    (:data:`~server.models.cache.EMBEDDING_REUSE`)."""
    check_embedding_reuse(model, reuse)
    if diarization_engine_for(torch.device(device).type, engine) == "onnx":
        if model == EMBEDDING_DEFAULT:
            return OnnxResemblyzerEmbedding(device, max_batch, threads=threads, reuse_partials=EMBEDDING_REUSE[reuse])
        if model == CAMPPLUS:
            return OnnxCamPlusPlusEmbedding(None, device, max_batch, threads=threads)
        if engine == "onnx":
            raise ValueError(f"embedding model {model!r} has no onnx engine (only {', '.join(ONNX_EMBEDDINGS)}); use "
                             "--diarization-engine torch")
    return load_embedding_model(model, device, max_batch, reuse)
