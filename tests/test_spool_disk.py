"""The spool on a real small filesystem (a tmpfs mounted in a mount namespace of the service's
own): a full disk refuses with 503 and Retry-After, never 500; one project's backlog leaves
room for another's; and once the store is back the spool empties and takes writes again by
itself, although the disk stayed full of something else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from anomaly_counter import AnomalyCounter, Settings

from .conftest import SIG, RedisServer, require_binary
from .servers import ServeProcess, make_token, v1

SIG_B = {**SIG, "service": "billing"}


def _small_filesystem(mount: Path, size: str) -> list[str]:
    """A command prefix: run it with a tmpfs of ``size`` at ``mount``, seen by it alone."""
    if os.geteuid() != 0 and os.environ.get("CI", "").lower() != "true":
        pytest.skip("mounting a tmpfs in a namespace needs root")
    unshare = require_binary("unshare")
    script = 'mount -t tmpfs -o size="$1" tmpfs "$0" && shift && exec "$@"'
    return [unshare, "-m", "--propagation", "private", "sh", "-c", script, str(mount), size]


def _fill(pid: int, path: Path) -> None:
    """Fill the filesystem that ``path`` is on, as the process ``pid`` sees it."""
    subprocess.run(
        [require_binary("nsenter"), "-t", str(pid), "-m", "dd", "if=/dev/zero", f"of={path}",
         "bs=4096"],
        capture_output=True, check=False,
    )  # fmt: skip


def _post(
    http: httpx.Client, token: str, project: str, signature: dict[str, str]
) -> httpx.Response:
    return http.post(
        v1("/occurrences", project),
        json={"signature": signature},
        headers={"Authorization": f"Bearer {token}"},
    )


def test_a_full_disk_refuses_with_503_and_the_spool_recovers_by_itself(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    token_b = make_token(Settings(store_url=durable_redis.url), "team-b")
    env = {"ANOMALY_COUNTER_SPOOL_DIR": str(mount / "spool"),
           "ANOMALY_COUNTER_STORE_TIMEOUT": "0.3"}  # fmt: skip
    wrap = _small_filesystem(mount, "256k")
    with ServeProcess(durable_redis.url, tmp_path, wrap=wrap, env=env) as serve:
        http = httpx.Client(base_url=serve.url, timeout=10)
        assert _post(http, serve.token, "team-a", SIG).status_code == 200
        assert _post(http, token_b, "team-b", SIG_B).status_code == 200
        durable_redis.stop()

        # team-a floods the spool: refused at its share, with 503 and Retry-After
        accepted_a = 0
        while (r := _post(http, serve.token, "team-a", SIG)).status_code == 202:
            accepted_a += 1
            assert accepted_a < 2_000, "the spool never refused"
        assert r.status_code == 503 and "Retry-After" in r.headers, r.text
        assert "team-a's share of the spool is full" in r.json()["detail"]
        assert accepted_a > 100
        ready = http.get("/readyz")
        assert ready.status_code == 200 and "on spool" in ready.text  # others still fit

        # ... and team-b's first occurrence still fits
        assert _post(http, token_b, "team-b", SIG_B).status_code == 202
        accepted_b = 1

        # something else fills the disk: refused with 503 (not 500), and /readyz says so
        _fill(serve.process.pid, mount / "filler")
        r = _post(http, token_b, "team-b", SIG_B)
        assert r.status_code == 503 and "Retry-After" in r.headers, r.text
        assert http.get("/readyz").status_code == 503

        # the store comes back: everything acknowledged is counted once, the spool empties
        # although the disk stays full of the filler, and both projects write directly again
        durable_redis.start()
        counts = {"team-a": (serve.token, SIG, accepted_a + 1),
                  "team-b": (token_b, SIG_B, accepted_b + 1)}  # fmt: skip
        for project, (token, signature, expected) in counts.items():
            path = v1(f"/anomalies/{AnomalyCounter.hash_signature(signature)}", project)
            auth = {"Authorization": f"Bearer {token}"}

            def counted(path: str = path, auth: dict[str, str] = auth, n: int = expected) -> bool:
                r = http.get(path, headers=auth)
                return r.status_code == 200 and r.json()["count_24h"] == n

            assert _eventually(counted), http.get(path, headers=auth).text
        assert _eventually(lambda: http.get("/readyz").text == "ok"), http.get("/readyz").text
        assert _post(http, serve.token, "team-a", SIG).status_code == 200
        assert _post(http, token_b, "team-b", SIG_B).status_code == 200
        http.close()


def _eventually(check: Callable[[], bool], within: float = 30) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


_WRITER = """
import json, sys
from anomaly_counter import spool as spool_module
from anomaly_counter.spool import Spool, SpoolFullError
spool_module.DISK_RESERVE_BYTES = -(1 << 30)  # no check beforehand: the disk itself refuses
spool = Spool(sys.argv[1], max_bytes=1 << 30)
acknowledged, refusals = 0, []
while len(refusals) < 3:
    try:
        spool.append([{"seq": acknowledged, "pad": "x" * 700}])
        acknowledged += 1
    except SpoolFullError as exc:
        refusals.append(str(exc))
spool.close()
again = Spool(sys.argv[1], max_bytes=1 << 30)
seen, _ = again.peek(100_000)
print(json.dumps({"acknowledged": acknowledged, "refusals": refusals,
                  "seen": [r["seq"] for r in seen], "lost": again.lost}))
"""


def test_a_write_the_disk_refuses_half_way_is_cut_back_and_nothing_acknowledged_is_lost(
    tmp_path: Path,
) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    command = [*_small_filesystem(mount, "64k"), sys.executable, "-c", _WRITER, str(mount / "s")]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)
    result = json.loads(done.stdout)
    assert all("the disk is full" in r for r in result["refusals"]), result["refusals"]
    assert result["acknowledged"] > 10
    assert result["seen"] == list(range(result["acknowledged"])) and result["lost"] == 0
