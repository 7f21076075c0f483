"""deploy/kubernetes: every manifest validates against the Kubernetes schemas (kubernetes-validate,
offline, strict: unknown fields are errors), the overlays build with kustomize (``kubectl
kustomize``, offline), and the Deployment does what the README says (probes, drain, non-root,
read-only root, the config mounted as a directory so live edits arrive)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
VERSION = "1.33.0"


def _validate(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, VERSION, strict=True)


def test_base_manifests_validate_and_the_deployment_is_hardened() -> None:
    docs = {p.name: yaml.safe_load(p.read_text()) for p in (K8S / "base").glob("*.yaml")
            if p.name not in ("kustomization.yaml", "routing.yaml")}
    assert set(docs) == {"deployment.yaml", "service.yaml", "pdb.yaml", "hpa.yaml", "secret.example.yaml"}
    for doc in docs.values():
        _validate(doc)
    pod = docs["deployment.yaml"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert pod["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsUser"] == 10001 and "--uid 10001" in (ROOT / "Dockerfile").read_text()
    assert c["resources"]["requests"] and c["resources"]["limits"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    assert "subPath" not in mount and c["args"][:3] == ["serve", "--config", mount["mountPath"] + "/routing.yaml"]
    assert (K8S / "base" / "routing.yaml").read_text() == (ROOT / "routing.yaml").read_text()  # the ConfigMap's copy


@pytest.mark.parametrize(("overlay", "replicas", "demo"), [("demo", 1, True), ("production", 3, False)])
def test_overlays_build_with_kustomize_and_validate(overlay: str, replicas: int, demo: bool) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its kustomize) is not installed; .ci/run's machine has it")
    built = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                           check=True, timeout=60).stdout
    docs = [d for d in yaml.safe_load_all(built) if d]
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler",
                                               "PodDisruptionBudget", "Service"]
    for doc in docs:
        _validate(doc)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == replicas
    assert ("--demo" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]) is demo
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    assert config["metadata"]["name"] == "llm-router-config" and "routing.yaml" in config["data"]
