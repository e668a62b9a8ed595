"""The service's own alerting rules (deploy/prometheus): valid for Prometheus, and unit-tested
with promtool against the metrics the service exports (a store outage that spools, a spool
growing and filling, a stalled replay, notices failing, dead letters; and silence when
healthy). The metric names the rules use are the ones /metrics serves."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from anomaly_counter.service.metrics import Metrics
from anomaly_counter.spool import Spool

from .conftest import require_binary

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


def test_the_rules_are_valid_and_their_unit_tests_pass() -> None:
    promtool = require_binary("promtool")
    checked = subprocess.run(
        [promtool, "check", "rules", "anomaly-counter-rules.yml"],
        cwd=RULES, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "7 rules found" in checked.stdout
    tested = subprocess.run(
        [promtool, "test", "rules", "anomaly-counter-rules.test.yml"],
        cwd=RULES, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_rules_use_only_metrics_the_service_serves(tmp_path: Path) -> None:
    metrics = Metrics()
    metrics.watch_spool(Spool(tmp_path / "spool", 1 << 20))
    served = set()
    for family in metrics.registry.collect():
        served |= {sample.name for sample in family.samples}
        served.add(family.name + ("_total" if family.type == "counter" else ""))
    used = set(
        re.findall(r"\banomaly_counter_[a-z_]+", (RULES / "anomaly-counter-rules.yml").read_text())
    )
    assert used and used <= served, used - served
