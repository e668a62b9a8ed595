"""The command line, run as a user runs it: a real process, real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from .conftest import free_port


def cli(
    *args: str, store: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "anomaly_counter.cli", "--store", store, *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/cli.db"


def test_record_show_top_as_tables_and_json(store: str) -> None:
    for _ in range(3):
        done = cli("record", "--alert-name", "PodCrashLoopBackOff", "--service", "api",
                   "--namespace", "prod", "--error-type", "OOMKilled", store=store)  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert "newly escalated to          REPEAT" in done.stdout
    record = cli("--json", "record", "--alert-name", "X", "--at", "2026-11-28T01:00:00Z",
                 store=store)  # fmt: skip
    assert record.returncode == 0, record.stderr
    data = json.loads(record.stdout)
    assert data["count_24h"] >= 0 and data["anomaly_key"]
    top = cli("--json", "top", "--window", "30d", store=store)
    rows = json.loads(top.stdout)
    assert rows[0]["alert_name"] == "PodCrashLoopBackOff" and rows[0]["count_30d"] == 3
    key = rows[0]["anomaly_key"]
    shown = cli("show", key, store=store)
    assert shown.returncode == 0 and "3 / 3 / 3 / 3" in shown.stdout
    assert "PodCrashLoopBackOff" in cli("top", store=store).stdout


def test_repairs_dispositions_and_fix(store: str) -> None:
    for args in (["repair", "0123456789abcdef", "restart_pod", "--success"],
                 ["dispose", "0123456789abcdef", "timeout_ignored"],
                 ["fix", "0123456789abcdef", "raised the limit"]):  # fmt: skip
        refused = cli(*args, store=store)  # a key never seen: no ghost made of a typo
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1
        assert "no anomaly '0123456789abcdef' in project" in refused.stderr
    assert "holds no anomaly at all" in cli("top", store=store).stdout
    recorded = cli("--json", "record", "--alert-name", "OOMKilled", store=store)
    key = json.loads(recorded.stdout)["anomaly_key"]
    for outcome in ("--failure", "--failure", "--failure"):
        assert cli("repair", key, "restart_pod", outcome, store=store).returncode == 0
    assert cli("repair", key, "scale_up", "--success", store=store).returncode == 0
    ranked = json.loads(cli("--json", "repairs", key, "--candidates", "restart_pod", "scale_up",
                            "rollback", store=store).stdout)  # fmt: skip
    assert [r["action"] for r in ranked["recommendations"]] == [
        "scale_up",
        "rollback",
        "restart_pod",
    ]
    restart = ranked["stats"]["restart_pod"]
    assert (restart["total"], restart["success"], restart["success_rate"]) == (3, 0, 0.0)
    assert restart["basis"] == "reported" and restart["verified_pending"] == 3
    assert ranked["recommendations"][2]["skip"] is True
    assert cli("dispose", key, "timeout_ignored", store=store).returncode == 0
    summary = json.loads(cli("--json", "dispositions", store=store).stdout)
    assert summary["summary"]["timeout_ignored"] == 1
    assert cli("fix", key, "raised the limit", store=store).returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["record", "--alert-name", "X", "--at", "yesterday"], "not an ISO 8601 time"),
        (["record", "--alert-name", "X", "--at", "2026-11-28T01:00:00"], "no time zone"),
        (["record", "--alert-name", "X", "--at", "2020-01-01T00:00:00Z"], "older than 30 days"),
        (["record"], "--alert-name"),
        (["dispose", "k", "forgotten"], "invalid choice"),
        (["--project", "bad project", "top"], "invalid project id"),
        (["top", "--limit", "0"], "limit must be"),
        (["show", "nothing-here"], "no anomaly 'nothing-here'"),
        (["fix", "NoSuchAlert", "raised the limit"], "no anomaly 'NoSuchAlert'"),
        (["repair", "NoSuchAlert", "restart_pod", "--success"], "no anomaly 'NoSuchAlert'"),
        (["search", "*" * 600], "longer than 512"),
        (["history", "0123456789abcdef", "--window", "2d"], "invalid choice"),
        (["replay", "/no/such/file.jsonl"], "cannot read"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(store: str, args: list[str], message: str) -> None:
    Path(store.removeprefix("sqlite:///")).touch()  # (a store there, empty: reads read it)
    done = cli(*args, store=store)
    assert done.returncode != 0
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_unreachable_store_exits_3() -> None:
    done = cli("top", store=f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 3 and "store unavailable" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_bad_settings_name_the_setting(store: str) -> None:
    done = cli("top", store=store, env={"ANOMALY_COUNTER_THRESHOLD_REPEAT": "0"})
    assert done.returncode == 2 and "threshold_repeat" in done.stderr


def test_bundled_replay_prints_escalations_and_top(store: str) -> None:
    done = cli("replay", "--bundled", store=store)
    assert done.returncode == 0, done.stderr
    assert "PERMANENT_FIX" in done.stdout and "REGRESSED" in done.stdout
    assert "re-notifications recognised" in done.stdout
    assert "Top anomalies, last 24 hours" in done.stdout
    again = cli("--json", "replay", "--bundled", store=store)  # the same episodes again
    assert json.loads(again.stdout)["duplicates"] > 0


def test_replay_rejects_a_broken_stream(store: str, tmp_path: Path) -> None:
    stream = tmp_path / "bad.jsonl"
    stream.write_text(
        '{"offset_s": 1, "type": "alert", "signature": {"alertname": "A"}}\nnot json\n'
    )
    done = cli("replay", str(stream), store=store)
    assert done.returncode == 2 and "line 2" in done.stderr


def test_tokens_are_printed_once_listed_without_secrets_and_revoked(store: str) -> None:
    made = cli("--project", "team-a", "--json", "token", "create", "--label", "alertmanager",
               store=store)  # fmt: skip
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)
    assert token["token"].startswith("act_") and token["project"] == "team-a"
    cli("--project", "team-b", "token", "create", store=store)
    listed = cli("--project", "team-a", "token", "list", store=store)
    assert token["token_id"] in listed.stdout and "alertmanager" in listed.stdout
    assert token["token"] not in listed.stdout  # the secret is never shown again
    everyone = json.loads(cli("--json", "token", "list", "--all", store=store).stdout)
    assert sorted(t["project"] for t in everyone) == ["team-a", "team-b"]
    assert cli("token", "revoke", token["token_id"], store=store).returncode == 0
    again = cli("token", "revoke", token["token_id"], store=store)
    assert again.returncode == 1 and "no token" in again.stderr
    bad = cli("--project", "bad project!", "token", "create", store=store)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_serve_answers_over_http_and_stops_cleanly(store: str, tmp_path: Path) -> None:
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "anomaly_counter.cli", "--store", store, "--project", "demo",
               "serve", "--port", str(port), "--demo-token"]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(4)]
        assert f"http://127.0.0.1:{port}" in lines[0] and "/docs" in lines[0]
        assert lines[1].startswith(f"dashboard: http://127.0.0.1:{port}/")
        assert lines[2].strip() == "spool: anomaly-counter-spool"  # on by default
        token = lines[3].rsplit(" ", 1)[1].strip()
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        r = httpx.post(
            f"{url}/v1/projects/demo/occurrences",
            json={"signature": {"alertname": "OOMKilled"}},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200 and r.json()["count_1h"] == 1
    finally:
        process.terminate()
        status = process.wait(15)
    # a graceful stop (uvicorn re-raises the SIGTERM it handled, so the status says SIGTERM)
    assert status in (0, -15)
    assert process.stderr is not None and "Application shutdown complete" in process.stderr.read()


def test_record_spools_while_the_store_is_down_and_the_next_run_replays(tmp_path: Path) -> None:
    from anomaly_counter import AnomalyCounter

    from .conftest import RedisServer

    server = RedisServer(free_port(), str(tmp_path), extra=["--appendonly", "yes"])
    server.start()
    env = {"ANOMALY_COUNTER_SPOOL_DIR": str(tmp_path / "spool"),
           "ANOMALY_COUNTER_STORE_TIMEOUT": "0.3"}  # fmt: skip
    key = AnomalyCounter.hash_signature({"alertname": "DiskFull"})
    try:
        server.stop()
        for _ in range(2):
            done = cli("record", "--alert-name", "DiskFull", store=server.url, env=env)
            assert done.returncode == 0, done.stderr
            assert "kept in the spool" in done.stdout
        server.start()
        shown = cli("--json", "show", key, store=server.url, env=env)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["count_1h"] == 2
    finally:
        server.stop()


def test_names_history_timeline_and_undoing_a_fix(store: str) -> None:
    """Tried as a new user would: `show PodCrashLoopBackOff` failed, two such rows of `top`
    looked the same, and the fix's text, its date and the regression could not be read back."""
    demo = ("--project", "demo")
    assert cli(*demo, "replay", "--bundled", store=store).returncode == 0
    several = cli(*demo, "show", "PodCrashLoopBackOff", store=store)
    assert several.returncode == 1
    assert "3 anomalies of project 'demo' match 'PodCrashLoopBackOff'" in several.stderr
    assert len(several.stderr.strip().splitlines()) == 1
    rows = [line.split() for line in several.stdout.splitlines()[2:]]
    assert sorted((r[2], r[3], r[4]) for r in rows) == [
        ("api", "prod", "OOMKilled"), ("api", "staging", "OOMKilled"), ("worker", "prod", "Error")
    ]  # fmt: skip
    shown = cli(*demo, "show", "PodCrashLoopBackOff", "api", "prod", store=store)  # unquoted
    assert shown.returncode == 0, shown.stderr
    assert "raised the api memory limit from 512Mi to 1Gi" in shown.stdout
    assert (
        "by oncall:maria" in shown.stdout and "came back after the permanent fix on" in shown.stdout
    )
    assert "Latest events (UTC)" in shown.stdout
    data = json.loads(cli(*demo, "--json", "show", "crashloop api prod", store=store).stdout)
    assert data["regressed"] is True and data["permanent_fix"]["by"] == "oncall:maria"
    assert len(data["history_7d"]) == 168 and len(data["timeline"]) == 10
    key = data["anomaly_key"]
    found = json.loads(cli(*demo, "--json", "search", "crash", store=store).stdout)
    assert found["total"] == 3 and {m["alert_name"] for m in found["matches"]} == {
        "PodCrashLoopBackOff"
    }
    month = json.loads(cli(*demo, "--json", "history", key, "--window", "30d", store=store).stdout)
    assert len(month["buckets"]) == 30
    assert sum(b["count"] for b in month["buckets"]) == data["count_30d"]
    story = cli(*demo, "timeline", key, "--limit", "200", store=store)
    assert "permanent fix: raised the api memory limit" in story.stdout
    assert "came back after its permanent fix" in story.stdout and "first seen" in story.stdout
    assert "repair restart_pod failed" in story.stdout and "remediation-bot" in story.stdout
    undone = cli(*demo, "unfix", key, store=store)
    assert undone.returncode == 0, undone.stderr
    after = json.loads(cli(*demo, "--json", "show", key, store=store).stdout)
    assert after["permanent_fix"] is None and after["regressed"] is False
    assert after["timeline"][0]["kind"] == "fix_undone"
    assert after["timeline"][0]["by"].startswith("cli")
    again = cli(*demo, "unfix", key, store=store)
    assert again.returncode == 1 and "no permanent fix" in again.stderr
    chronic = json.loads(
        cli(*demo, "--json", "top", "--level", "PERMANENT_FIX", store=store).stdout
    )
    assert [r["alert_name"] for r in chronic] == ["HTTP5xxRate"]


