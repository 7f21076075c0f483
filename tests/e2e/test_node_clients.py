"""The Node clients people use (the openai and anthropic SDKs for Node, the Vercel AI SDK with its
default OpenAI provider and its chat provider) against the session router, over a real socket.

The packages are pinned in node-clients/package.json and its lockfile; the fixture installs them with
`npm ci` when node-clients/node_modules is missing (so a fresh clone needs only Node and the npm
registry, as .ci/run's machine has)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
NODE = Path(__file__).resolve().parents[2] / "node-clients"


@pytest.fixture(scope="module")
def node_clients() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed for the Node client tests (Debian: nodejs, npm)")
    if not (NODE / "node_modules").is_dir():
        subprocess.run([npm, "ci", "--silent", "--no-audit", "--no-fund"], cwd=NODE, check=True, timeout=300)
    return NODE / "clients.mjs"


def test_node_clients(node_clients: Path, router: str) -> None:
    run = subprocess.run(["node", str(node_clients), router], capture_output=True, text=True, timeout=120, cwd=NODE)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads(run.stdout)
    failed = {name: why for name, why in results.items() if why != "ok"}
    assert not failed, json.dumps(failed, indent=1)
    assert len(results) >= 25
