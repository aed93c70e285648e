"""deploy/kubernetes: each overlay renders with kubectl kustomize, passes kubernetes-validate, and agrees with the
server it runs: probes and ports answer on a running app configured as the pod is, the grace period covers the
drain, and the autoscaler's metric is one the app's /metrics really exports."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from server.app import RechkaServer
from server.config import ServerConfig, build_parser, config_from_args, env_name
from tests.deploy.conftest import KUBERNETES, container, one, pod_environment, render
from tests.server.conftest import http_get, run
from tests.server.fake_models import FAKE_PLACEMENT, fake_models

K8S_VERSION = kubernetes_validate.utils.latest_version()  # the newest Kubernetes whose schemas it bundles
# Custom resources: kubernetes-validate has no schema for them, so each is checked structurally by its own test.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
EXPECTED_KINDS = {"ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                  "ServiceMonitor"}
TOKEN = "pod-token"
SECRETS = {"rechka-tokens": {"tokens": TOKEN}}  # what `kubectl create secret generic rechka-tokens` would hold


def pod_config(docs: list[dict[str, Any]]) -> ServerConfig:
    """The ServerConfig the pod's server builds from its environment (the server's own parser and defaults)."""
    return config_from_args([], environ=pod_environment(docs, SECRETS))


def quantity(value: Any) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def named_port(spec: dict[str, Any], port: Any) -> int:
    if isinstance(port, int):
        return port
    ports = {p["name"]: p["containerPort"] for p in spec.get("ports", [])}
    assert port in ports, f"probe port {port!r} is not a container port ({sorted(ports)})"
    return int(ports[port])


async def running(config: ServerConfig, check: Any) -> Any:
    """``check(server)`` against a started app with the pod's config (loopback, a free port, fake models)."""
    server = RechkaServer(dataclasses.replace(config, host="127.0.0.1", port=0, static_dir=None), fake_models(),
                          FAKE_PLACEMENT)
    await server.start()
    try:
        return await check(server)
    finally:
        await server.close()


async def open_sessions(server: RechkaServer, count: int) -> list[Any]:
    sockets = []
    for _ in range(count):
        ws = await connect(server.url, additional_headers={"Authorization": f"Bearer {TOKEN}"})
        await ws.send(json.dumps({"type": "start", "diarization": False}))
        assert json.loads(await ws.recv())["type"] == "ready"
        sockets.append(ws)
    return sockets


