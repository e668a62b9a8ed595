"""Writes the bundled demo stream: four days of a small Kubernetes cluster's alerts.

    python examples/generate_stream.py > src/anomaly_counter/data/k8s-alerts.jsonl

Deterministic (fixed seed). Each line is one event with its offset in seconds from the start:
an alert occurrence (``alert``, with the Alertmanager-style episode id, re-notifications
included), a repair attempt (``repair``), a disposition (``disposition``) or a permanent fix
(``fix``); the last three say who reported them (``by``: the remediation bot, or a person on
call). ``anomaly-counter replay`` maps the last offset to now.
"""

from __future__ import annotations

import json
import random
import sys
from typing import Any

HOUR = 3600
DAY = 24 * HOUR
BOT = "remediation-bot"  # what repairs, and says how an alert it repaired was disposed of
ONCALL = "oncall:maria"  # who steps in
rng = random.Random(20260329)
events: list[dict[str, Any]] = []


def sig(alertname: str, service: str, namespace: str, reason: str = "") -> dict[str, str]:
    labels = {"alertname": alertname, "service": service, "namespace": namespace}
    if reason:
        labels["reason"] = reason
    labels["pod"] = f"{service}-{rng.randrange(16**5):05x}-{rng.randrange(16**4):04x}"
    return labels


def alert(t: float, labels: dict[str, str], renotify: int = 0) -> None:
    episode = f"{labels['alertname']}/{labels['service']}/{labels['namespace']}@{int(t)}"
    events.append({"offset_s": round(t, 1), "type": "alert", "signature": labels, "id": episode})
    for i in range(renotify):  # Alertmanager re-sends a firing alert every repeat interval
        events.append({"offset_s": round(t + (i + 1) * 4 * HOUR, 1), "type": "alert",
                       "signature": labels, "id": episode})  # fmt: skip


def repair(t: float, labels: dict[str, str], action: str, p_success: float) -> bool:
    ok = rng.random() < p_success
    tried(t, labels, action, ok)
    return ok


def tried(t: float, labels: dict[str, str], action: str, ok: bool) -> None:
    events.append({"offset_s": round(t, 1), "type": "repair", "signature": labels,
                   "action": action, "success": ok, "by": BOT})  # fmt: skip


def dispose(t: float, labels: dict[str, str], kind: str) -> None:
    by = BOT if kind in ("auto_repair", "cold_start_trust", "timeout_ignored") else ONCALL
    events.append({"offset_s": round(t, 1), "type": "disposition", "signature": labels,
                   "disposition": kind, "by": by})  # fmt: skip


# 1. api OOMKilled: chronic. Restarts rarely help, scaling up helps more; a permanent fix
#    (memory limit) on day 3, and it comes back on day 4.
t = 1.5 * HOUR
fixed = False
while t < 4 * DAY - HOUR:
    labels = sig("PodCrashLoopBackOff", "api", "prod", "OOMKilled")
    alert(t, labels)
    if not fixed and t > 2.6 * DAY:
        events.append({"offset_s": round(t + 1800, 1), "type": "fix", "signature": labels,
                       "description": "raised the api memory limit from 512Mi to 1Gi and fixed"
                       " the cache that grew without bound", "by": ONCALL})  # fmt: skip
        fixed = True
        t += 0.9 * DAY
        continue
    action = "restart_pod" if rng.random() < 0.7 else "scale_up"
    ok = rng.random() < (0.1 if action == "restart_pod" else 0.7)
    gap = rng.uniform(1.2, 3.2) * HOUR
    # An attempt that helps comes right after the alert, and the alert stays away for hours;
    # one that does not is the bot's last try before the alert fires again, ten minutes later
    # (what the counter's repair verification sees: a recurrence inside its window).
    tried(t + 60 if ok else t + gap - 600, labels, action, ok)
    dispose(t + 120, labels, "auto_repair" if ok else "human_approved")
    t += gap

# 2. payments latency: a burst on day 2, then quiet; scaling up works.
for i in range(8):
    t = 1 * DAY + 14 * HOUR + i * rng.uniform(15, 25) * 60
    labels = sig("HighLatency", "payments", "prod", "p99>2s")
    alert(t, labels, renotify=1 if i == 7 else 0)
    repair(t + 90, labels, "scale_up", 0.8)
    dispose(t + 200, labels, "auto_repair")

# 3. nightly job failure at 02:00, every night.
for day in range(4):
    labels = sig("KubeJobFailed", "billing-export", "prod", "BackoffLimitExceeded")
    alert(day * DAY + 2 * HOUR + rng.uniform(0, 300), labels, renotify=1)
    dispose(day * DAY + 3 * HOUR, labels, "manual_resolved")

# 4. db disk pressure three times on the last day.
for i in range(3):
    labels = sig("NodeDiskPressure", "postgres", "prod", "DiskPressure")
    alert(3 * DAY + (5 + 4 * i) * HOUR, labels)
    repair(3 * DAY + (5 + 4 * i) * HOUR + 300, labels, "clean_wal", 0.9)
    dispose(3 * DAY + (5 + 4 * i) * HOUR + 400, labels, "auto_repair")

# 5. web 5xx storm in the last two hours: past every level.
for i in range(15):
    t = 4 * DAY - 2 * HOUR + i * 7 * 60 + rng.uniform(0, 60)
    labels = sig("HTTP5xxRate", "web", "prod", "UpstreamConnectError")
    alert(t, labels)
    if i % 3 == 0:
        repair(t + 45, labels, "restart_pod", 0.05)
    if i % 5 == 4:
        repair(t + 50, labels, "rollback", 0.9)

# 6. one-offs across the cluster, and a staging alert nobody handles.
for name, service, namespace, reason in [
    ("NodeNotReady", "node-exporter", "kube-system", "KubeletDown"),
    ("CertificateExpiringSoon", "ingress", "prod", ""),
    ("PodCrashLoopBackOff", "api", "staging", "OOMKilled"),
    ("HighLatency", "search", "prod", "p99>2s"),
    ("KubePersistentVolumeFillingUp", "redis-cache", "prod", ""),
    ("PodCrashLoopBackOff", "worker", "prod", "Error"),
]:
    t = rng.uniform(0.2, 3.8) * DAY
    labels = sig(name, service, namespace, reason)
    alert(t, labels)
    dispose(t + 900, labels, "timeout_ignored" if namespace == "staging" else "cold_start_trust")

events.sort(key=lambda e: e["offset_s"])
for event in events:
    sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
