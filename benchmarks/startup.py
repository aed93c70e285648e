"""Seconds from starting the server to its first ``GET /health`` 200, side by side for variants, in one run.

A user starts ``python -m server ARGS`` (``--launcher module``, the default) or ``scripts/serve.sh ARGS``
(``--launcher serve``: bootstrap, ``uv run`` and jemalloc included). This script does the same on a free port,
polls ``/health`` every ``--poll`` s, then stops the server with SIGTERM. Each variant is started ``--repeats`` times,
the variants alternated (the order rotates every repeat) so that a noisy machine hits them alike.

A variant is ``NAME`` (this tree, this environment), ``NAME:VAR=VALUE[,VAR=VALUE...]`` (extra environment) or
``NAME@PATH`` (another git tree: its own ``.venv/bin/python`` when it has one), e.g.::

    python -m benchmarks.startup --repeats 5 --variant main@/work/main --variant here
    python -m benchmarks.startup --variant plain --variant nojit:PYTORCH_JIT=0 -- --device cpu

Per start the JSON has ``seconds_to_health`` and ``phases`` read from the server's own log timestamps
(``start → first log line`` = interpreter and imports, ``loading`` = model loading and audit, the per-model seconds
and warm-up the registry logs, ``serving`` = warm-up to listening, ``health`` = listening to the first 200). One more
start per variant runs with ``PYTHONPROFILEIMPORTTIME=1`` (not timed with the others: it slows imports) for the
import breakdown: cumulative seconds of the top-level packages and of the slowest single imports.
``--without-graphs`` starts each server in a copy of the model cache without its ONNX graphs: a first start.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, Sequence

from benchmarks.common import OUT_DIR, REPO_ROOT, command_line, write_result
from benchmarks.server_process import free_port, machine_info

TINY_ASR = "tests/assets/tiny_gigaam_ctc.ckpt"
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: (.*)$")
_LOADED = re.compile(r"models loaded in ([\d.]+) s \((.*)\); warm-up ([\d.]+) s")
_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


@dataclass(frozen=True)
class Variant:
    """One way of starting the server: a name, extra environment, the tree it runs in."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    tree: Path = REPO_ROOT

    @classmethod
    def parse(cls, text: str) -> "Variant":
        """``NAME``, ``NAME:VAR=VALUE,...`` or ``NAME@PATH``."""
        if "@" in text:
            name, _, tree = text.partition("@")
            path = Path(tree).expanduser().resolve()
            if not (path / "server" / "__main__.py").is_file():
                raise ValueError(f"variant {text!r}: {path} is not a rechka tree (no server/__main__.py)")
            return cls(name, {}, path)
        name, _, assignments = text.partition(":")
        env = {}
        for item in filter(None, assignments.split(",")):
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise ValueError(f"variant {text!r}: {item!r} is not VAR=VALUE")
            env[key] = value
        return cls(name or "default", env)

    @property
    def python(self) -> str:
        own = self.tree / ".venv" / "bin" / "python"
        return str(own) if own.is_file() else sys.executable


def command(variant: Variant, launcher: str, port: int, server_args: Sequence[str]) -> list[str]:
    """The command line a user would type, on 127.0.0.1:``port``."""
    args = ["--host", "127.0.0.1", "--port", str(port), *server_args]
    if launcher == "serve":
        return ["bash", str(variant.tree / "scripts" / "serve.sh"), *args]
    return [variant.python, "-m", "server", *args]


