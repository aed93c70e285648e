"""Read a pyannote (lightning) checkpoint without pyannote.audio or lightning, and without running its pickle's code.

A pyannote checkpoint is a ``torch.save``'d lightning dict whose pickle names pyannote classes (``Specifications``,
``Problem``, ``Resolution``, ``Introspection``) and, in older ones, omegaconf containers. It is read with torch's
restricted ``weights_only`` unpickler; each such class is mapped, for that one load, to a :class:`PickledObject`
stand-in that only records the arguments and state the pickle gives it. Nothing of the named classes runs, and any
other global the pickle names (a function, a class of another package) is refused: :class:`UnreadableCheckpoint`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch
from torch.torch_version import TorchVersion

from server.models.pyannet import PROBLEMS, SegmentationTask

STAND_IN_PREFIXES = ("pyannote.", "omegaconf.", "typing.")
"""Globals under these prefixes become :class:`PickledObject` stand-ins."""
PLAIN_GLOBALS: dict[str, Any] = {"builtins.dict": dict, "builtins.list": list, "builtins.int": int,
                                 "builtins.float": float, "builtins.tuple": tuple, "builtins.str": str,
                                 "collections.defaultdict": defaultdict,
                                 "torch.torch_version.TorchVersion": TorchVersion}
"""Globals that are plain containers or values: allowed as themselves."""


class UnreadableCheckpoint(ValueError):
    """Not a pyannote checkpoint this reader understands (the message says why)."""


class PickledObject:
    """Stand-in for an object of class :attr:`qualname` in a checkpoint: ``args`` (what it was built from, e.g. an
    enum's value) and ``state`` (its pickled ``__dict__``), nothing else."""

    qualname = ""

    def __new__(cls, *args: Any) -> "PickledObject":
        instance = super().__new__(cls)
        instance.args, instance.state = args, {}
        return instance

    def __init__(self, *args: Any) -> None:
        """Nothing to do: :meth:`__new__` kept the arguments."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"PickledObject({self.qualname}, args={self.args!r}, state={self.state!r})"


@dataclass(frozen=True)
class PyannoteCheckpoint:
    """What a pyannote segmentation checkpoint holds: its model class (``module.Class``), hyper-parameters,
    task and weights."""

    architecture: str
    hparams: dict[str, Any]
    task: SegmentationTask
    state_dict: dict[str, torch.Tensor]


def stand_ins(path: Union[str, Path]) -> list[tuple[Any, str]]:
    """The ``(object, "module.name")`` pairs that let torch's weights-only unpickler read ``path``."""
    allowed = []
    for name in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)):
        if name in PLAIN_GLOBALS:
            allowed.append((PLAIN_GLOBALS[name], name))
        elif name.startswith(STAND_IN_PREFIXES):
            allowed.append((type(name.rsplit(".", 1)[-1], (PickledObject,), {"qualname": name}), name))
        else:
            raise UnreadableCheckpoint(f"{path} names {name}, which a pyannote checkpoint has no need of")
    return allowed


def read_pyannote_checkpoint(path: Union[str, Path]) -> PyannoteCheckpoint:
    """The architecture, hyper-parameters, task and state dict of a pyannote segmentation checkpoint file."""
    try:
        with torch.serialization.safe_globals(stand_ins(path)):
            content = torch.load(str(path), map_location="cpu", weights_only=True)
    except UnreadableCheckpoint:
        raise
    except Exception as exc:  # torch raises several kinds for "not a (readable) checkpoint"
        raise UnreadableCheckpoint(f"{path} is not a readable torch checkpoint ({type(exc).__name__}: {exc})") from exc
    try:
        meta = content["pyannote.audio"]
        architecture = meta["architecture"]
        return PyannoteCheckpoint(f"{architecture['module']}.{architecture['class']}",
                                  dict(content.get("hyper_parameters") or {}), _task(meta["specifications"]),
                                  dict(content["state_dict"]))
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise UnreadableCheckpoint(f"{path} is not a single-task pyannote segmentation checkpoint ({exc!r})") from exc


def _task(specifications: Any) -> SegmentationTask:
    """A pickled ``Specifications`` stand-in as a :class:`SegmentationTask`."""
    if not isinstance(specifications, PickledObject) or not specifications.qualname.endswith(".Specifications"):
        raise ValueError(f"specifications are a {type(specifications).__name__}, not one Specifications")
    state = specifications.state
    problem, resolution = state["problem"], state.get("resolution")
    if not isinstance(problem, PickledObject) or not problem.args or problem.args[0] not in PROBLEMS:
        raise ValueError(f"unknown problem {problem!r}")
    if isinstance(resolution, PickledObject) and resolution.args != (1,):  # Resolution.FRAME
        raise ValueError("the model outputs one vector per chunk, not frames")
    max_classes = state.get("powerset_max_classes")
    return SegmentationTask(PROBLEMS[problem.args[0]], float(state["duration"]), tuple(state["classes"]),
                            int(max_classes) if max_classes is not None else None)
