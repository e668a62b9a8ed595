"""Hostile and careless input over real HTTP, on every store: a 4xx that names what is wrong,
never a 5xx, and nothing stored from a request that was refused."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from anomaly_counter import AnomalyCounter, Settings
from anomaly_counter.errors import InvalidInputError

from .conftest import SIG
from .servers import ServeProcess, ServiceServer, v1

KEY = AnomalyCounter.hash_signature(SIG)
JSON_TYPE = {"content-type": "application/json"}
OVERFLOWING = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]


def _alert(**fields: Any) -> dict[str, Any]:
    return {"version": "4", "status": "firing", "receiver": "r", "groupKey": "g",
            "alerts": [{"status": "firing", "labels": {"alertname": "Disk"},
                        "startsAt": "2026-11-29T10:00:00Z", **fields}]}  # fmt: skip


def _requests() -> list[tuple[str, str, Any]]:
    """(method, path, JSON body) of inputs seen to get a 500 before."""
    out: list[tuple[str, str, Any]] = []
    for moment in OVERFLOWING:
        out += [
            ("POST", "/occurrences", {"signature": SIG, "at": moment}),
            ("POST", "/occurrences/batch", {"occurrences": [{"signature": SIG, "at": moment}]}),
            ("POST", f"/anomalies/{KEY}/repairs", {"action": "a", "success": True, "at": moment}),
            ("POST", f"/anomalies/{KEY}/dispositions", {"type": "auto_repair", "at": moment}),
            ("POST", f"/anomalies/{KEY}/fix", {"description": "d", "at": moment}),
            ("POST", "/alertmanager", _alert(startsAt=moment)),
            ("POST", "/alertmanager", _alert(status="resolved", endsAt=moment)),
        ]
    out += [
        ("POST", "/occurrences", {"signature": {"alertname": "\ud800"}}),
        ("POST", "/occurrences", {"signature": {"alertname": "x", "pod": "a\udfffb"}}),
        ("POST", f"/anomalies/{KEY}/repairs", {"action": "\ud800", "success": True}),
        ("POST", f"/anomalies/{KEY}/fix", {"description": "\ud800"}),
        ("POST", "/alertmanager", {**_alert(), "alerts": [{"labels": {"alertname": "\ud800"},
                                                          "startsAt": "2026-11-29T10:00:00Z"}]}),
        ("POST", "/occurrences", {"signature": {"alertname": "x", "n": float("nan")}}),
        ("POST", "/occurrences", {"signature": {"alertname": "x", "n": float("inf")}}),
        ("POST", "/occurrences", {"signature": SIG, "at": float("nan")}),
        ("POST", f"/anomalies/{KEY}/repairs", {"action": "a", "success": float("nan")}),
        ("POST", "/occurrences", {"signature": {f"l{i}": int("9" * 4000) for i in range(32)}}),
    ]  # fmt: skip
    return out


async def test_no_input_gets_a_5xx(service: ServiceServer) -> None:
    async with service.client(service.token("team-a")) as http:
        await http.post(v1("/occurrences"), json={"signature": SIG})  # the anomaly is known
        failures = []
        for method, path, body in _requests():
            try:
                r = await http.request(method, v1(path), content=_json(body), headers=JSON_TYPE)
            except httpx.HTTPError as exc:  # the server dropped the connection
                failures.append((path, str(body)[:80], repr(exc)))
                continue
            if path == "/alertmanager" and r.status_code == 200:
                # Alertmanager drops a notification refused with a 4xx: a time past either
                # end of the calendar is taken as too old, or as now
                continue
            if not 400 <= r.status_code < 500 or "detail" not in r.json():
                failures.append((path, str(body)[:80], r.status_code, r.text[:200]))
        assert failures == []
        anomaly = (await http.get(v1(f"/anomalies/{KEY}"))).json()
        assert anomaly["count_30d"] == 1 and anomaly["permanent_fix"] is None


def _json(body: Any) -> bytes:
    import json

    # Python's encoder writes NaN and Infinity (as a careless client does), and lone
    # surrogates escaped, as JSON allows
    return json.dumps(body).encode()


@pytest.mark.parametrize("bad", ["\ud800", float("nan")])
async def test_a_batch_with_one_bad_item_stores_nothing(service: ServiceServer, bad: Any) -> None:
    """Found by an attacker: on Redis a batch of 300 whose item 250 had the label value
    "\\ud800" answered 500 with 150 of the 300 stored."""
    items = [{"signature": {"alertname": f"A{i}"}} for i in range(300)]
    items[250]["signature"]["alertname"] = bad
    async with service.client(service.token("team-a")) as http:
        r = await http.post(
            v1("/occurrences/batch"),
            content=_json({"occurrences": items}),
            headers=JSON_TYPE,
        )
        assert r.status_code in (400, 422), r.text
        assert "250" in r.text  # which item
        listed = (await http.get(v1("/anomalies"), params={"window": "1h"})).json()
        assert listed["anomalies"] == []


async def test_no_body_is_read_before_the_token_is_checked(tmp_path: Path) -> None:
    """Found by an attacker: ten connections with no token sending 31 MiB each to the
    Alertmanager receiver took the service from 67 to 378 MiB; whole bodies were read and
    parsed before the 401."""
    with ServeProcess(f"sqlite:///{tmp_path / 'a.db'}", tmp_path) as serve:
        before = serve.rss_bytes()
        chunk = b"x" * (1 << 20)

        async def upload(headers: dict[str, str]) -> int:
            async def body() -> Any:
                for _ in range(31):
                    yield chunk

            async with httpx.AsyncClient(base_url=serve.url, timeout=30) as http:
                try:
                    r = await http.post(v1("/alertmanager"), content=body(), headers=headers)
                except httpx.HTTPError:
                    return 0  # refused and cut off mid-upload: as good
                return r.status_code

        nobody = {"content-type": "application/json"}
        stranger = {**nobody, "authorization": "Bearer act_0123456789abcdef_" + "a" * 32}
        statuses = await asyncio.gather(*(upload(nobody) for _ in range(5)),
                                        *(upload(stranger) for _ in range(5)))  # fmt: skip
        grown = serve.rss_bytes() - before
        assert set(statuses) <= {401, 0}, statuses
        assert grown < 20 * (1 << 20), f"grew {grown / (1 << 20):.0f} MiB"
        # the owner's large alert group still fits
        own = {**nobody, "authorization": f"Bearer {serve.token}"}
        alerts = [{"status": "firing", "labels": {"alertname": f"A{i}", "pad": "p" * 900},
                   "startsAt": "2026-11-29T10:00:00Z"} for i in range(2_000)]  # fmt: skip
        async with httpx.AsyncClient(base_url=serve.url, timeout=30) as http:
            r = await http.post(v1("/alertmanager"), json={**_alert(), "alerts": alerts},
                                headers=own)  # fmt: skip
            assert r.status_code == 200, r.text


async def _exchange(port: int, head: bytes, then: bytes = b"", wait: float = 5.0) -> bytes:
    """Send a request's start (and more after a pause); what the server answered before closing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        if then:
            await asyncio.sleep(0.2)
            writer.write(then)
        return await asyncio.wait_for(reader.read(), wait)  # (read() ends when it closes)
    finally:
        writer.close()