def start_once(variant: Variant, launcher: str, server_args: Sequence[str], *, poll: float, timeout: float,
               importtime: bool = False, without_graphs: bool = False) -> dict[str, Any]:
    """Start the server once, poll ``/health`` until 200, stop it; the timings and the log it wrote.
    ``without_graphs``: in a copy of the model cache without its ONNX graphs (see :func:`cache_without_graphs`)."""
    port = free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), **variant.env}
    if importtime:
        env["PYTHONPROFILEIMPORTTIME"] = "1"
    with tempfile.TemporaryDirectory(prefix="rechka-startup-") as scratch, tempfile.TemporaryFile() as log:
        if without_graphs:
            env["RECHKA_CACHE"] = str(cache_without_graphs(Path(env.get("RECHKA_CACHE") or
                                                                Path.home() / ".cache" / "rechka"), Path(scratch)))
        started_wall = time.time()
        started = time.monotonic()
        proc = subprocess.Popen(command(variant, launcher, port, server_args), cwd=variant.tree, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        healthy: Optional[float] = None
        try:
            while time.monotonic() - started < timeout and proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                        if response.status == 200:
                            healthy = time.monotonic() - started
                            break
                except OSError:
                    pass
                time.sleep(poll)
        finally:
            _stop(proc)
        log.seek(0)
        text = log.read().decode("utf-8", "replace")
    result: dict[str, Any] = {"seconds_to_health": round(healthy, 3) if healthy is not None else None,
                              "exit_code": proc.returncode if healthy is None else None}
    if healthy is None:
        result["log_tail"] = text.splitlines()[-20:]
        return result
    result["phases"] = phases(text, started_wall, healthy)
    if importtime:
        result["imports"] = import_breakdown(text)
    return result


def cache_without_graphs(cache: Path, scratch: Path) -> Path:
    """A copy of the rechka model cache under ``scratch`` (hard links where possible) without ``onnx/``: a machine
    whose weights are fetched but whose ONNX graphs were never built, so the server exports them while starting."""
    copy = scratch / "cache"
    shutil.copytree(cache, copy, ignore=lambda folder, names: ["onnx"] if Path(folder) == cache else [],
                    copy_function=_link_or_copy)
    return copy


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _stop(proc: "subprocess.Popen[bytes]") -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def phases(log: str, started_wall: float, healthy: float) -> dict[str, float]:
    """Seconds per start-up phase from the server log's timestamps (see the module docstring)."""
    stamps: list[tuple[float, str]] = []
    for line in log.splitlines():
        match = _LOG_LINE.match(line)
        if match:
            stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            stamps.append((stamp - started_wall, match.group(2)))
    out: dict[str, float] = {}
    if not stamps:
        return out
    first = stamps[0][0]
    out["start_to_first_log"] = round(first, 3)
    audited = next((t for t, m in stamps if m.startswith("model vad ")), None)
    listening = next((t for t, m in stamps if m.startswith("listening on")), None)
    loaded = next((m for _, m in stamps if _LOADED.match(m)), None)
    if loaded:
        match = _LOADED.match(loaded)
        assert match is not None
        for part in match.group(2).split(", "):
            name, _, seconds = part.partition(" ")
            out[f"load_{name}"] = float(seconds)
        out["warmup"] = float(match.group(3))
    if audited is not None:
        out["loading"] = round(audited - first, 3)
    if listening is not None:
        out["serving"] = round(listening - (audited if audited is not None else first), 3)
        out["health"] = round(healthy - listening, 3)
    return out


def import_breakdown(log: str, top: int = 12) -> dict[str, Any]:
    """From ``-X importtime`` lines: per top-level package the cumulative seconds of its outermost imports (what
    importing it cost, the dependencies it pulled in first included, so packages nest: ``pyannote`` includes the
    ``lightning`` it imports), and the slowest single imports at any depth."""
    entries = []
    for line in log.splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            entries.append((int(match.group(2)) / 1e6, len(match.group(3)) // 2, match.group(4)))
    packages: dict[str, float] = {}
    ancestors: list[tuple[int, str]] = []  # (depth, root package) of the enclosing imports
    for cumulative, depth, name in reversed(entries):  # reversed -X importtime order: each parent before its children
        while ancestors and ancestors[-1][0] >= depth:
            ancestors.pop()
        root = name.split(".")[0]
        if all(r != root for _, r in ancestors):
            packages[root] = packages.get(root, 0.0) + cumulative
        ancestors.append((depth, root))
    total = sum(c for c, d, _ in entries if d == 0)
    ranked = sorted(packages.items(), key=lambda kv: -kv[1])[:top]
    heavy = sorted((e for e in entries if e[0] >= 0.3), key=lambda e: -e[0])[:top * 2]
    return {"total_s": round(total, 3),
            "top_packages": [{"package": p, "seconds": round(s, 3)} for p, s in ranked],
            "slowest": [{"module": n, "depth": d, "seconds": round(c, 3)} for c, d, n in heavy]}


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median/min/max seconds to health, and the median of each phase."""
    times = [r["seconds_to_health"] for r in runs if r["seconds_to_health"] is not None]
    out: dict[str, Any] = {"starts": len(runs), "healthy": len(times)}
    if times:
        out.update(median=round(statistics.median(times), 3), min=min(times), max=max(times))
    keys = sorted({k for r in runs for k in r.get("phases", {})})
    out["phases_median"] = {k: round(statistics.median([r["phases"][k] for r in runs if k in r.get("phases", {})]),
                                     3) for k in keys}
    return out


def run(variants: Sequence[Variant], launcher: str, server_args: Sequence[str], repeats: int, poll: float,
        timeout: float, importtime: bool, without_graphs: bool = False) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    for repeat in range(repeats):
        shift = repeat % len(variants)
        for variant in [*variants[shift:], *variants[:shift]]:
            result = start_once(variant, launcher, server_args, poll=poll, timeout=timeout,
                                without_graphs=without_graphs)
            runs[variant.name].append(result)
            print(f"startup: {variant.name} #{repeat + 1}: {result['seconds_to_health']} s", file=sys.stderr)
    out: dict[str, Any] = {"machine": machine_info(), "launcher": launcher, "server_args": list(server_args),
                           "repeats": repeats, "without_graphs": without_graphs, "variants": {}}
    baseline: Optional[float] = None
    for variant in variants:
        summary = summarize(runs[variant.name])
        if baseline is None:
            baseline = summary.get("median")
        if baseline and summary.get("median"):
            summary["ratio_to_first"] = round(summary["median"] / baseline, 3)
        entry: dict[str, Any] = {"env": variant.env, "tree": str(variant.tree), "summary": summary,
                                 "runs": runs[variant.name]}
        if importtime:
            profiled = start_once(variant, launcher, server_args, poll=poll, timeout=timeout, importtime=True,
                                  without_graphs=without_graphs)
            entry["importtime_run"] = profiled
        out["variants"][variant.name] = entry
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME, NAME:VAR=VALUE[,...] or NAME@PATH (repeat to compare; default: one, 'here')")
    parser.add_argument("--repeats", type=int, default=3, help="starts per variant (alternated)")
    parser.add_argument("--launcher", choices=("module", "serve"), default="module",
                        help="module: python -m server ARGS; serve: scripts/serve.sh ARGS (bootstrap included)")
    parser.add_argument("--asr-model", default=TINY_ASR, help="--asr-model of the server (default: the tiny test "
                        "checkpoint, the one that needs no download)")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between /health polls")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up a start after this many seconds")
    parser.add_argument("--no-importtime", action="store_true", help="skip the import-time breakdown starts")
    parser.add_argument("--without-graphs", action="store_true", help="each start in a copy of the model cache "
                        "without its ONNX graphs (a first start: the server exports the encoder)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where startup-<stamp>.json goes")
    parser.add_argument("server_args", nargs="*", help="more server arguments (after --)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.poll <= 0:
        parser.error("--repeats must be >= 1 and --poll > 0")
    try:
        variants = [Variant.parse(v) for v in args.variant] or [Variant("here")]
    except ValueError as exc:
        parser.error(str(exc))
    if len({v.name for v in variants}) != len(variants):
        parser.error("variant names must differ")
    server_args = ["--asr-model", args.asr_model, *args.server_args]
    result = run(variants, args.launcher, server_args, args.repeats, args.poll, args.timeout, not args.no_importtime,
                 args.without_graphs)
    result["command"] = command_line("startup")
    write_result("startup", result, args.out_dir)
    return 0 if all(v["summary"]["healthy"] == v["summary"]["starts"] for v in result["variants"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
