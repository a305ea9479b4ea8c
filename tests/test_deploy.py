"""The deployment files: Kubernetes objects valid and consistent with the gateway."""

import json
import shutil
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from conftest import ROOT
from gateway.cli import _parser, settings_from_args
from gateway.config import GRACE_BACKSTOP, Settings
from gateway.manifest import load_manifest

KUBERNETES = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"


def documents() -> dict[str, dict]:
    """Each deploy/kubernetes file's object, by file name."""
    return {path.name: yaml.safe_load(path.read_text()) for path in KUBERNETES.glob("*.yaml")}


def objects() -> dict[str, dict]:
    """The Kubernetes objects (all but the kustomization), by kind."""
    found = {}
    for document in documents().values():
        if document["kind"] != "Kustomization":
            found[document["kind"]] = document
    return found


def container() -> dict:
    """The gateway container of the Deployment."""
    (only,) = objects()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def flag(name: str) -> str:
    """The value of a `--name=value` argument of the container."""
    for argument in container()["args"]:
        if argument.startswith(f"--{name}="):
            return argument.split("=", 1)[1]
    raise AssertionError(f"--{name} is not passed")


@pytest.mark.parametrize(
    "kind", ["ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]
)
def test_every_object_is_valid_kubernetes(kind):
    kubernetes_validate.validate(objects()[kind], KUBERNETES_VERSION, strict=True)


def test_a_misspelt_field_is_caught_by_the_validation():
    deployment = objects()["Deployment"]
    deployment["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_lists_every_object():
    kustomization = documents()["kustomization.yaml"]
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    assert len(objects()) == len(files), "one object per file, of distinct kinds"


def image_settings(tmp_path: Path) -> Settings:
    """The Settings of the pod: the image's entrypoint plus the container's args.

    The ConfigMap's manifest stands in for /app/spin.toml, as it does in the pod.
    """
    dockerfile = (ROOT / "Dockerfile").read_text().splitlines()
    entrypoint = json.loads(next(line for line in dockerfile if line.startswith("ENTRYPOINT"))[10:])
    assert entrypoint[:2] == ["/opt/wagi/bin/wagi", "serve"]
    manifest = tmp_path / "spin.toml"
    manifest.write_text(objects()["ConfigMap"]["data"]["spin.toml"])
    arguments = entrypoint[2:] + container()["args"]
    arguments[arguments.index("-c") + 1] = str(manifest)
    return settings_from_args(_parser().parse_args(["serve", *arguments]))


def test_the_pod_arguments_are_accepted_by_wagi_serve(tmp_path):
    settings = image_settings(tmp_path)
    assert settings.listen == f"0.0.0.0:{container()['ports'][0]['containerPort']}"
    assert settings.workers == 2
    assert settings.log_format == "json"
    assert settings.forwarded_allow_ips == "*"


def test_the_pod_outlives_its_drain(tmp_path):
    """preStop sleep, wagi's grace period and hypercorn's backstop after it all fit in the
    pod's termination grace."""
    pod = objects()["Deployment"]["spec"]["template"]["spec"]
    pre_stop = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = image_settings(tmp_path).grace_period
    assert int(pre_stop[1]) + grace + GRACE_BACKSTOP < pod["terminationGracePeriodSeconds"]


def test_probes_use_the_gateway_health_endpoints():
    assert container()["readinessProbe"]["httpGet"]["path"] == "/.well-known/wagi/ready"
    assert container()["startupProbe"]["httpGet"]["path"] == "/.well-known/wagi/ready"
    assert container()["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port_names = {port["name"] for port in container()["ports"]}
    for probe in ("readinessProbe", "startupProbe", "livenessProbe"):
        assert container()[probe]["httpGet"]["port"] in port_names


def test_the_container_matches_the_image():
    dockerfile = (ROOT / "Dockerfile").read_text()
    (port,) = container()["ports"]
    assert f"EXPOSE {port['containerPort']}" in dockerfile
    assert f"0.0.0.0:{port['containerPort']}" in dockerfile
    user = objects()["Deployment"]["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert f"--uid {user}" in dockerfile
    mount = next(m for m in container()["volumeMounts"] if m["name"] == "manifest")
    assert f'"-c", "{mount["mountPath"]}"' in dockerfile


def test_the_service_and_budget_select_the_pods():
    labels = objects()["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        selector = objects()[kind]["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items(), kind
    target = objects()["Service"]["spec"]["ports"][0]["targetPort"]
    assert target in {port["name"] for port in container()["ports"]}


def test_the_configmap_manifest_loads_against_the_image_layout(tmp_path):
    """Its paths are relative to /app, where the image keeps the example apps."""
    shutil.copytree(ROOT / "apps", tmp_path / "apps")
    (tmp_path / "spin.toml").write_text(objects()["ConfigMap"]["data"]["spin.toml"])
    manifest = load_manifest(tmp_path / "spin.toml", check_sources=False)
    example = load_manifest(ROOT / "spin.toml.example", check_sources=False)
    example_sources = {c.source.relative_to(ROOT) for c in example.components.values()}
    for component in manifest.components.values():
        assert component.source.relative_to(tmp_path) in example_sources


def test_the_dockerfile_runs_the_gateway_as_pid_one_unprivileged():
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    entrypoint = next(line for line in lines if line.startswith("ENTRYPOINT"))
    assert entrypoint.startswith('ENTRYPOINT ["'), "exec form, so wagi receives SIGTERM"
    users = [line for line in lines if line.startswith("USER ")]
    assert users and users[-1] != "USER root"
    assert any(line.startswith("HEALTHCHECK") for line in lines)