def test_read_only_tokens(store: str) -> None:
    made = cli("--project", "team-a", "--json", "token", "create", "--read-only", store=store)
    assert made.returncode == 0 and json.loads(made.stdout)["read_only"] is True
    cli("--project", "team-a", "token", "create", store=store)
    listed = cli("--project", "team-a", "token", "list", store=store).stdout
    assert "read" in listed.split() and "write" in listed.split()


def test_global_options_go_before_or_after_the_command(store: str) -> None:
    """Seen by a new user: `top --store URL --project demo` failed (unrecognized arguments),
    and so did the README's own `token create --project P`."""
    bare = [sys.executable, "-m", "anomaly_counter.cli"]
    run = lambda *a: subprocess.run([*bare, *a], capture_output=True, text=True, timeout=60)  # noqa: E731
    recorded = run("record", "--alert-name", "DiskFull", "--store", store, "--project", "demo")
    assert recorded.returncode == 0, recorded.stderr
    top = run("top", "--store", store, "--project", "demo", "--json")
    assert top.returncode == 0, top.stderr
    assert [r["alert_name"] for r in json.loads(top.stdout)] == ["DiskFull"]
    # after the command wins over before it; a nested command takes them too
    other = run("--project", "nobody", "top", "--json", "--project", "demo", "--store", store)
    assert len(json.loads(other.stdout)) == 1
    made = run("token", "create", "--project", "demo", "--store", store, "--json")
    assert made.returncode == 0 and json.loads(made.stdout)["project"] == "demo"
    # the whole token revokes it as its id does
    revoked = run("token", "revoke", json.loads(made.stdout)["token"], "--store", store)
    assert revoked.returncode == 0, revoked.stderr
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("anomaly-counter ")


