"""The device audit: every tensor every adapter computes with must be on the requested device.

:func:`audit_models` walks what each adapter's ``modules()`` returns: ``torch.nn.Module`` trees (TorchScript
included) with their parameters and buffers, plain tensors held as attributes of those modules (which ``.to()``
does not move), and non-module wrappers (pyannote, resemblyzer, gigaam objects; lists, tuples and dicts) whose
attributes hold modules or tensors. One misplaced tensor raises :class:`PlacementError` naming the model, the
path to it and the tensor. The report it returns is read from the tensors themselves.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence, Union

import torch

_MAX_DEPTH = 12  # how deep the walk follows attributes of non-module wrapper objects


class PlacementError(RuntimeError):
    """A parameter, buffer or tensor attribute is not on the requested device."""


_ONNX_WEIGHTS: "weakref.WeakKeyDictionary[Any, tuple[int, tuple[str, ...]]]" = weakref.WeakKeyDictionary()


def note_onnx_parameters(session: Any, parameters: int, dtypes: Sequence[str] = ("float32",)) -> None:
    """Record what an ONNX Runtime session's graph holds (the parameters of the module it was exported from, and
    their dtypes), so the audit reports them: a session has no torch tensors to count."""
    _ONNX_WEIGHTS[session] = (int(parameters), tuple(dtypes))


@dataclass(frozen=True)
class ModelPlacement:
    """Where one adapter's tensors are, as found by the audit."""

    name: str
    devices: tuple[str, ...]
    dtypes: tuple[str, ...]
    parameters: int  # total elements of the distinct parameters (torch tensors, and ONNX graphs' noted weights)
    tensors: int  # distinct tensors checked (parameters, buffers and tensor attributes)
    providers: tuple[str, ...] = ()  # the execution providers of its ONNX Runtime sessions, one entry per session

    def summary(self) -> str:
        held = [f"{self.tensors} tensors"] if self.tensors or not self.providers else []
        if self.providers:
            sessions = len(self.providers)
            held.append(f"{sessions} ONNX Runtime session{'s' if sessions > 1 else ''} "
                        f"({', '.join(sorted(set(self.providers)))})")
        return (f"{self.name}: {', '.join(self.devices) or 'no tensors'} "
                f"{'/'.join(self.dtypes)} {self.parameters:,} parameters in {' + '.join(held)}")


def audit_models(models: Mapping[str, Any], device: Union[str, torch.device]) -> dict[str, ModelPlacement]:
    """Audit every adapter (by name); the report per adapter, or :class:`PlacementError` on the first mismatch."""
    return {name: audit_model(name, adapter, device) for name, adapter in models.items()}


def audit_model(name: str, adapter: Any, device: Union[str, torch.device]) -> ModelPlacement:
    """Audit one adapter: each entry of ``adapter.modules()`` must hold only tensors on ``device``."""
    want = torch.device(device)
    seen: set[int] = set()
    devices: set[str] = set()
    dtypes: set[str] = set()
    parameters = 0
    providers: list[str] = []
    for root_name, root in adapter.modules().items():
        if hasattr(root, "get_providers") and hasattr(root, "run"):  # an ONNX Runtime session: its providers say
            have = onnx_device(root)
            if not _same_device(have, want):
                raise PlacementError(f"model {name!r}: the ONNX Runtime session {root_name} runs on {have} "
                                     f"(providers {root.get_providers()}), not on {want}")
            devices.add(str(have))
            providers.append(root.get_providers()[0])
            noted = _ONNX_WEIGHTS.get(root)
            if noted is not None:
                parameters += noted[0]
                dtypes.update(noted[1])
            continue
        for path, tensor, is_parameter in _tensors(root, root_name):
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            if not _same_device(tensor.device, want):
                raise PlacementError(
                    f"model {name!r}: {path} ({tuple(tensor.shape)}, {tensor.dtype}) is on {tensor.device}, "
                    f"not on {want}; assign every .to() result (m = m.to(device)) and register tensors as buffers")
            devices.add(str(tensor.device))
            dtypes.add(str(tensor.dtype).removeprefix("torch."))
            if is_parameter:
                parameters += tensor.numel()
    return ModelPlacement(name, tuple(sorted(devices)), tuple(sorted(dtypes)), parameters, len(seen),
                          tuple(providers))


