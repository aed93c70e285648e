"""The server side of the benchmarks: start ``python -m server``, sample its CPU/RSS/GPU, read ``/metrics``.

:class:`ServerProcess` runs the server on a free local port; :class:`ResourceSampler` samples the process with
psutil (and the GPU with ``nvidia-smi`` when present) in a thread; the Prometheus helpers turn two ``/metrics``
scrapes into per-model deltas (batch sizes, queue depths); :func:`machine_info` names the machine and commit.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Optional, Sequence
from urllib.parse import urlparse

import numpy as np

from benchmarks.common import REPO_ROOT

MetricKey = tuple[str, tuple[tuple[str, str], ...]]


def parse_prometheus(text: str) -> dict[MetricKey, float]:
    """Prometheus text → ``{(sample name, sorted labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): float(s.value)
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(http_base: str, timeout: float = 5.0) -> dict[MetricKey, float]:
    """``GET /metrics`` parsed; empty when the server does not answer."""
    try:
        with urllib.request.urlopen(f"{http_base}/metrics", timeout=timeout) as response:
            return parse_prometheus(response.read().decode())
    except OSError:
        return {}


def final_traces(http_base: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """``GET /debug/finals``: the server's latest final-latency breakdowns; empty when it does not answer."""
    try:
        with urllib.request.urlopen(f"{http_base}/debug/finals", timeout=timeout) as response:
            return list(json.loads(response.read().decode()).get("finals", []))
    except (OSError, ValueError):
        return []


def _label_text(labels: tuple[tuple[str, str], ...]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels if k != "le") or "all"


def histogram_delta(before: dict[MetricKey, float], after: dict[MetricKey, float],
                    name: str) -> dict[str, dict[str, Optional[float]]]:
    """Observations of histogram ``name`` between two scrapes, per label set: count, sum and mean."""
    out: dict[str, dict[str, Optional[float]]] = {}
    for (sample, labels), count in after.items():
        if sample != f"{name}_count":
            continue
        n = count - before.get((sample, labels), 0.0)
        total = after.get((f"{name}_sum", labels), 0.0) - before.get((f"{name}_sum", labels), 0.0)
        out[_label_text(labels)] = {"count": n, "sum": round(total, 4), "mean": round(total / n, 3) if n else None}
    return out


def counter_delta(before: dict[MetricKey, float], after: dict[MetricKey, float], name: str) -> dict[str, float]:
    """Increase of every sample called ``name`` between two scrapes, by label set (counters end in ``_total``)."""
    return {_label_text(labels): round(value - before.get((sample, labels), 0.0), 4)
            for (sample, labels), value in after.items() if sample == name}


def histogram_quantile(before: dict[MetricKey, float], after: dict[MetricKey, float], name: str,
                       q: float) -> Optional[float]:
    """The ``q`` quantile (0-1) of histogram ``name``'s observations between two scrapes, all labels pooled,
    interpolated linearly inside its bucket (as Prometheus' ``histogram_quantile``); None without observations."""
    buckets: dict[float, float] = {}
    for (sample, labels), value in after.items():
        if sample == f"{name}_bucket":
            le = float(dict(labels)["le"])
            buckets[le] = buckets.get(le, 0.0) + value - before.get((sample, labels), 0.0)
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return lower_bound
            width = buckets[bound] - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / width if width else 1.0)
        lower_bound, lower_count = bound, buckets[bound]
    return lower_bound


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def jemalloc_library() -> Optional[Path]:
    """The jemalloc shared library ``scripts/serve.sh`` preloads, if this machine has it."""
    return next(iter(sorted(Path("/usr/lib").glob("*/libjemalloc.so.2"))), None)


class ServerProcess:
    """The server as users start it (``scripts/serve.sh``: ``python -m server`` on jemalloc; ``RECHKA_ALLOCATOR=glibc``
    in the environment keeps glibc malloc) on 127.0.0.1 at a free port, logging to ``log_path``; ready once
    ``/health`` answers 200. The script execs Python, so :attr:`pid` is the server's own process.

    Leaving the context sends SIGTERM (the server flushes and drains), then kills after ``stop_timeout``.
    """

    def __init__(self, server_args: Sequence[str], log_path: Path, host: str = "127.0.0.1",
                 port: Optional[int] = None, startup_timeout: float = 900.0, stop_timeout: float = 30.0) -> None:
        self.args, self.log_path, self.host = list(server_args), log_path, host
        self.port = port or free_port()
        self.startup_timeout, self.stop_timeout = startup_timeout, stop_timeout
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def http_base(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/stream"

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def __enter__(self) -> "ServerProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env["RECHKA_SKIP_BOOTSTRAP"] = "1"  # this interpreter's environment is the installed one
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        cmd = ["bash", str(REPO_ROOT / "scripts" / "serve.sh"), "--host", self.host, "--port", str(self.port),
               *self.args]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with code {self.proc.returncode}; log {self.log_path}:\n"
                                   + self.log_tail())
            try:
                with urllib.request.urlopen(f"{self.http_base}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.__exit__(None, None, None)
        raise RuntimeError(f"server not healthy after {self.startup_timeout:.0f} s; log {self.log_path}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @property
    def allocator(self) -> str:
        """``jemalloc`` when the running server has libjemalloc mapped (read from /proc, not assumed), else ``glibc``."""
        try:
            maps = Path(f"/proc/{self.pid}/maps").read_text()
        except OSError:
            return "unknown"
        return "jemalloc" if "libjemalloc" in maps else "glibc"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def pid_listening_on(port: int) -> Optional[int]:
    """The pid of the local process listening on TCP ``port`` (for ``--url`` runs); None if not visible."""
    import psutil

    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return int(conn.pid)
    except (psutil.AccessDenied, PermissionError):
        pass
    return None


class ResourceSampler:
    """Every ``interval`` s: CPU (% of one core) and RSS of ``pid`` and its children, the whole machine's CPU (% of
    all cores: shows contention from other processes) and, when ``nvidia-smi`` exists, GPU utilisation and memory.
    Runs in a daemon thread inside a ``with`` block."""

    def __init__(self, pid: Optional[int], interval: float = 1.0) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[dict[str, Optional[float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)
        self._nvidia_smi = shutil.which("nvidia-smi")

    def __enter__(self) -> "ResourceSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        import psutil

        proc = psutil.Process(self.pid) if self.pid else None
        psutil.cpu_percent(None)  # the first call only starts the machine-wide counter
        previous: Optional[tuple[float, float]] = None
        while not self._stop.is_set():
            now, cpu, rss = time.monotonic(), None, None
            if proc is not None:
                try:
                    procs = [proc, *proc.children(recursive=True)]
                    busy = sum(sum(p.cpu_times()[:2]) for p in procs)
                    rss = sum(p.memory_info().rss for p in procs) / 2**20
                    if previous is not None and now > previous[0]:
                        cpu = 100.0 * (busy - previous[1]) / (now - previous[0])
                    previous = (now, busy)
                except psutil.Error:
                    proc = None
            gpu_util, gpu_mem = self._gpu()
            self.samples.append({"t": now, "cpu_percent": cpu, "rss_mb": rss, "gpu_util": gpu_util,
                                 "gpu_mem_mb": gpu_mem, "machine_cpu_percent": psutil.cpu_percent(None)})
            self._stop.wait(self.interval)

    def _gpu(self) -> tuple[Optional[float], Optional[float]]:
        if not self._nvidia_smi:
            return None, None
        try:
            out = subprocess.run([self._nvidia_smi, "--query-gpu=utilization.gpu,memory.used",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
            rows = [[float(v) for v in line.split(",")] for line in out.stdout.strip().splitlines() if line]
            return (float(np.mean([r[0] for r in rows])), float(sum(r[1] for r in rows))) if rows else (None, None)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return None, None

    def window(self, t0: float, t1: float) -> dict[str, Optional[float]]:
        """Mean and max of each quantity over samples taken in ``[t0, t1]``."""
        inside = [s for s in self.samples if t0 <= (s["t"] or 0.0) <= t1]
        out: dict[str, Optional[float]] = {}
        for key in ("cpu_percent", "rss_mb", "gpu_util", "gpu_mem_mb", "machine_cpu_percent"):
            vals = [s[key] for s in inside if s[key] is not None]
            out[f"{key}_mean"] = round(float(np.mean(vals)), 1) if vals else None
            out[f"{key}_max"] = round(float(np.max(vals)), 1) if vals else None
        return out


def machine_info() -> dict[str, Any]:
    """CPU model and cores (lscpu), GPU names (nvidia-smi) and the git commit, for the output JSON."""
    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout.splitlines():
            if line.startswith("Model name:"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True)
        info["gpus"] = [g.strip() for g in out.stdout.splitlines() if g.strip()]
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                        text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        info["commit"] = None
    try:
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info




def connect_or_start(stack: ExitStack, url: Optional[str], server_pid: Optional[int], server_args: Sequence[str],
                     log_path: Path) -> tuple[str, Optional[int], str, dict[str, Any]]:
    """``(ws url, server pid, http base, description)`` of the server ``url`` names, or of one started with
    ``server_args`` (logging to ``log_path``) and stopped when ``stack`` closes."""
    if url:
        parsed = urlparse(url)
        pid = server_pid or pid_listening_on(parsed.port or 80)
        http_base = f"{'https' if parsed.scheme == 'wss' else 'http'}://{parsed.netloc}"
        return url, pid, http_base, {"url": url}
    server = stack.enter_context(ServerProcess(list(server_args), log_path))
    return server.ws_url, server.pid, server.http_base, {"args": list(server_args), "log": str(server.log_path),
                                                        "allocator": server.allocator}