def test_a_read_says_where_it_looked_and_never_makes_a_store(store: str, tmp_path: Path) -> None:
    """Seen by a new user: forgetting --project, or a mistyped SQLite path, printed "no
    anomaly occurred in the last 24h" with exit 0, and the read made the file and its
    directories."""
    assert (
        cli("--project", "demo", "record", "--alert-name", "DiskFull", store=store).returncode == 0
    )
    forgot = cli("top", store=store)  # (the project "default": nothing there)
    assert forgot.returncode == 0
    assert "project 'default'" in forgot.stdout and "no anomaly at all" in forgot.stdout
    quiet = cli("--project", "demo", "top", "--window", "1h", store=store)
    assert "project 'demo'" in quiet.stdout or "DiskFull" in quiet.stdout
    mistyped = tmp_path / "typo" / "cli.db"
    for read in (["top"], ["show", "DiskFull"], ["token", "list"], ["notices", "dead"]):
        done = cli("--project", "demo", *read, store=f"sqlite:///{mistyped}")
        assert done.returncode == 2, (read, done.stderr)
        assert done.stderr.count("\n") == 1 and "no store at" in done.stderr
    assert not mistyped.parent.exists()  # nothing made


def test_replay_takes_an_events_own_time_and_names_the_failing_line(
    store: str, tmp_path: Path
) -> None:
    """Seen by a new user: `replay` ignored an `at` in its lines, and an error said "event N"
    (counting events, not lines) or nothing of where."""
    stream = tmp_path / "events.jsonl"
    stream.write_text(
        '{"offset_s": 0, "type": "alert", "signature": {"alertname": "A"}}\n'
        "\n"
        '{"at": "2026-01-01T00:00:00Z", "type": "alert", "signature": {"alertname": "B"}}\n'
    )
    old = cli("replay", str(stream), store=store)
    assert old.returncode == 2 and old.stderr.startswith("anomaly-counter: error: line 3: ")
    assert "older than 30 days" in old.stderr  # its own time was taken, and refused
    moment = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    stream.write_text(
        f'{{"at": "{moment}", "type": "alert", "signature": {{"alertname": "B"}}}}\n'
        '{"offset_s": 0, "type": "alert", "signature": {"alertname": "A"}}\n'
        '{"offset_s": 0, "type": "repair", "signature": {"alertname": "A"}}\n'
    )
    bad = cli("replay", str(stream), store=store)
    assert bad.returncode == 2 and "line 3: missing or unknown field 'action'" in bad.stderr
    stream.write_text(stream.read_text().splitlines(keepends=True)[0])
    assert cli("replay", str(stream), store=store).returncode == 0
    shown = json.loads(cli("--json", "show", "B", store=store).stdout)
    assert shown["first_seen"].startswith(moment[:16].replace("T", "T"))


def test_a_busy_port_is_said_before_serving_and_exits_2(store: str, tmp_path: Path) -> None:
    """Seen by a new user: `serve` on a port in use printed "serving at ..." and then exited 3
    with uvicorn's lines."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = cli("serve", "--port", str(port), "--no-spool", store=store)
    assert done.returncode == 2, done.stderr
    assert "on sqlite" not in done.stdout and done.stdout == ""
    assert done.stderr.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in done.stderr


def test_labels_never_drive_the_terminal(store: str) -> None:
    """Seen by an attacker: an alert labelled with an escape sequence was printed raw in the
    tables, and the reader's terminal acted on it."""
    assert (
        cli("record", "--alert-name", "\x1b[31mRed", "--service", "a\x07b", store=store).returncode
        == 0
    )
    for args in (["top"], ["show", "Red"], ["search", "Red"]):
        shown = cli(*args, store=store)
        assert shown.returncode == 0, shown.stderr
        assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout, args
        assert "\\x1b[31mRed" in shown.stdout, (args, shown.stdout)
