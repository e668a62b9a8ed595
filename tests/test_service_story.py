"""The story over HTTP, on every store: names instead of keys, the fix record, history,
timeline, escalations by day, search; and read-only tokens, which every write route refuses."""

from __future__ import annotations

from typing import Any

from anomaly_counter import AnomalyCounter

from .conftest import SIG
from .servers import ServiceServer, v1

KEY = AnomalyCounter.hash_signature(SIG)
WORKER = {**SIG, "service": "worker"}


async def test_a_name_finds_its_anomaly_or_lists_the_matches(service: ServiceServer) -> None:
    async with service.client(service.token("team-a")) as http:
        await http.post(v1("/occurrences"), json={"signature": SIG})
        one = await http.get(v1("/anomalies/PodCrashLoopBackOff"))
        assert one.status_code == 200 and one.json()["anomaly_key"] == KEY
        for _ in range(2):
            await http.post(v1("/occurrences"), json={"signature": WORKER})
        several = await http.get(v1("/anomalies/PodCrashLoopBackOff"))
        assert several.status_code == 300, several.text
        body = several.json()
        assert "2 anomalies of project 'team-a' match" in body["detail"]
        assert [(m["service"], m["count_24h"]) for m in body["matches"]] == [
            ("worker", 2),
            ("api", 1),
        ]
        narrowed = await http.get(v1("/anomalies/PodCrashLoopBackOff api"))
        assert narrowed.status_code == 200 and narrowed.json()["anomaly_key"] == KEY
        assert (await http.get(v1("/anomalies/NoSuchAlert"))).status_code == 404
        assert (await http.get(v1(f"/anomalies/{KEY}"))).json()["anomaly_key"] == KEY
        search = (await http.get(v1("/anomalies"), params={"q": "crashloop"})).json()
        assert [a["service"] for a in search["anomalies"]] == ["worker", "api"]
        assert search["total"] == 2 and search["truncated"] is False
        assert search["anomalies"][0]["alert_name"] == "PodCrashLoopBackOff"
        # every route of an anomaly takes a name; a write never makes up an anomaly of it
        named = await http.post(
            v1("/anomalies/PodCrashLoopBackOff api/repairs"),
            json={"action": "restart_pod", "success": False},
        )
        assert named.status_code == 200
        repairs = (await http.get(v1(f"/anomalies/{KEY}/repairs"))).json()
        assert repairs["actions"]["restart_pod"]["total"] == 1
        assert (await http.get(v1("/anomalies/PodCrashLoopBackOff api/timeline"))).json()[
            "anomaly_key"
        ] == KEY
        for method, path, body in (
            ("POST", "/anomalies/NoSuchAlert/fix", {"description": "x"}),
            ("POST", "/anomalies/NoSuchAlert/repairs", {"action": "a", "success": True}),
            ("POST", "/anomalies/NoSuchAlert/dispositions", {"type": "auto_repair"}),
            ("DELETE", "/anomalies/NoSuchAlert/fix", None),
            ("GET", "/anomalies/NoSuchAlert/history", None),
        ):
            r = await http.request(method, v1(path), json=body)
            assert r.status_code == 404 and "no anomaly 'NoSuchAlert'" in r.json()["detail"]
        ambiguous = await http.post(
            v1("/anomalies/PodCrashLoopBackOff/fix"), json={"description": "which one?"}
        )
        assert ambiguous.status_code == 300 and len(ambiguous.json()["matches"]) == 2
        made_up = await http.get(v1("/anomalies"), params={"q": "nosuchalert"})
        assert made_up.json()["anomalies"] == []  # nothing was made up
        for hostile in ("*", "[", "%", "\\", "{}", "?"):
            r = await http.get(v1("/anomalies"), params={"q": hostile})
            assert r.status_code == 200 and r.json()["anomalies"] == [], hostile


async def test_the_fix_and_the_regression_read_back(service: ServiceServer) -> None:
    """Tried as a new user would: after a fix and a regression, the API said regressed: false
    and no route returned the fix's text or date."""
    token = service.token("team-a")
    token_id = token.split("_")[1]
    async with service.client(token) as http:
        await http.post(v1("/occurrences"), json={"signature": SIG})
        r = await http.post(v1(f"/anomalies/{KEY}/fix"), json={"description": "limit 1Gi"})
        assert r.status_code == 200
        fixed = (await http.get(v1(f"/anomalies/{KEY}"))).json()
        assert fixed["permanent_fix"]["description"] == "limit 1Gi"
        assert fixed["permanent_fix"]["by"] == token_id and fixed["regressed"] is False
        back = (await http.post(v1("/occurrences"), json={"signature": SIG})).json()
        assert back["newly_regressed"] is True
        shown = (await http.get(v1(f"/anomalies/{KEY}"))).json()
        assert shown["regressed"] is True and shown["regressed_at"] == back["last_seen"]
        assert shown["permanent_fix"]["at"] == fixed["permanent_fix"]["at"]
        undo = await http.delete(v1(f"/anomalies/{KEY}/fix"))
        assert undo.json() == {"ok": True, "anomaly_key": KEY, "undone": True}
        again = await http.delete(v1(f"/anomalies/{KEY}/fix"))
        assert again.status_code == 404 and "no permanent fix" in again.json()["detail"]
        after = (await http.get(v1(f"/anomalies/{KEY}"))).json()
        assert after["permanent_fix"] is None and after["regressed"] is False
        story = (await http.get(v1(f"/anomalies/{KEY}/timeline"))).json()["entries"]
        assert [e["kind"] for e in story][:3] == ["fix_undone", "regressed", "fix"]
        assert story[0]["by"] == token_id and story[2]["description"] == "limit 1Gi"


