from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from router.loading import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
version: 1
providers:
  glm:
    protocol: openai
    base_url: ${GLM_URL:-https://api.z.ai/api/paas/v4}/
    api_key: ${ZAI_API_KEY}
    models:
      glm-4.6: {context_window: 200000, price: {input: 0.60, output: 2.20}}
  claude:
    protocol: anthropic
    base_url: https://api.anthropic.com
    api_key: ${ANTHROPIC_API_KEY}
    models:
      claude-sonnet-4-5: {context_window: 200000, price: {input: 3.00, output: 15.00}}
tasks:
  quick_summary:
    chain: [glm/glm-4.6, claude/claude-sonnet-4-5]
    params: {max_tokens: 512, temperature: 0.3}
"""


def test_interpolation_and_defaults() -> None:
    cfg = parse_config(GOOD, {"ZAI_API_KEY": "zk", "ANTHROPIC_API_KEY": "ak"})
    glm = cfg.providers["glm"]
    assert glm.base_url == "https://api.z.ai/api/paas/v4"  # default used, trailing slash dropped
    assert glm.api_key == "zk" and glm.unusable_reason is None
    assert cfg.tasks["quick_summary"].params.max_tokens == 512
    assert cfg.providers["claude"].models["claude-sonnet-4-5"].price.output == 15.0
    cfg2 = parse_config(GOOD, {"GLM_URL": "http://127.0.0.1:9", "ZAI_API_KEY": "zk", "ANTHROPIC_API_KEY": "ak"})
    assert cfg2.providers["glm"].base_url == "http://127.0.0.1:9"
    assert cfg.digest and cfg.digest == cfg2.digest  # the digest is of the file text


def test_unset_key_makes_provider_unusable_not_invalid() -> None:
    cfg = parse_config(GOOD, {"ZAI_API_KEY": "zk"})
    claude = cfg.providers["claude"]
    assert claude.api_key is None
    assert claude.unusable_reason == "api_key: environment variable ANTHROPIC_API_KEY is not set"


def test_every_problem_reported_with_its_location() -> None:
    bad = GOOD.replace("chain: [glm/glm-4.6, claude/claude-sonnet-4-5]",
                       "chain: [glm/glm-4.6, glmx/glm-4.6, glm/nope, justaname]")
    bad = bad.replace("temperature: 0.3", "temprature: 0.3")
    bad += "  empty:\n    chain: []\nextra_key: 1\n"
    with pytest.raises(ConfigError) as info:
        parse_config(bad, {})
    problems = info.value.problems
    assert "tasks.quick_summary.chain[1]: unknown provider 'glmx'" in problems
    assert "tasks.quick_summary.chain[2]: provider 'glm' has no model 'nope'" in problems
    assert "tasks.quick_summary.chain[3]: 'justaname' is not provider/model" in problems
    assert any(p.startswith("tasks.quick_summary.params.temprature: ") for p in problems)
    assert "tasks.empty.chain: must name at least one target" in problems
    assert "extra_key: unknown key" in problems


def test_wrong_types_and_protocol() -> None:
    bad = GOOD.replace("protocol: anthropic", "protocol: grpc").replace("context_window: 200000, price: {input: 0.60",
                                                                        "context_window: lots, price: {input: 0.60")
    with pytest.raises(ConfigError) as info:
        parse_config(bad, {})
    text = "\n".join(info.value.problems)
    assert "providers.claude.protocol" in text
    assert "providers.glm.models.glm-4.6.context_window" in text


def test_yaml_syntax_error_has_line_and_column() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("providers: [unclosed\ntasks: {}\n", {})
    assert info.value.problems[0].startswith("line ")


def test_missing_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("/nonexistent/routing.yaml")
    assert "cannot read" in info.value.problems[0]


def test_repo_routing_yaml_is_valid_and_realistic() -> None:
    cfg = load_config(str(ROOT / "routing.yaml"), {})
    assert cfg.providers["glm"].base_url == "https://api.z.ai/api/paas/v4"
    assert cfg.providers["claude"].base_url == "https://api.anthropic.com"
    assert set(cfg.tasks) >= {"quick_summary", "deep_analysis", "code_generation", "chat"}
    assert cfg.tasks["quick_summary"].chain[0].startswith("glm/")
    assert cfg.tasks["deep_analysis"].chain[0].startswith("claude/")
    assert all(m.price for p in cfg.providers.values() for m in p.models.values())
    assert cfg.cors is not None and cfg.cors.allow_origins == ["http://localhost:3000"]


def test_cors_is_off_by_default_and_checked() -> None:
    assert parse_config(GOOD, {}).cors is None
    cfg = parse_config(GOOD + "cors: {allow_origins: ['*'], allow_credentials: true, max_age: 60}\n", {})
    assert cfg.cors is not None and cfg.cors.allow_headers == ["*"] and cfg.cors.max_age == 60
    with pytest.raises(ConfigError) as info:
        parse_config(GOOD + "cors: {allow_origin: ['*']}\n", {})
    assert any(p.startswith("cors") for p in info.value.problems)


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router", "validate", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_validate_command(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    r = _validate(good)
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("glm/glm-4.6, claude", "glmx/glm-4.6, claude"))
    r = _validate(bad)
    assert r.returncode == 1
    assert "tasks.quick_summary.chain[0]: unknown provider 'glmx'" in r.stderr