async def test_slow_and_oversized_requests_are_cut_off(tmp_path: Path) -> None:
    """Found by an attacker: 500 connections sending headers or bodies slowly stayed open 30 s,
    none closed; a 1 MB header was accepted."""
    settings = Settings(store_url=f"sqlite:///{tmp_path / 's.db'}", header_timeout=1.0,
                        body_timeout=1.0, max_concurrent_requests=50)  # fmt: skip
    with ServiceServer(settings) as server:
        token = server.token("team-a")
        began = time.monotonic()
        slow_heads = [
            _exchange(server.port, b"POST /v1/projects/team-a/occurrences HTTP/1.1\r\nHost: x\r\n")
            for _ in range(100)
        ]
        slow_body = _exchange(
            server.port,
            b"POST /v1/projects/team-a/occurrences HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
            b"Content-Type: application/json\r\nAuthorization: Bearer "
            + token.encode()
            + b"\r\n\r\n",
            b'{"signature":',
        )
        answers = await asyncio.gather(*slow_heads, slow_body)
        assert time.monotonic() - began < 4  # every one closed within its timeout
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers), {a[:40] for a in answers}
        assert b"did not arrive within 1 seconds" in answers[-1]
        huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"
        assert (await _exchange(server.port, huge)).startswith(b"HTTP/1.1 431")
        many = b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150))
        assert (await _exchange(server.port, many + b"\r\n")).startswith(b"HTTP/1.1 431")
        async with server.client(token) as http:  # and everyone else is served all along
            assert (await http.post(v1("/occurrences"), json={"signature": SIG})).status_code == 200


