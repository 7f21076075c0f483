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


def test_a_configmap_symlink_swap_is_a_live_edit(tmp_path: Path) -> None:
    """kubelet updates a mounted ConfigMap by writing a new timestamped directory and renaming the
    ``..data`` symlink onto it; routing.yaml is a symlink through ``..data``. The router's file
    check follows the symlinks and reloads."""
    import asyncio
    import os

    from router.app import create_app
    from router.loading import load_config
    from router.settings import Settings

    text = MIN
    mount = tmp_path / "config"
    mount.mkdir()

    def publish(version: str, body: str) -> None:
        d = mount / f"..{version}"
        d.mkdir()
        (d / "routing.yaml").write_text(body)
        os.symlink(d.name, mount / "..data_tmp")
        os.replace(mount / "..data_tmp", mount / "..data")  # atomic, as kubelet does

    publish("2026_12_01_a", text)
    os.symlink("..data/routing.yaml", mount / "routing.yaml")
    path = str(mount / "routing.yaml")

    async def go() -> None:
        application = create_app(load_config(path), Settings(telemetry=False), load=lambda: load_config(path))
        async with application.lifespan():
            live = application.state.live
            assert "added" not in live.router.config.tasks
            publish("2026_12_01_b", text + "  added:\n    chain: [glm/glm-4.6]\n")
            await live.check_files("file changed (poll)")
            assert "added" in live.router.config.tasks

    asyncio.run(go())


MIN = """version: 1
providers:
  glm:
    protocol: openai
    base_url: http://127.0.0.1:9/api/paas/v4
    api_key: k
    models:
      glm-4.6: {context_window: 200000}
tasks:
  chat:
    chain: [glm/glm-4.6]
"""