# ----------------------------------------------------------------------------------------------- validity
def test_overlay_renders_and_validates(kubectl: str, overlay: str) -> None:
    docs = render(kubectl, overlay)
    assert {d["kind"] for d in docs} == EXPECTED_KINDS
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_rejects_a_broken_manifest(kubectl: str) -> None:
    deployment = copy.deepcopy(one(render(kubectl, "cpu"), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eight thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    hpa = copy.deepcopy(one(render(kubectl, "cpu"), "HorizontalPodAutoscaler"))
    hpa["spec"]["metrics"][0]["pods"]["target"]["averageValues"] = "1"  # a typo that strict mode catches
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)


def test_servicemonitor_scrapes_the_services_metrics_port(kubectl: str, overlay: str) -> None:
    docs = render(kubectl, overlay)
    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    endpoints = monitor["spec"]["endpoints"]
    assert endpoints and all(e["port"] in port_names for e in endpoints)
    paths = {e.get("path", "/metrics") for e in endpoints}

    async def check(server: RechkaServer) -> dict[str, int]:
        return {path: (await http_get(server.port, path)).status for path in paths}

    assert run(running(pod_config(docs), check)) == {path: 200 for path in paths}


def test_service_and_disruption_budget_select_the_pods(kubectl: str, overlay: str) -> None:
    docs = render(kubectl, overlay)
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service, pdb, hpa = one(docs, "Service"), one(docs, "PodDisruptionBudget"), one(docs, "HorizontalPodAutoscaler")
    assert service["spec"]["selector"] and service["spec"]["selector"].items() <= pod_labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    container_ports = {p["name"] for p in container(docs)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    # one pod at a time may be disrupted, and the autoscaler never leaves fewer than two
    assert pdb["spec"]["maxUnavailable"] == 1 and hpa["spec"]["minReplicas"] >= 2


# ----------------------------------------------------------------------------------------------- server
def test_probe_paths_and_ports_answer_on_the_server(kubectl: str, overlay: str) -> None:
    docs = render(kubectl, overlay)
    spec, config = container(docs), pod_config(docs)
    probes = {kind: spec[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    for probe in probes.values():
        assert named_port(spec, probe["port"]) == config.port, "the probe's port is not the one the server listens on"
    assert probes["readinessProbe"]["path"] == "/ready" and probes["livenessProbe"]["path"] == "/health"
    assert config.tokens == {TOKEN}, "the pod's server would not read its tokens"

    async def check(server: RechkaServer) -> dict[str, Any]:
        # The kubelet sends no token: the probes must answer without one, while streams need it.
        free = {kind: (await http_get(server.port, p["path"])).status for kind, p in probes.items()}
        try:
            async with connect(server.url):
                unauthenticated = 101
        except InvalidStatus as exc:
            unauthenticated = exc.response.status_code
        sockets = await open_sessions(server, config.max_sessions)
        full = (await http_get(server.port, probes["readinessProbe"]["path"])).status
        alive = (await http_get(server.port, probes["livenessProbe"]["path"])).status
        for ws in sockets:
            await ws.close()
        return {"free": free, "unauthenticated": unauthenticated, "full": full, "alive": alive}

    got = run(running(config, check))
    assert got["free"] == {"startupProbe": 200, "readinessProbe": 200, "livenessProbe": 200}
    assert got["unauthenticated"] == 401
    # At --max-sessions the pod leaves the Service's endpoints (new streams go elsewhere) but is not restarted.
    assert got["full"] == 503 and got["alive"] == 200


def test_grace_period_covers_prestop_drain_and_flush(kubectl: str, overlay: str) -> None:
    docs = render(kubectl, overlay)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    pre_stop = container(docs)["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        pause = float(pre_stop["sleep"]["seconds"])
    else:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep", f"preStop {command} is not a pause"
        pause = float(command[1])
    config = pod_config(docs)
    assert pause > 0
    assert pod["terminationGracePeriodSeconds"] >= pause + config.shutdown_grace + config.flush_timeout


def test_hpa_scales_on_a_metric_the_server_exports(kubectl: str, overlay: str) -> None:
    docs = render(kubectl, overlay)
    hpa, config = one(docs, "HorizontalPodAutoscaler"), pod_config(docs)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": one(docs, "Deployment")["metadata"]["name"]}
    [metric] = hpa["spec"]["metrics"]  # sessions only: never CPU
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    name = metric["pods"]["metric"]["name"]
    target = quantity(metric["pods"]["target"]["averageValue"])
    assert 0 < target < config.max_sessions, "pods must be added before they are full"
    behavior = hpa["spec"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] > behavior["scaleUp"]["stabilizationWindowSeconds"]

    async def check(server: RechkaServer) -> dict[str, float]:
        sockets = await open_sessions(server, 2)
        body = (await http_get(server.port, "/metrics")).body.decode()
        for ws in sockets:
            await ws.close()
        return {s.name: s.value for family in text_string_to_metric_families(body) for s in family.samples}

    samples = run(running(config, check))
    assert name in samples, f"the HPA scales on {name!r}, which /metrics does not export"
    assert samples[name] == 2, f"{name} does not count the two open sessions"


def test_prometheus_adapter_rule_serves_the_hpa_metric(kubectl: str) -> None:
    values = yaml.safe_load((KUBERNETES / "prometheus-adapter" / "values.yaml").read_text(encoding="utf-8"))
    names = {one(render(kubectl, o), "HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"]
             for o in ("cpu", "gpu")}
    rules = {rule["name"]["as"]: rule for rule in values["rules"]["custom"]}
    for name in names:
        rule = rules[name]
        series = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{", rule["seriesQuery"])
        assert series and re.fullmatch(rule["name"]["matches"], series.group(1))
        # the series must be exported under that name (checked against /metrics above) and map to pods
        assert series.group(1) == name
        assert {k: v["resource"] for k, v in rule["resources"]["overrides"].items()} == {"namespace": "namespace",
                                                                                        "pod": "pod"}
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]


# Read by the entrypoint or the model cache, not flags of the server (scripts/serve.sh, server/models/cache.py).
NOT_FLAGS = {"RECHKA_SKIP_BOOTSTRAP", "RECHKA_ALLOCATOR", "RECHKA_CACHE", "RECHKA_TOKENS"}


def test_every_rechka_variable_is_one_the_server_reads(kubectl: str, overlay: str) -> None:
    # config_from_args ignores an unknown RECHKA_* name, so a misspelt flag would silently keep its default
    flags = {env_name(action.dest) for action in build_parser()._actions if action.dest != "help"}
    variables = {k for k in pod_environment(render(kubectl, overlay), SECRETS) if k.startswith("RECHKA_")}
    assert len(variables - NOT_FLAGS) >= 3
    assert variables - NOT_FLAGS <= flags, f"not server flags: {sorted(variables - NOT_FLAGS - flags)}"


def test_tokens_come_from_a_secret(kubectl: str, overlay: str) -> None:
    docs = render(kubectl, overlay)
    env = {item["name"]: item for item in container(docs).get("env", [])}
    assert env["RECHKA_TOKENS"]["valueFrom"]["secretKeyRef"] == {"name": "rechka-tokens", "key": "tokens"}
    for configmap in (d for d in docs if d["kind"] == "ConfigMap"):
        assert not {"RECHKA_TOKENS", "RECHKA_TOKENS_FILE"} & set(configmap.get("data", {})), "tokens in a ConfigMap"


def test_variants_pick_their_device(kubectl: str, overlay: str) -> None:
    docs = render(kubectl, overlay)
    config, pod = pod_config(docs), one(docs, "Deployment")["spec"]["template"]["spec"]
    resources = container(docs)["resources"]
    if overlay == "gpu":
        assert config.device == "cuda"
        assert resources["limits"]["nvidia.com/gpu"] == 1  # one server process per GPU
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    else:
        assert config.device == "cpu"
        assert "nvidia.com/gpu" not in json.dumps(pod)
        assert quantity(resources["requests"]["cpu"]) >= config.cpu_inference_threads


def test_ingress_example_is_valid_and_routes_to_the_service(kubectl: str) -> None:
    ingress = yaml.safe_load((KUBERNETES / "examples" / "ingress-nginx.yaml").read_text(encoding="utf-8"))
    kubernetes_validate.validate(ingress, K8S_VERSION, strict=True)
    docs = render(kubectl, "cpu")
    service, config = one(docs, "Service"), pod_config(docs)
    backends = [path["backend"]["service"] for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    assert backends and all(b["name"] == service["metadata"]["name"] for b in backends)
    assert all(b["port"]["name"] in {p["name"] for p in service["spec"]["ports"]} for b in backends)
    annotations = ingress["metadata"]["annotations"]
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        # above nginx's 60 s default, far above the server's 20 s pings, and the server's idle limit comes first
        assert int(annotations[f"nginx.ingress.kubernetes.io/{key}"]) > 60 > config.idle_timeout


def test_deploy_doc_names_only_exported_metrics(kubectl: str) -> None:
    text = (KUBERNETES.parents[1] / "docs" / "deploy.md").read_text(encoding="utf-8")
    named = set(re.findall(r"\brechka_[a-z_]+\b", text))

    async def check(server: RechkaServer) -> set[str]:
        body = (await http_get(server.port, "/metrics")).body.decode()
        exported = set()
        for family in text_string_to_metric_families(body):
            exported.add(family.name)
            exported.update({family.name + "_total", family.name + "_bucket", family.name + "_count"})
        return exported

    exported = run(running(pod_config(render(kubectl, "cpu")), check))
    assert len(named) >= 8 and named <= exported, f"docs/deploy.md names metrics /metrics lacks: {named - exported}"
