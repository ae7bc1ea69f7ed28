"""Consistency of the deployment files with each other and with the server's settings.

Schema validators see each file alone; these checks catch what they cannot:

- every SEQSERVE_* variable that the Dockerfile, compose.yaml or the Kubernetes
  manifests set is one the server reads, with a value its parser accepts (a
  misspelt variable is otherwise ignored without a word);
- the shutdown budget: Kubernetes' terminationGracePeriodSeconds exceeds the
  preStop pause plus SEQSERVE_GRACE_PERIOD, and compose's stop_grace_period
  exceeds SEQSERVE_GRACE_PERIOD, so draining ends before SIGKILL;
- probes, ports, the Service, the HPA and the PDB point at the server's port
  and the Deployment's pods;
- README.md's configuration table lists every flag and variable with its default.

Usage: check_config.py [--table]   (--table prints that table from seqserve.settings)
Run with the repository root on PYTHONPATH and PyYAML installed (deploy/ci/lint.sh does).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import Field, fields
from pathlib import Path
from typing import Any

import yaml

from seqserve.settings import ServerSettings, SettingsError, env_name

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def settings_fields() -> dict[str, Field[Any]]:
    """SEQSERVE_* variable -> its ServerSettings field."""
    return {env_name(f.metadata["flag"]): f for f in fields(ServerSettings)}


def default_text(f: Field[Any]) -> str:
    if f.name == "repository":
        return "the bundled models; `/models` in the image"
    value = f.default
    if value == "":
        return "empty (off)"
    if isinstance(value, bool):
        return "`on`" if value else "`off`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def table() -> str:
    rows = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for env, f in settings_fields().items():
        meaning = str(f.metadata["help"]).replace("<", "&lt;").replace(">", "&gt;")  # not HTML
        rows.append(f"| `{f.metadata['flag']}` | `{env}` | {default_text(f)} | {meaning} |")
    return "\n".join(rows)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def seconds(text: str) -> float:
    """A compose duration ("15s", "1m30s", "500ms") in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"expected a duration like 15s, got {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def dockerfile_env() -> dict[str, str]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(SEQSERVE_\w+)=(\S+)", line))
    return env


class Checks:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.fields = settings_fields()

    def expect(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)

    def variables(self, where: str, env: dict[str, str]) -> None:
        for name, value in env.items():
            if not name.startswith("SEQSERVE_"):
                continue
            f = self.fields.get(name)
            if f is None:
                self.problems.append(
                    f"{where}: {name} is not a server setting; expected one of "
                    + ", ".join(self.fields)
                )
            elif f.name != "repository" and "${" not in str(value):
                parse: Callable[[str], Any] = f.metadata["parse"]
                try:
                    parse(str(value))
                except SettingsError as exc:
                    self.problems.append(f"{where}: {name}={value!r}: {exc}")

    def grace(self, env: dict[str, str]) -> float:
        return float(env.get("SEQSERVE_GRACE_PERIOD", ServerSettings().grace_period_s))


