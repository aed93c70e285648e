"""Load the four model adapters on one device, audit where their tensors are, warm them up.

Used by the server at start-up (``models, placement = load_models(config)``) and by ``rechka-fetch-models``.
Everything that makes start-up impossible raises one of three errors with a paragraph that says what to do:
:class:`~server.models.cache.ModelUnavailable` (weights), :class:`~server.models.device.DeviceUnavailable` and
:class:`~server.models.audit.PlacementError`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, Union

from server.models.audit import ModelPlacement, audit_models
from server.models.base import BatchModel
from server.models.cache import EMBEDDING_DEFAULT, SEGMENTATION_DEFAULT, ModelUnavailable
from server.models.device import resolve_device
from server.models.gigaam_models import DEFAULT_MODEL
from streaming.config import ms

if TYPE_CHECKING:
    from pathlib import Path

    from server.config import ServerConfig
    from streaming.config import DiarizationOptions

log = logging.getLogger(__name__)

ASR_DEFAULT = DEFAULT_MODEL


class Models(NamedTuple):
    """The loaded adapters by batcher name (``vad``, ``segmentation``, ``embedding``, ``asr``) and their audited
    placement; unpacks as ``models, placement = load_models(...)``."""

    models: dict[str, BatchModel]
    placement: dict[str, ModelPlacement]

    @property
    def vad(self) -> BatchModel:
        return self.models["vad"]

    @property
    def segmentation(self) -> BatchModel:
        return self.models["segmentation"]

    @property
    def embedding(self) -> BatchModel:
        return self.models["embedding"]

    @property
    def asr(self) -> Optional[BatchModel]:
        return self.models.get("asr")


def load_models(asr: Union["ServerConfig", str, None] = ASR_DEFAULT, segmentation: str = SEGMENTATION_DEFAULT,
                embedding: str = EMBEDDING_DEFAULT, device: Optional[str] = None, *, max_batch: int = 16,
                warmup: bool = True, wheel: Optional["Path"] = None, asr_quantize: Optional[str] = None,
                asr_engine: str = "torch", threads: Optional[int] = None,
                final_threads: Optional[int] = None, vad_engine: str = "auto",
                diarization_engine: Optional[str] = None, embedding_reuse: Optional[str] = None) -> Models:
    """Load, audit and (optionally) warm up the models.

    ``asr``: a GigaAM model name or checkpoint path, or ``None`` to leave ASR out (``rechka-fetch-models
    --skip-asr``); a :class:`~server.config.ServerConfig` instead fills every argument from it.
    ``device``: ``None``/``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (see :func:`~server.models.device.resolve_device`).
    ``wheel``: a local whisperx wheel for the default segmentation weights (offline installs).
    ``asr_quantize``: ``"int8"`` for dynamic int8 GigaAM on the CPU (see ``server.models.asr.AsrOptions``).
    ``asr_engine``: ``"torch"`` or ``"onnx"`` (:mod:`server.models.asr_onnx`; ``asr_quantize`` then picks its graph),
    or ``"auto"`` (:func:`asr_engine_for`); ``asr_quantize="auto"`` likewise.
    ``threads``: intra-op threads of one model call on the CPU — torch's (process-wide, ``torch.set_num_threads``)
    and the ONNX encoder's; ``None`` leaves torch's as it is (its default is one per core). ``final_threads``: the
    ONNX encoder's threads for batches of finals only (``ServerConfig.final_threads``; None: ``threads``).
    ``vad_engine``: ``"auto"``, ``"torch"`` or ``"onnx"`` (:func:`server.models.vad_onnx.vad_engine_for`).
    ``diarization_engine``: the same for segmentation and embeddings
    (:func:`server.models.diarization_onnx.diarization_engine_for`; ``auto`` keeps models without an onnx engine on
    torch); ``None``: ``ServerConfig``'s default, its one home. ``embedding_reuse``: resemblyzer's partial reuse
    (:data:`server.models.cache.EMBEDDING_REUSE`); ``None``: ``ServerConfig``'s default.
    """
    if asr is not None and not isinstance(asr, str):
        config = asr
        asr, segmentation, embedding = config.asr_model, config.segmentation_model, config.embedding_model
        device, max_batch = config.device, config.max_batch
        asr_quantize, asr_engine, threads = config.asr_quantize, config.asr_engine, config.model_threads
        final_threads, vad_engine = config.final_threads, config.vad_engine
        diarization_engine, embedding_reuse = config.diarization_engine, config.embedding_reuse
    if diarization_engine is None:
        from server.config import ServerConfig

        diarization_engine = ServerConfig.diarization_engine
    if embedding_reuse is None:
        from server.config import ServerConfig

        embedding_reuse = ServerConfig.embedding_reuse
    target = resolve_device(device)
    name = str(target)
    if threads is not None:
        if threads < 1:
            raise ValueError("load_models threads must be >= 1 (one per core suits one model call at a time)")
        import torch

        torch.set_num_threads(threads)

    from server.models.diarization_onnx import load_embedding, load_segmentation
    from server.models.vad import VadModel
    from server.models.vad_onnx import OnnxVadModel, vad_engine_for

    started = time.monotonic()
    loaders: dict[str, Callable[[], BatchModel]] = {
        "vad": (lambda: OnnxVadModel(name, max_batch)) if vad_engine_for(target.type, vad_engine) == "onnx"
        else (lambda: VadModel(name, max_batch)),
        "segmentation": lambda: load_segmentation(segmentation, name, max_batch, diarization_engine, wheel=wheel,
                                                  threads=threads or 1),
        "embedding": lambda: load_embedding(embedding, name, max_batch, diarization_engine, threads=threads or 1,
                                            reuse=embedding_reuse),
    }
    if asr is not None:
        asr_engine, asr_quantize = asr_engine_for(target.type, asr_engine, asr_quantize)
        loaders["asr"] = lambda: load_asr(asr, name, max_batch, asr_quantize, asr_engine, threads, final_threads)
    models: dict[str, BatchModel] = {}
    seconds: dict[str, float] = {}
    for model_name, loader in loaders.items():
        begun = time.monotonic()
        models[model_name] = loader()
        seconds[model_name] = time.monotonic() - begun
    placement = audit_models(models, target)
    for model_name, entry in placement.items():
        log.info("model %-12s %s (%s)", model_name, entry.summary(), models[model_name].describe().get("checkpoint"))
    warmed = time.monotonic()
    if warmup:
        for model in models.values():
            model.warmup()
    log.info("models loaded in %.2f s (%s); warm-up %.2f s", warmed - started,
             ", ".join(f"{n} {s:.2f}" for n, s in seconds.items()), time.monotonic() - warmed)
    return Models(models, placement)


def fit_diarizer(options: "DiarizationOptions", segmentation: Any, embedding: Any) -> "DiarizationOptions":
    """``options`` with the segmentation model's window (its training duration: PyanNet 5 s, segmentation-3.0 10 s)
    and the tracking options calibrated for the models (the adapters' ``tracking``, the embedding model's winning;
    none for PyanNet and resemblyzer, whose calibration is ``DiarizationOptions``' defaults). ``update_threshold`` follows a changed
    ``new_speaker_threshold`` unless the preset sets it."""
    tracking = {**getattr(segmentation, "tracking", {}), **getattr(embedding, "tracking", {})}
    if "new_speaker_threshold" in tracking:
        tracking.setdefault("update_threshold", tracking["new_speaker_threshold"])
    window = int(getattr(segmentation, "window", options.window))
    latency = min(options.latency, window)
    return dataclasses.replace(options, window=window, latency=latency, **tracking)


def diarization_step_for(device_type: str, step: Optional[float] = None) -> Optional[float]:
    """``ServerConfig.diarization_step`` resolved for the segmentation model's device: ``None`` (auto) is
    :data:`~server.config.CPU_DIARIZATION_STEP` on the CPU and stays ``None`` (the diarizer's own 0.5 s) on CUDA."""
    from server.config import CPU_DIARIZATION_STEP

    if step is None and device_type == "cpu":
        return CPU_DIARIZATION_STEP
    return step


def fit_session(config: "ServerConfig", models: dict[str, BatchModel], segmentation_device: str) -> "ServerConfig":
    """The server config whose session diarizer fits the loaded models (see :func:`fit_diarizer`) and has the
    configured step (``ServerConfig.diarization_step``, :func:`diarization_step_for` the device the audit found the
    segmentation model on, e.g. ``cpu`` or ``cuda:0``; ``DiarizationOptions.at_step``)."""
    diarizer = fit_diarizer(config.session.diarizer, models["segmentation"], models["embedding"])
    step = diarization_step_for(segmentation_device.split(":")[0], config.diarization_step)
    if step is not None:
        diarizer = diarizer.at_step(ms(1000 * step))
    return dataclasses.replace(config, session=dataclasses.replace(config.session, diarizer=diarizer))


def asr_engine_for(device_type: str, engine: str = "auto",
                   quantize: Optional[str] = "auto") -> tuple[str, Optional[str]]:
    """``auto`` resolved for a device: ONNX Runtime int8 on the CPU (the measured CPU default, see
    ``server.config.ServerConfig``), torch without quantization on CUDA (this environment has no onnxruntime-gpu)."""
    if engine == "auto":
        engine = "onnx" if device_type == "cpu" else "torch"
    if quantize == "auto":
        quantize = "int8" if engine == "onnx" and device_type == "cpu" else None
    return engine, quantize


def load_asr(model: str, device: str, max_batch: int, quantize: Optional[str] = None, engine: str = "torch",
             threads: Optional[int] = None, final_threads: Optional[int] = None) -> Any:
    """GigaAM, imported only when needed; its own "unavailable" error is re-raised as :class:`ModelUnavailable`.
    ``threads``: the ONNX engine's intra-op threads (default: torch's); ``final_threads``: its threads for batches of
    finals (default: ``threads``; the torch engine has one thread count for all)."""
    from server.models import asr as asr_module

    try:
        if engine == "onnx":
            from server.models.asr_onnx import OnnxGigaAmAsr

            return OnnxGigaAmAsr(model, device, max_batch, precision=quantize or "fp32", threads=threads,
                                 final_threads=final_threads)
        if engine != "torch":
            raise ValueError(f"unknown ASR engine {engine!r}; use torch or onnx")
        return asr_module.GigaAmAsr(model, device, max_batch, quantize=quantize)
    except ModelUnavailable:
        raise
    except Exception as exc:
        if type(exc).__name__ == "ModelUnavailable":
            raise ModelUnavailable(str(exc)) from exc
        raise
