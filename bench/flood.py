"""A flood of one project: 64 keep-alive connections, each sending batches of 100 occurrences
without pause for a while; prints how many answers of each status it got (JSON). Used by
``bench_fairness.py`` and ``tests/test_fairness.py``.

    python bench/flood.py URL TOKEN PROJECT SECONDS
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx

CONNECTIONS = 64
BODY = json.dumps(
    {
        "occurrences": [
            {"signature": {"alert_name": f"Flood{i % 7}", "service": "s", "namespace": "n"}}
            for i in range(100)
        ]
    }
).encode()


async def _sender(
    http: httpx.AsyncClient, path: str, until: float, statuses: dict[int, int]
) -> None:
    while time.monotonic() < until:
        r = await http.post(path, content=BODY)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        if r.status_code == 429:
            await asyncio.sleep(0.05)  # (as a client that honours the refusal would)


async def main(url: str, token: str, project: str, seconds: float) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    statuses: dict[int, int] = {}
    path = f"/v1/projects/{project}/occurrences/batch"
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as http:
        until = time.monotonic() + seconds
        await asyncio.gather(*(_sender(http, path, until, statuses) for _ in range(CONNECTIONS)))
    print(json.dumps(statuses))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
