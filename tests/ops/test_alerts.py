"""docker/prometheus and docker/grafana: the alert rules pass `promtool check rules` and their
unit tests (`promtool test rules`), the Prometheus configuration passes `promtool check config`,
every dashboard query parses, and every portal metric they name is one the portal exports.

promtool comes from Debian's `prometheus` package (`make deps`); without it these fail."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from integrations.metrics import DomainCollector

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "docker" / "prometheus"
DASHBOARD = ROOT / "docker" / "grafana" / "zywave-portal.json"
METRIC = re.compile(r"\b((?:zywave|portal)_[a-z0-9_]+)")


def promtool(*args: str, cwd: Path = PROMETHEUS) -> str:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: `make deps` installs Debian's prometheus package"
    done = subprocess.run(
        [tool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_alert_rules_are_valid() -> None:
    assert "SUCCESS: 8 rules found" in promtool("check", "rules", "alerts.yml")


def test_the_alert_rules_pass_their_unit_tests() -> None:
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml")


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert fired == names


def test_the_prometheus_configuration_is_valid(tmp_path: Path) -> None:
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(PROMETHEUS / name, tmp_path / name)
    token = tmp_path / "metrics_token"
    token.write_text("a-token-of-the-test")
    config = tmp_path / "prometheus.yml"
    text = config.read_text()
    assert "credentials_file: /tmp/metrics_token" in text  # noqa: S108 (a tmpfs file)
    config.write_text(text.replace("/tmp/metrics_token", str(token)))  # noqa: S108
    promtool("check", "config", "prometheus.yml", cwd=tmp_path)


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 15
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{n}", "expr": q.replace("$__rate_interval", "5m")}
                    for n, q in enumerate(queries)
                ],
            }
        ]
    }
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(rules))
    promtool("check", "rules", "queries.yml", cwd=tmp_path)


@pytest.mark.django_db
def test_every_metric_the_alerts_and_the_dashboard_name_is_exported() -> None:
    from prometheus_client import REGISTRY

    exported: set[str] = set()
    for family in [*REGISTRY.collect(), *DomainCollector().collect()]:
        exported.add(family.name)
        exported.update(family.name + suffix for suffix in ("_total", "_bucket", "_count", "_sum"))
    named = set(METRIC.findall((PROMETHEUS / "alerts.yml").read_text()))
    named |= {name for query in dashboard_queries() for name in METRIC.findall(query)}
    assert len(named) >= 15
    assert named - exported == set()