async def test_past_the_concurrency_bound_a_503_says_when_to_come_back(tmp_path: Path) -> None:
    settings = Settings(store_url=f"sqlite:///{tmp_path / 'c.db'}", max_concurrent_requests=4,
                        body_timeout=5.0)  # fmt: skip
    with ServiceServer(settings) as server:
        token = server.token("team-a")
        head = (
            b"POST /v1/projects/team-a/occurrences HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 50\r\nAuthorization: Bearer " + token.encode() + b"\r\n\r\n"
        )
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(4)]
        for _, writer in held:  # four requests waiting for their bodies
            writer.write(head)
            await writer.drain()
        await asyncio.sleep(0.3)
        async with server.client(token) as http:
            r = await http.post(v1("/occurrences"), json={"signature": SIG})
            assert r.status_code == 503 and r.headers["retry-after"] == "5"
            for _, writer in held:
                writer.close()
            await asyncio.sleep(0.3)
            r = await http.post(v1("/occurrences"), json={"signature": SIG})
            assert r.status_code == 200


async def test_a_signature_that_names_no_anomaly_is_refused(service: ServiceServer) -> None:
    """Seen by a new user: `POST .../occurrences {"signature": {}}` made an anomaly with blank
    names, which every such occurrence then joined."""
    async with service.client(service.token("team-a")) as http:
        for signature in ({}, {"pod": "api-1"}, {"alertname": "", "service": None}):
            r = await http.post(v1("/occurrences"), json={"signature": signature})
            assert r.status_code == 400 and "names no anomaly" in r.json()["detail"], r.text
        assert (await http.get(v1("/anomalies"))).json()["anomalies"] == []
    async with AnomalyCounter.from_url(service.settings.store_url, "team-a") as counter:
        with pytest.raises(InvalidInputError, match="names no anomaly"):
            await counter.record_anomaly({"pod": "api-1"})


async def test_writes_on_an_anomaly_never_seen_make_no_ghost(service: ServiceServer) -> None:
    """Seen by a new user: `dispose nosuchkey auto_repair`, `fix nosuchkey x` and `POST
    .../anomalies/nosuchkey/repairs` all succeeded, and the ghost then counted in the
    project's summaries."""
    ghost = "0123456789abcdef"
    async with service.client(service.token("team-a")) as http:
        for path, body in (
            ("/repairs", {"action": "restart_pod", "success": True}),
            ("/dispositions", {"type": "auto_repair"}),
            ("/fix", {"description": "raised the limit"}),
        ):
            r = await http.post(v1(f"/anomalies/{ghost}{path}"), json=body)
            assert r.status_code == 404, r.text
            assert "record an occurrence first" in r.json()["detail"]
        assert (await http.get(v1("/dispositions"))).json()["summary"]["total"] == 0
        assert (await http.get(v1(f"/anomalies/{ghost}"))).status_code == 404
        assert (await http.get(v1("/anomalies"))).json()["anomalies"] == []