def documents(folder: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(folder.glob("*.yaml")):
        yield path, load(path)


def check(c: Checks) -> None:
    port = int(str(ServerSettings().address).rpartition(":")[2])

    image_env = dockerfile_env()
    c.variables("Dockerfile", image_env)
    c.expect(
        f"EXPOSE {port}" in (DEPLOY / "Dockerfile").read_text(),
        f"Dockerfile: expected EXPOSE {port}",
    )

    compose = load(DEPLOY / "compose.yaml")["services"]["seqserve"]
    compose_env = {str(k): str(v) for k, v in compose.get("environment", {}).items()}
    c.variables("compose.yaml", compose_env)
    stop = seconds(compose.get("stop_grace_period", "10s"))
    grace = c.grace(compose_env)
    c.expect(
        stop > grace,
        f"compose.yaml: stop_grace_period {stop:g}s must exceed SEQSERVE_GRACE_PERIOD {grace:g}s",
    )
    c.expect(
        any(str(p).endswith(f":{port}") for p in compose.get("ports", [])),
        f"compose.yaml: expected a published port for container port {port}",
    )

    kinds = {
        (doc["kind"], doc["metadata"]["name"]): (path.name, doc)
        for path, doc in documents(DEPLOY / "k8s")
    }
    _, configmap = kinds[("ConfigMap", "seqserve")]
    _, deployment = kinds[("Deployment", "seqserve")]
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]
    env = {str(k): str(v) for k, v in configmap.get("data", {}).items()}
    env.update({e["name"]: str(e.get("value", "")) for e in container.get("env", [])})
    c.variables("k8s", env)
    c.expect(
        {"configMapRef": {"name": configmap["metadata"]["name"]}} in container.get("envFrom", []),
        "deployment.yaml: expected envFrom the ConfigMap",
    )
    _, secret = kinds[("Secret", "seqserve-store")]
    c.variables("store-secret.yaml", {str(k): str(v) for k, v in secret["stringData"].items()})
    c.expect(
        {"secretRef": {"name": "seqserve-store", "optional": True}} in container["envFrom"],
        "deployment.yaml: expected envFrom the store Secret (optional)",
    )
    shared(c, kinds, pod["metadata"]["labels"], port)

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    c.expect(ports.get("grpc") == port, f"deployment.yaml: expected port grpc: {port}")
    # Probes go to the plaintext health port when there is one (the gRPC port may speak TLS).
    health = env.get("SEQSERVE_HEALTH_ADDRESS", "")
    probe_port = int(health.rpartition(":")[2]) if health else port
    if health:
        c.expect(
            ports.get("health") == probe_port,
            f"deployment.yaml: expected port health: {probe_port} (SEQSERVE_HEALTH_ADDRESS)",
        )
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = container.get(probe, {}).get("grpc", {})
        c.expect(
            grpc_probe.get("port") == probe_port,
            f"deployment.yaml: {probe} is not gRPC on {probe_port}",
        )
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    secrets = {v["name"]: v["secret"] for v in pod["spec"].get("volumes", []) if "secret" in v}
    c.expect(
        secrets.get("credentials", {}).get("secretName") == "seqserve-credentials"
        and mounts.get("credentials") == CREDENTIALS,
        f"deployment.yaml: expected the Secret seqserve-credentials mounted at {CREDENTIALS}",
    )
    text = (DEPLOY / "k8s" / "configmap.yaml").read_text()
    for line in text.splitlines():  # the files the commented settings name are in the mount
        if "/etc/seqserve/" in line:
            c.expect(
                CREDENTIALS + "/" in line, f"configmap.yaml: {line.strip()} is not in the mount"
            )

    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    pause = float(pre_stop[1]) if pre_stop[0] == "sleep" else 0.0
    budget = pod["spec"]["terminationGracePeriodSeconds"]
    grace = c.grace(env)
    c.expect(
        budget > pause + grace,
        f"deployment.yaml: terminationGracePeriodSeconds {budget} must exceed preStop "
        f"{pause:g}s + SEQSERVE_GRACE_PERIOD {grace:g}s",
    )

    _, service = kinds[("Service", "seqserve")]
    c.expect(
        service["spec"]["selector"].items() <= pod_labels.items(),
        "service.yaml: selector does not match the pods",
    )
    by_name = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
    c.expect(
        by_name.get("grpc") in ("grpc", port), f"service.yaml: expected targetPort grpc or {port}"
    )
    metrics = env.get("SEQSERVE_METRICS_ADDRESS", "")
    if metrics:  # the port the server serves /metrics on is the one declared everywhere
        metrics_port = int(metrics.rpartition(":")[2])
        annotations = pod["metadata"].get("annotations", {})
        c.expect(
            ports.get("metrics") == metrics_port
            and annotations.get("prometheus.io/port") == str(metrics_port)
            and by_name.get("metrics") == "metrics",
            f"deployment.yaml/service.yaml: expected the metrics port {metrics_port} "
            "(SEQSERVE_METRICS_ADDRESS) as containerPort, scrape annotation and Service port",
        )
    _, hpa = kinds[("HorizontalPodAutoscaler", "seqserve")]
    target = hpa["spec"]["scaleTargetRef"]
    c.expect(
        (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"]),
        "hpa.yaml: scaleTargetRef is not the Deployment",
    )
    _, pdb = kinds[("PodDisruptionBudget", "seqserve")]
    c.expect(
        pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(),
        "pdb.yaml: selector does not match the pods",
    )

    readme = (ROOT / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("|")]
    for env_var, f in c.fields.items():
        flag = f"`{f.metadata['flag']}`"
        want = [flag, f"`{env_var}`"] + ([] if f.name == "repository" else [default_text(f)])
        c.expect(
            any(all(w in row for w in want) for row in rows),
            f"README.md: expected a table row with {', '.join(want)}",
        )


CREDENTIALS = "/etc/seqserve/credentials"  # where the Secret's files are


def shared(
    c: Checks, kinds: dict[tuple[str, str], Any], pod_labels: dict[str, str], port: int
) -> None:
    """The replicas' parts: the headless Service, Envoy's config and the store's URL."""
    _, headless = kinds[("Service", "seqserve-replicas")]
    c.expect(
        headless["spec"].get("clusterIP") == "None"
        and headless["spec"]["selector"].items() <= pod_labels.items(),
        "service-replicas.yaml: expected a headless Service over the pods",
    )
    envoy = (DEPLOY / "envoy" / "envoy.yaml").read_text()
    upstream = f"{{address: seqserve, port_value: {port}}}"
    c.expect(upstream in envoy, f"envoy/envoy.yaml: expected the upstream {upstream}")
    _, envoy_map = kinds[("ConfigMap", "seqserve-envoy")]
    in_cluster = envoy.replace(upstream, upstream.replace("seqserve,", "seqserve-replicas,"))
    c.expect(
        envoy_map["data"]["envoy.yaml"] == in_cluster,
        "envoy-configmap.yaml: expected envoy/envoy.yaml with its upstream at seqserve-replicas",
    )
    _, secret = kinds[("Secret", "seqserve-store")]
    _, redis = kinds[("Service", "seqserve-redis")]
    redis_port = redis["spec"]["ports"][0]["port"]
    c.expect(
        secret["stringData"]["SEQSERVE_STORE"].startswith(f"redis://seqserve-redis:{redis_port}/"),
        "store-secret.yaml: expected SEQSERVE_STORE at the seqserve-redis Service",
    )
    replicas = load(DEPLOY / "compose.replicas.yaml")["services"]
    store = str(replicas["seqserve"]["environment"]["SEQSERVE_STORE"])
    c.variables("compose.replicas.yaml", {"SEQSERVE_STORE": store})
    c.expect(
        store.startswith("redis://redis:") and "redis" in replicas,
        "compose.replicas.yaml: expected SEQSERVE_STORE at its redis service",
    )
    c.expect(
        "./envoy/envoy.yaml" in str(replicas["envoy"]["volumes"]),
        "compose.replicas.yaml: expected envoy to mount envoy/envoy.yaml",
    )


def main(argv: list[str]) -> int:
    if argv == ["--table"]:
        print(table())
        return 0
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    c = Checks()
    check(c)
    for problem in c.problems:
        print(f"deploy config: {problem}", file=sys.stderr)
    if not c.problems:
        print(f"deploy config: consistent ({len(c.fields)} settings checked)")
    return 1 if c.problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