async def test_history_timeline_and_escalations(service: ServiceServer) -> None:
    async with service.client(service.token("team-a")) as http:
        for _ in range(5):
            await http.post(v1("/occurrences"), json={"signature": SIG})
        await http.post(
            v1(f"/anomalies/{KEY}/repairs"), json={"action": "restart_pod", "success": False}
        )
        week = (await http.get(v1(f"/anomalies/{KEY}/history"))).json()
        assert week["window"] == "7d" and week["bucket_seconds"] == 3600
        assert len(week["buckets"]) == 168 and week["buckets"][-1]["count"] == 5
        hour = (await http.get(v1(f"/anomalies/{KEY}/history"), params={"window": "1h"})).json()
        assert len(hour["buckets"]) == 60 and hour["bucket_seconds"] == 60
        month = await http.get(v1(f"/anomalies/{KEY}/history"), params={"window": "30d"})
        assert len(month.json()["buckets"]) == 30
        assert (await http.get(v1(f"/anomalies/{KEY}/history"), params={"window": "2d"})
                ).status_code == 422  # fmt: skip
        assert (await http.get(v1("/anomalies/0000000000000000/history"))).status_code == 404
        story = (await http.get(v1(f"/anomalies/{KEY}/timeline"))).json()["entries"]
        assert [e["kind"] for e in story] == ["repair", "escalated", "escalated", "first_seen"]
        assert story[0]["action"] == "restart_pod" and story[0]["success"] is False
        assert [e["level"] for e in story[1:3]] == ["ESCALATE", "REPEAT"]
        limited = await http.get(v1(f"/anomalies/{KEY}/timeline"), params={"limit": 1})
        assert len(limited.json()["entries"]) == 1
        assert (await http.get(v1("/anomalies/0000000000000000/timeline"))).status_code == 404
        days = (await http.get(v1("/escalations"))).json()["days"]
        assert len(days) == 30 and days[-1]["REPEAT"] == 1 and days[-1]["ESCALATE"] == 1
        chronic = (await http.get(v1("/anomalies"), params={"level": "ESCALATE"})).json()
        assert [a["anomaly_key"] for a in chronic["anomalies"]] == [KEY]
        none = (await http.get(v1("/anomalies"), params={"level": "PERMANENT_FIX"})).json()
        assert none["anomalies"] == [] and none["total"] == 0


_WRITES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/occurrences", {"signature": SIG}),
    ("POST", "/occurrences/batch", {"occurrences": [{"signature": SIG}]}),
    ("POST", "/alertmanager", {"version": "4", "status": "firing", "alerts": []}),
    ("POST", f"/anomalies/{KEY}/repairs", {"action": "restart_pod", "success": True}),
    ("POST", f"/anomalies/{KEY}/dispositions", {"type": "auto_repair"}),
    ("POST", f"/anomalies/{KEY}/fix", {"description": "fixed"}),
    ("DELETE", f"/anomalies/{KEY}/fix", None),
    ("POST", "/notices/dead/retry", {}),
    ("DELETE", f"/anomalies/{KEY}", None),  # (these two take an admin token: see test_delete)
    ("DELETE", "", None),
]
_REFUSED = ("this token is read-only", "deleting takes an admin token of this project")


async def test_a_read_only_token_reads_and_cannot_write(service: ServiceServer) -> None:
    from .servers import make_token

    viewer = make_token(service.settings, "team-a", read_only=True)
    async with service.client(service.token("team-a")) as http:
        await http.post(v1("/occurrences"), json={"signature": SIG})
        await http.post(v1(f"/anomalies/{KEY}/fix"), json={"description": "fixed"})
        before = (await http.get(v1(f"/anomalies/{KEY}/timeline"))).json()
        spec = (await http.get("/openapi.json")).json()
    writes = {
        (method.upper(), path)
        for path, methods in spec["paths"].items()
        for method in methods
        if method in ("post", "delete", "put", "patch") and not path.endswith("recommendations")
    }
    assert {(m, "/v1/projects/{project}" + p.replace(KEY, "{anomaly_key}")) for m, p, _ in
            _WRITES} == writes  # every write route of the schema is tried  # fmt: skip
    async with service.client(viewer) as http:
        for method, path, body in _WRITES:
            r = await http.request(method, v1(path), json=body)
            assert r.status_code == 403 and r.json()["detail"] in _REFUSED, path
        for path in ("/anomalies", f"/anomalies/{KEY}", f"/anomalies/{KEY}/timeline",
                     f"/anomalies/{KEY}/history", "/escalations", "/dispositions",
                     "/notices/dead"):  # fmt: skip
            assert (await http.get(v1(path))).status_code == 200, path
        ranked = await http.post(v1(f"/anomalies/{KEY}/recommendations"), json={})
        assert ranked.status_code == 200  # changes nothing: a read
        after = (await http.get(v1(f"/anomalies/{KEY}/timeline"))).json()
        assert after == before
        r = await http.get(v1("/anomalies", project="team-b"))
        assert r.status_code == 403
