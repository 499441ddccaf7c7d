"""``deploy/``: the Prometheus alert rules pass ``promtool check rules`` and their unit tests
(``promtool test rules``), read only metrics the server exports, and fail their tests when a rule is
wrong; the Kubernetes manifests validate against the Kubernetes schemas and agree with the server's
flags, probes and port."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml
from serve_support import REPO_ROOT

from finbert2.serve.args import ServeArguments
from finbert2.serve.metrics import ServerMetrics

PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
KUBERNETES_DIR = REPO_ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes still in upstream support when this was written, and the newest schemas we carry.
KUBERNETES_VERSIONS = ("1.32.0", "1.37.0")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool not found (Debian: apt-get install prometheus; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def alert_rules(path=PROMETHEUS_DIR / "alerts.yml") -> list[dict]:
    groups = yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def exported_sample_names() -> set[str]:
    """Every sample name the server's /metrics can carry (a counter ``x``: ``x_total``; a histogram: ``_bucket`` ...)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names = set()
    for family in ServerMetrics().registry.collect():
        names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def test_alert_rules_check_and_pass_their_unit_tests():
    tool = promtool()
    checked = subprocess.run([tool, "check", "rules", "alerts.yml"], cwd=PROMETHEUS_DIR, capture_output=True,
                             text=True)
    assert checked.returncode == 0 and f"{len(alert_rules())} rules found" in checked.stdout, checked
    tested = subprocess.run([tool, "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS_DIR, capture_output=True,
                            text=True)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_each_alert_is_tested_firing_and_silent_and_reads_exported_metrics():
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text(encoding="utf-8"))["tests"]
    fired, silent = set(), set()
    for group in tests:
        assert any('job="healthy"' in s["series"] for s in group["input_series"]), group["name"]
        for case in group["alert_rule_test"]:
            (fired if case["exp_alerts"] else silent).add(case["alertname"])
            assert all(a["exp_labels"]["job"] == "sick" for a in case["exp_alerts"]), case
    names = [rule["alert"] for rule in alert_rules()]
    assert set(names) == fired == silent, (set(names), fired, silent)

    exported = exported_sample_names()
    for rule in alert_rules():
        used = set(re.findall(r"\bfinbert2_\w+", rule["expr"]))
        assert used and used <= exported, (rule["alert"], used - exported)


def test_a_wrong_threshold_fails_the_rule_tests(tmp_path):
    tool = promtool()
    text = (PROMETHEUS_DIR / "alerts.yml").read_text(encoding="utf-8")
    wrong = text.replace("> 0.05\n        for: 5m", "> 0.001\n        for: 5m", 1)  # the error rate's threshold
    assert wrong != text
    (tmp_path / "alerts.yml").write_text(wrong, encoding="utf-8")
    unit_tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text(encoding="utf-8"))
    unit_tests["tests"] = [t for t in unit_tests["tests"] if t["name"] == "error rate counts API 5xx only"]
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(unit_tests), encoding="utf-8")
    tested = subprocess.run([tool, "test", "rules", "alerts_test.yml"], cwd=tmp_path, capture_output=True, text=True)
    report = tested.stdout + tested.stderr
    assert tested.returncode != 0
    assert "FinBERT2HighErrorRate" in report and 'job="healthy"' in report, report


def manifests() -> list[dict]:
    docs = []
    for path in sorted(KUBERNETES_DIR.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return docs


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_manifests_validate_against_the_schemas(version):
    import kubernetes_validate

    docs = manifests()
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_a_wrong_manifest_is_rejected():
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError

    deployment = next(d for d in manifests() if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"]["paths"] = container["readinessProbe"]["httpGet"].pop("path")
    with pytest.raises(ValidationError, match="paths"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_manifests_agree_with_the_server():
    from finbert2.config import parse_args

    docs = {d["kind"]: d for d in manifests()}
    deployment, service, autoscaler = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["finbert2", "serve"]
    (args,) = parse_args((ServeArguments,), container["args"], prog="finbert2 serve")  # every flag exists
    assert args.host == "0.0.0.0"
    port = next(p for p in container["ports"] if p["name"] == "http")
    assert port["containerPort"] == args.port == int(pod["metadata"]["annotations"]["prometheus.io/port"])
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert pod["spec"]["terminationGracePeriodSeconds"] > args.graceful_timeout
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert autoscaler["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= autoscaler["spec"]["maxReplicas"]
