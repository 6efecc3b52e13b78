"""The deployment files: cluster.yaml (top level), the KubeRay RayJob and the Grafana dashboard."""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import json
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from ray_backup.metrics import DOCUMENTED_METRICS
from ray_backup.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SETTING_NAMES = {f.metadata["env"] for f in dataclasses.fields(Settings)}
SECRET_NAMES = {f.metadata["env"] for f in dataclasses.fields(Settings) if f.metadata["secret"]}
# The secrets the deployments must hand to the job (DESIGN.md's environment).
REQUIRED_SECRETS = {"DATABASE_URL", "REDIS_URL", "CREDENTIAL_ENCRYPTION_KEY", "KAFKA_SASL_PASSWORD"}
ASSIGNED_SECRET = re.compile(rf"\b({'|'.join(sorted(SECRET_NAMES))})\s*[=:]")


def strings(node):
    """Every string in a parsed YAML/JSON document."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def check_settings(env: dict[str, str]) -> Settings:
    """The names are settings, none is a secret, and the values load (secrets filled in)."""
    assert set(env) <= SETTING_NAMES, f"unknown settings: {set(env) - SETTING_NAMES}"
    assert not set(env) & SECRET_NAMES, f"secrets written in a config: {set(env) & SECRET_NAMES}"
    return Settings.load(environ={**env, "KAFKA_SASL_PASSWORD": "from-the-secret-store"})


# -- cluster.yaml (the repository's top level, next to pyproject.toml) ----------------------


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_is_at_the_top_level_and_deploy_keeps_kuberay_and_grafana():
    assert (ROOT / "cluster.yaml").is_file() and (ROOT / "pyproject.toml").is_file()
    assert not (DEPLOY / "cluster.yaml").exists()
    assert (DEPLOY / "kuberay" / "rayjob.yaml").is_file() and (DEPLOY / "grafana").is_dir()


def test_cluster_yaml_validates_against_rays_cluster_config_schema(cluster):
    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    assert schema_path.exists(), "ray no longer ships ray-schema.json where expected"
    jsonschema.validate(cluster, json.loads(schema_path.read_text()))


def test_cluster_yaml_passes_the_config_bootstrap_that_ray_up_runs(cluster):
    # `ray up` hands the file to commands._bootstrap_config: prepare_config (defaults, the
    # local provider's IPs turned into a node type), the provider's resource fill-out,
    # validate_config (schema and node types) and the provider's bootstrap_config.
    # no_config_cache: nothing is read from or written to Ray's config cache in /tmp.
    from ray.autoscaler._private.commands import _bootstrap_config

    prepared = _bootstrap_config(copy.deepcopy(cluster), no_config_cache=True)
    # The local provider has one node type for the head and the listed workers.
    (node_type,) = prepared["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == len(cluster["provider"]["worker_ips"])
    # The start commands survive preparation as written (token mode, settings, secrets).
    assert prepared["head_start_ray_commands"] == cluster["head_start_ray_commands"]


def test_cluster_yaml_prepares_and_validates_with_rays_own_functions(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_every_node_starts_ray_with_token_auth_and_the_clusters_token(cluster):
    # Ray's token-auth guide for `ray up`: the locally generated ~/.ray/auth_token is
    # mounted on every node, and Ray starts with RAY_AUTH_MODE=token.
    user_home = f"/home/{cluster['auth']['ssh_user']}"
    assert cluster["file_mounts"].get(f"{user_home}/.ray/auth_token") == "~/.ray/auth_token"
    for commands in (cluster["head_start_ray_commands"], cluster["worker_start_ray_commands"]):
        start = next(c for c in commands if "ray start" in c)
        assert "RAY_AUTH_MODE=token ray start" in start
    assert any("RAY_AUTH_MODE=token" in c for c in cluster["setup_commands"]), "clients on the nodes"


def test_local_provider_names_a_head_and_its_workers(cluster):
    provider = cluster["provider"]
    assert provider["type"] == "local"
    head = ipaddress.ip_address(provider["head_ip"])
    workers = [ipaddress.ip_address(ip) for ip in provider["worker_ips"]]
    assert workers and head not in workers and len(set(workers)) == len(workers)


def test_setup_commands_install_ray_backup_from_the_mounted_checkout(cluster):
    (mount,) = [remote for remote, local in cluster["file_mounts"].items() if local == "."]
    assert any("pip install" in c and c.rstrip().endswith(mount) for c in cluster["setup_commands"])


def test_the_job_settings_file_written_on_each_node_holds_valid_settings(cluster, tmp_path):
    (writer,) = [c for c in cluster["setup_commands"] if "job.env" in c]
    subprocess.run(["bash", "-c", writer], env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]},
                   check=True)
    lines = (tmp_path / ".config" / "ray-backup" / "job.env").read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if line.strip())
    settings = check_settings(env)
    assert settings.metrics_port == 9464 and settings.kafka_bootstrap_servers


def test_ray_starts_with_the_settings_and_secrets_in_its_environment(cluster):
    for commands in (cluster["head_start_ray_commands"], cluster["worker_start_ray_commands"]):
        start = next(c for c in commands if "ray start" in c)
        prefix = start.split("ray start")[0]
        assert "set -a" in prefix and "job.env" in prefix and "secrets.env" in prefix


def test_cluster_yaml_holds_no_secret_value(cluster):
    assert [s for s in strings(cluster) if ASSIGNED_SECRET.search(s)] == []


# -- deploy/kuberay/rayjob.yaml --------------------------------------------------------------


@pytest.fixture(scope="module")
def rayjob():
    docs = [d for d in yaml.safe_load_all((DEPLOY / "kuberay" / "rayjob.yaml").read_text()) if d]
    assert len(docs) == 1, "the manifest holds the RayJob only (the Secret is made apart)"
    return docs[0]


def containers(rayjob):
    spec = rayjob["spec"]["rayClusterSpec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_rayjob_kind_version_and_entrypoint(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    assert rayjob["metadata"]["name"]
    assert rayjob["spec"]["entrypoint"].split()[:2] == ["ray-backup", "run"]


def test_rayjob_cluster_has_a_head_and_worker_groups(rayjob):
    spec = rayjob["spec"]["rayClusterSpec"]
    head = spec["headGroupSpec"]
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())
    assert head["template"]["spec"]["containers"][0]["image"]
    assert spec["workerGroupSpecs"], "no worker group"
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert all(isinstance(v, str) for v in group.get("rayStartParams", {}).values())
        assert group["template"]["spec"]["containers"][0]["image"]


def test_rayjob_cluster_uses_kuberays_token_authentication(rayjob):
    # KubeRay >= 1.5.1: the operator makes the token Secret and sets RAY_AUTH_MODE and
    # RAY_AUTH_TOKEN on every Ray container and on the submitter (Ray >= 2.52 required).
    spec = rayjob["spec"]["rayClusterSpec"]
    assert spec["authOptions"] == {"mode": "token"}
    major, minor, *_ = (int(part) for part in spec["rayVersion"].split("."))
    assert (major, minor) >= (2, 52)
    assert spec["rayVersion"] == ray.__version__, "the image's Ray must be the pinned one"


def test_rayjob_runtime_env_holds_valid_settings_and_no_secret(rayjob):
    runtime_env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    env = runtime_env["env_vars"]
    assert all(isinstance(v, str) for v in env.values()), "env_vars values must be strings"
    check_settings(env)


def test_every_ray_container_gets_the_secrets_from_a_kubernetes_secret(rayjob):
    for container in containers(rayjob):
        refs = {e["name"]: e for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
        assert REQUIRED_SECRETS <= set(refs), f"{container['name']}: {REQUIRED_SECRETS - set(refs)}"
        for name, entry in refs.items():
            assert "value" not in entry
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["name"] and ref["key"] == name


def test_rayjob_holds_no_secret_value(rayjob):
    for container in containers(rayjob):
        literal = [e["name"] for e in container.get("env", []) if "value" in e]
        assert not set(literal) & SECRET_NAMES, literal
    assert [s for s in strings(rayjob) if ASSIGNED_SECRET.search(s)] == []


# -- deploy/grafana/ray-backup-dashboard.json -------------------------------------------------

HISTOGRAMS = {"mikrotik_config_backup_duration_seconds", "ray_backup_reconcile_duration_seconds"}
SERIES = set(DOCUMENTED_METRICS) | {f"{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "sum", "count")}
PROMQL_WORDS = {"sum", "by", "without", "rate", "increase", "irate", "histogram_quantile", "max",
                "min", "avg", "count", "topk", "on", "ignoring", "time", "le", "status", "instance"}


@pytest.fixture(scope="module")
def dashboard():
    return json.loads((DEPLOY / "grafana" / "ray-backup-dashboard.json").read_text())


def exprs(dashboard):
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"|\$\w+", " ", expr)  # matchers, ranges, vars
    return {t for t in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare) if t not in PROMQL_WORDS}


def test_every_panel_queries_only_documented_series(dashboard):
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            unknown = metric_names(target["expr"]) - SERIES
            assert not unknown, f"panel {panel['title']!r} queries {unknown}"


def test_dashboard_shows_what_an_operator_watches(dashboard):
    queried = set().union(*(metric_names(e) for e in exprs(dashboard)))
    for needed in ("mikrotik_config_backup_total", "mikrotik_config_backup_duration_seconds_bucket",
                   "mikrotik_config_backup_active", "ray_backup_semaphore_waiters",
                   "ray_backup_devices", "ray_backup_devices_blocked",
                   "ray_backup_last_success_age_seconds", "ray_backup_history_writer_lag",
                   "ray_backup_devices_stale", "ray_backup_spool_pending"):
        assert needed in queried, f"no panel shows {needed}"
    quantiles = [e for e in exprs(dashboard) if "histogram_quantile" in e and "backup_duration" in e]
    assert {q.split("(")[1].split(",")[0] for q in quantiles} == {"0.5", "0.95"}


def test_dashboard_is_importable(dashboard):
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all({"x", "y", "w", "h"} <= set(p["gridPos"]) for p in dashboard["panels"])