def onnx_device(session: Any) -> torch.device:
    """The device of an ONNX Runtime session, from its first execution provider."""
    providers = session.get_providers()
    if providers and providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        options = session.get_provider_options().get(providers[0], {})
        return torch.device("cuda", int(options.get("device_id", 0)))
    return torch.device("cpu")


def _same_device(have: torch.device, want: torch.device) -> bool:
    if have.type != want.type:
        return False
    if want.type == "cuda":
        return (have.index or 0) == (want.index if want.index is not None else torch.cuda.current_device())
    return True


def _tensors(obj: Any, path: str) -> Iterator[tuple[str, torch.Tensor, bool]]:
    """(path, tensor, is_parameter) for every tensor reachable from ``obj``."""
    visited: set[int] = set()
    yield from _walk(obj, path, visited, 0)


def _walk(obj: Any, path: str, visited: set[int], depth: int) -> Iterator[tuple[str, torch.Tensor, bool]]:
    if isinstance(obj, torch.Tensor):
        yield path, obj, isinstance(obj, torch.nn.Parameter)
        return
    if id(obj) in visited or depth > _MAX_DEPTH:
        return
    visited.add(id(obj))
    if isinstance(obj, torch.nn.Module):
        yield from _walk_module(obj, path, visited, depth)
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _walk(value, f"{path}[{key!r}]", visited, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from _walk(value, f"{path}[{index}]", visited, depth + 1)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type) and _is_wrapper(obj):
        for key, value in vars(obj).items():
            yield from _walk(value, f"{path}.{key}", visited, depth + 1)


def _walk_module(module: torch.nn.Module, path: str, visited: set[int],
                 depth: int) -> Iterator[tuple[str, torch.Tensor, bool]]:
    for sub_name, sub in module.named_modules(remove_duplicate=True):
        visited.add(id(sub))
        prefix = f"{path}.{sub_name}" if sub_name else path
        for tensor_name, tensor in sub.named_parameters(recurse=False):
            yield f"{prefix}.{tensor_name} (parameter)", tensor, True
        for tensor_name, tensor in sub.named_buffers(recurse=False):
            if tensor is not None:
                yield f"{prefix}.{tensor_name} (buffer)", tensor, False
        if isinstance(sub, torch.jit.ScriptModule):
            continue  # TorchScript attributes are its parameters and buffers (listed above)
        for key, value in vars(sub).items():
            if key in ("_parameters", "_buffers", "_modules"):
                continue
            if isinstance(value, torch.Tensor):
                yield f"{prefix}.{key} (tensor attribute)", value, isinstance(value, torch.nn.Parameter)
            elif isinstance(value, (list, tuple, Mapping)) or (_is_wrapper(value) and id(value) not in visited):
                yield from _walk(value, f"{prefix}.{key}", visited, depth + 1)


_LEAF_PACKAGES = frozenset({"builtins", "torch", "numpy", "logging", "threading", "collections", "pathlib", "enum",
                            "typing", "functools", "re", "datetime", "decimal", "fractions", "uuid"})


def _is_wrapper(obj: Any) -> bool:
    """Objects worth walking into: modules, and instances of third-party or project classes (pyannote, gigaam,
    resemblyzer wrappers); not values from the standard library, numpy or torch internals."""
    if isinstance(obj, torch.nn.Module):
        return True
    package = (type(obj).__module__ or "").split(".")[0]
    return package not in _LEAF_PACKAGES and hasattr(obj, "__dict__")
