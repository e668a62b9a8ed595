"""Fairness between projects: one project floods the service with 64 concurrent batches of 100
occurrences without pause; how long do another project's single writes take meanwhile?

The service (``anomaly-counter serve``, one process), the flood (a process of its own, 64
keep-alive connections) and the measuring client (this process, one write at a time) share
the machine's cores, as they would on a small host. Each store: 300 single writes of project
B idle, then 300 more under the flood; p50, p99 and max of each, and what the flood got
through. The issue's target: B's p99 under the flood within 3x its idle p99, or 100 ms.

    python bench/bench_fairness.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench_record import Server, machine  # beside this script, on its sys.path
from bench_service import CLI, Service

FLOOD_SECONDS = 10.0
SAMPLES = 300
FLOOD = Path(__file__).with_name("flood.py")


def _token(store_url: str, project: str) -> str:
    made = subprocess.run(
        [*CLI, "--store", store_url, "--project", project, "--json", "token", "create"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return str(json.loads(made.stdout)["token"])


def _singles(http: httpx.Client, token: str, n: int) -> list[float]:
    headers = {"Authorization": f"Bearer {token}"}
    body = {"signature": {"alert_name": "Quiet", "service": "b", "namespace": "n"}}
    times = []
    for _ in range(n):
        began = time.perf_counter()
        r = http.post("/v1/projects/team-b/occurrences", json=body, headers=headers)
        times.append(1000 * (time.perf_counter() - began))
        r.raise_for_status()
    return sorted(times)


def _figures(ms: list[float]) -> str:
    return f"{ms[len(ms) // 2]:.1f} / {ms[int(0.99 * len(ms)) - 1]:.1f} / {ms[-1]:.1f} ms"


def main() -> None:
    print(f"Machine: {machine()}")
    redis_server = Server()
    tmp = tempfile.mkdtemp()
    rows = []
    try:
        for name, url in (("Redis", redis_server.url), ("SQLite", f"sqlite:///{tmp}/fair.db")):
            service = Service(url)  # its token is of project "bench": the flood's
            token_b = _token(url, "team-b")
            try:
                with httpx.Client(base_url=service.url, timeout=60) as http:
                    _singles(http, token_b, 50)  # warm up
                    idle = _singles(http, token_b, SAMPLES)
                    flood = subprocess.Popen(
                        [sys.executable, str(FLOOD), service.url,
                         service.token, "bench", str(FLOOD_SECONDS)],
                        stdout=subprocess.PIPE, text=True,
                    )  # fmt: skip
                    time.sleep(1.5)
                    loaded = _singles(http, token_b, SAMPLES)
                    statuses = json.loads(flood.communicate(timeout=120)[0])
            finally:
                service.stop()
            bound = max(3 * idle[int(0.99 * SAMPLES) - 1], 100.0)
            p99 = loaded[int(0.99 * SAMPLES) - 1]
            batches = statuses.get("200", 0)
            rows.append((name, _figures(idle), _figures(loaded), bound, p99 <= bound, batches))
            print(f"{name}: idle {rows[-1][1]}, under the flood {rows[-1][2]}; flood {statuses}")
    finally:
        redis_server.stop()
    print()
    print(
        "| store | B's single writes idle: p50 / p99 / max | under A's flood | bound |"
        " met | A's batches of 100 served in the flood's 10 s |"
    )
    print("|---|---:|---:|---:|---|---:|")
    for name, idle_text, loaded_text, bound, met, batches in rows:
        print(
            f"| {name} | {idle_text} | {loaded_text} | {bound:.0f} ms |"
            f" {'yes' if met else 'no'} | {batches:,} |"
        )


if __name__ == "__main__":
    main()
