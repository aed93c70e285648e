"""Which torch device the models run on: ``cpu``, ``cuda`` or ``cuda:N``, or automatic (CUDA when available).

Asking for CUDA where there is none is an error: a server silently falling back to the CPU would look healthy and
be far too slow.
"""

from __future__ import annotations

import logging
import re
from typing import Optional

import torch

log = logging.getLogger(__name__)

_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


class DeviceUnavailable(RuntimeError):
    """The requested device does not exist on this machine."""


def resolve_device(requested: Optional[str]) -> torch.device:
    """The device for ``requested`` (``None``, ``""`` or ``"auto"``: CUDA when available, else CPU).

    ``cuda`` resolves to the current CUDA device with its index (tensors report ``cuda:0``, never ``cuda``), so
    the result compares equal to every tensor placed on it. Raises ``ValueError`` for a malformed name and
    :class:`DeviceUnavailable` for CUDA without a usable GPU.
    """
    name = (requested or "auto").strip().lower()
    if name == "auto":
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        log.info("device: %s (automatic choice; CUDA %s)", device,
                 "available" if device.type == "cuda" else "not available")
        return device
    if name == "mps":
        raise DeviceUnavailable("device 'mps' is not supported by rechka's models; use --device cpu or cuda")
    match = _DEVICE.match(name)
    if match is None:
        raise ValueError(f"device {requested!r} is not one of auto, cpu, cuda or cuda:N (N = GPU index)")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        if index not in (None, "0"):
            raise ValueError(f"device {requested!r}: the CPU has no index; use 'cpu'")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"device {requested!r} was requested but CUDA is not available (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda or 'none'}). Check the GPU driver (nvidia-smi) or run with "
            "--device cpu; rechka never falls back to the CPU by itself.")
    count = torch.cuda.device_count()
    number = torch.cuda.current_device() if index is None else int(index)
    if number >= count:
        raise DeviceUnavailable(f"device {requested!r}: this machine has {count} CUDA device(s), "
                                f"numbered 0 to {count - 1}")
    return torch.device("cuda", number)
