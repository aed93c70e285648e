"""The sans-I/O rule: ``streaming/`` imports numpy, soxr, scipy and the standard library's pure parts only, and never
``server/``, ``clients/``, asyncio, torch, sockets or threads (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

STREAMING = Path(__file__).resolve().parents[2] / "streaming"
FORBIDDEN = {"asyncio", "torch", "torchaudio", "websockets", "socket", "threading", "time", "server", "clients",
             "pyannote", "gigaam", "concurrent", "multiprocessing", "subprocess"}


def imported_roots(source: str) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_detector_sees_plain_nested_and_from_imports() -> None:
    source = "import numpy as np\nfrom torch import nn\ndef f():\n    import asyncio.tasks\n"
    assert imported_roots(source) == {"numpy", "torch", "asyncio"}


def test_streaming_modules_import_nothing_that_does_io_or_compute_on_devices() -> None:
    offenders = {}
    for path in sorted(STREAMING.rglob("*.py")):
        bad = imported_roots(path.read_text(encoding="utf-8")) & FORBIDDEN
        if bad:
            offenders[str(path.relative_to(STREAMING))] = sorted(bad)
    assert not offenders, f"streaming/ must stay sans-I/O: {offenders}"
    assert len(list(STREAMING.glob("*.py"))) >= 10  # the modules are really there
