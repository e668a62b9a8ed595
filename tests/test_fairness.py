"""One project's flood does not starve another: while project A sends 64 concurrent batches of
100 occurrences without pause, project B's single writes stay within 3x of their idle p99 (or
250 ms, whichever is larger: starved, they took 632-864 ms), on SQLite and on Redis. The
service, the flood and the measuring client are processes of their own, as in production."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from anomaly_counter import Settings

from .conftest import SIG, RedisServer
from .servers import ServeProcess, make_token, v1

FLOOD = Path(__file__).parents[1] / "bench" / "flood.py"


def _p99(http: httpx.Client, token: str, n: int = 300) -> float:
    headers = {"Authorization": f"Bearer {token}"}
    times = []
    for _ in range(n):
        began = time.perf_counter()
        r = http.post(v1("/occurrences", "team-b"), json={"signature": SIG}, headers=headers)
        times.append(time.perf_counter() - began)
        assert r.status_code == 200, r.text
    return sorted(times)[int(0.99 * n) - 1]


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_a_flooding_project_does_not_starve_another(
    store: str, fresh_redis: RedisServer, tmp_path: Path
) -> None:
    url = fresh_redis.url if store == "redis" else f"sqlite:///{tmp_path / 'fair.db'}"
    with ServeProcess(url, tmp_path, "--no-spool") as serve:
        token_b = make_token(Settings(store_url=url), "team-b")
        with httpx.Client(base_url=serve.url, timeout=30) as http:
            _p99(http, token_b, 50)  # warm up
            idle = _p99(http, token_b)
            flood = subprocess.Popen(
                [sys.executable, str(FLOOD), serve.url, serve.token, "team-a", "8"],
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(1.5)  # the flood under way
            loaded = _p99(http, token_b)
            out, _ = flood.communicate(timeout=60)
    statuses = {int(k): v for k, v in json.loads(out).items()}
    assert statuses.get(200, 0) > 50, statuses  # the flood was served, not just refused
    # Starved, B's p99 was 632 ms (Redis) and 864 ms (SQLite); fair, about 50-100 ms on a
    # shared 2-core machine (bench/bench_fairness.py measures it). The floor catches starvation
    # without failing on a busy machine's noise (100 ms did, now and then, on both trees).
    bound = max(3 * idle, 0.250)
    assert loaded <= bound, f"p99 {loaded * 1000:.1f} ms under a flood, idle {idle * 1000:.1f} ms"
