"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright.

The service serves the bundled demo stream (replayed by the CLI, as `make run` does) on the
embedded store; the browser signs in with the demo project's token and reads the story of its
chronic anomalies. ``pytest --screenshots docs/screenshots`` (``make screenshots``) also saves
each page at desktop and phone widths, as the README shows them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from anomaly_counter import AnomalyCounter, Settings
from anomaly_counter.settings import WebhookConfig

from .conftest import require_binary
from .servers import ChatServer, ServiceServer, eventually, make_token

playwright_api = pytest.importorskip("playwright.async_api")

API_KEY = AnomalyCounter.hash_signature(
    {"alertname": "PodCrashLoopBackOff", "service": "api", "namespace": "prod",
     "reason": "OOMKilled"}
)  # fmt: skip
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@dataclass
class Demo:
    server: ServiceServer
    token: str  # the demo project's, which may write
    viewer: str  # a read-only token of the demo project
    other: str  # a token of another project

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    path = tmp_path_factory.mktemp("dashboard") / "demo.db"
    store = f"sqlite:///{path}"
    replay = subprocess.run(
        [sys.executable, "-m", "anomaly_counter.cli", "--store", store, "--project", "demo",
         "replay", "--bundled"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    settings = Settings(store_url=store)
    with ServiceServer(settings) as server:
        other = make_token(settings, "team-b")
        httpx.post(
            f"{server.url}/v1/projects/team-b/occurrences",
            json={"signature": {"alertname": "TheirSecretAlert", "service": "vault"}},
            headers={"Authorization": f"Bearer {other}"},
        ).raise_for_status()
        yield Demo(
            server,
            make_token(settings, "demo"),
            make_token(settings, "demo", read_only=True),
            other,
        )


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    chromium = require_binary("chromium")
    async with playwright_api.async_playwright() as p:
        launched = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


class Page:
    """A browser page that remembers every console error and failed request."""

    def __init__(self, page: Any, base: str) -> None:
        self.page, self.base = page, base
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("requestfailed", self._failed)
        page.on(
            "response",
            lambda r: self.errors.append(f"{r.status}: {r.url}") if r.status >= 400 else None,
        )

    def _failed(self, request: Any) -> None:
        if request.failure != "net::ERR_ABORTED":  # not one a navigation cancelled
            self.errors.append(f"failed: {request.url} ({request.failure})")

    async def sign_in(self, token: str) -> None:
        await self.page.goto(self.base + "/")
        await self.page.wait_for_url("**/signin**")
        await self.page.fill("#token", token)
        await self.page.click("button.primary")

    async def no_sideways_scroll(self) -> None:
        widths = await self.page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert widths[0] <= widths[1], f"{self.page.url} scrolls sideways: {widths}"


@pytest.fixture
async def page(browser: Any, demo: Demo) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport=DESKTOP, timezone_id="Asia/Tokyo")
    wrapped = Page(await context.new_page(), demo.url)
    yield wrapped
    await context.close()
    assert wrapped.errors == [], wrapped.errors  # no errors in the browser's console


async def _shot(request: pytest.FixtureRequest, page: Any, name: str, full: bool = True) -> None:
    folder = request.config.getoption("--screenshots")
    if folder:  # (playwright makes the folder)
        await page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=full)


async def test_sign_in_see_the_chronic_ones_search_and_read_a_story(
    page: Page, demo: Demo, request: pytest.FixtureRequest
) -> None:
    p = page.page
    await _shot(request, p, "signin", full=False)
    await page.sign_in(demo.token)
    await p.wait_for_url(f"{demo.url}/projects/demo")
    rows = p.locator("table.cards tbody tr")
    names = await p.locator("table.cards td.name a").all_inner_texts()
    assert names == ["HTTP5xxRate", "PodCrashLoopBackOff", "NodeDiskPressure"]  # 24 h, most first
    assert await rows.nth(0).locator(".badge.PERMANENT_FIX").count() == 1
    assert await rows.nth(1).locator(".badge.regressed").count() == 1
    assert await rows.nth(1).locator("svg.spark").count() == 1
    assert "scale_up" in await rows.nth(1).inner_text()  # the best next repair
    assert await p.locator(".stacked rect").count() > 0  # escalations per day
    tokyo = await p.locator("table.cards time").first.inner_text()
    title = await p.locator("table.cards time").first.get_attribute("title")
    assert title is not None and title.endswith("UTC") and "UTC" not in tokyo  # viewer's zone
    await _shot(request, p, "project")

    await p.select_option("#level", "all")  # filters apply at once
    await p.wait_for_url("**level=all**")
    assert await p.locator("table.cards tbody tr").count() == 6  # all of the last 24 hours
    await p.click("a:text-is('7 d')")
    await p.wait_for_url("**window=7d**")
    assert await p.locator("th[aria-sort='descending']").inner_text() == "7 d ▾"

    await p.fill("#q", "crash")
    await p.press("#q", "Enter")
    await p.wait_for_url("**q=crash**")
    assert await p.locator("h1").inner_text() == "3 anomalies match “crash”"
    services = await p.locator("table.cards td[data-label='Service']").all_inner_texts()
    assert sorted(services) == ["api", "api", "worker"]
    prod = p.locator("td[data-label='Namespace']", has_text="prod")
    service = p.locator("td[data-label='Service']", has_text="api")
    await p.locator("tr", has=prod).filter(has=service).locator("td.name a").click()
    await p.wait_for_url(f"**/anomalies/{API_KEY}")

    assert await p.locator("h1").inner_text() == "PodCrashLoopBackOff"
    assert await p.locator(".title-row .badge.regressed").count() == 1
    assert await p.locator("svg.bars").count() == 2  # 7 days hourly, 30 days daily
    assert await p.locator("svg.bars").first.locator("rect").count() == 168
    fix = await p.locator(".callout").inner_text()
    assert "raised the api memory limit" in fix and "oncall:maria" in fix
    assert "the fix did not hold" in fix
    story = await p.locator("ol.timeline").inner_text()
    for told in ("became ESCALATE", "became REPEAT", "permanent fix: raised the api memory",
                 "came back after its permanent fix", "repair restart_pod failed",
                 "first seen", "remediation-bot"):  # fmt: skip
        assert told in story, told
    repairs = await p.locator(
        "section[aria-labelledby=repairs-heading] table.cards"
    ).first.inner_text()
    assert repairs.index("scale_up") < repairs.index("restart_pod")
    assert "skip: fails too often" in repairs
    await _shot(request, p, "anomaly")
    await p.check("#key-events")  # only the turning points of the story
    shown = await p.locator("ol.timeline li:visible").all_inner_texts()
    assert shown and all("repair" not in text and "disposed" not in text for text in shown)
    await _shot(request, p, "anomaly-key-events", full=False)

    async with p.expect_response(lambda r: r.url.endswith(".json")) as answer:
        await p.click("a:text-is('As JSON')")
    data = json.loads(await (await answer.value).text())
    assert data["anomaly"]["anomaly_key"] == API_KEY and data["anomaly"]["regressed"] is True
    assert len(data["history"]["7d"]) == 168 and data["timeline"][-1]["kind"] == "first_seen"


async def test_phone_width_reads_without_sideways_scrolling(
    browser: Any, demo: Demo, request: pytest.FixtureRequest
) -> None:
    context = await browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = Page(await context.new_page(), demo.url)
    try:
        await page.sign_in(demo.token)
        await page.page.wait_for_url("**/projects/demo")
        await page.no_sideways_scroll()
        assert await page.page.locator("table.cards td.name").first.is_visible()
        await _shot(request, page.page, "project-phone")
        for path in (f"/projects/demo/anomalies/{API_KEY}", "/projects/demo?level=all&window=30d",
                     "/projects/demo?q=prod", "/signin"):  # fmt: skip
            await page.page.goto(demo.url + path)
            await page.no_sideways_scroll()
            if "anomalies" in path:
                await _shot(request, page.page, "anomaly-phone")
        assert page.errors == []
    finally:
        await context.close()


async def test_a_read_only_token_reads_and_the_session_cannot_write(page: Page, demo: Demo) -> None:
    p = page.page
    await page.sign_in(demo.viewer)
    await p.wait_for_url("**/projects/demo")
    assert await p.locator("table.cards tbody tr").count() == 3
    # the session's cookie grants the dashboard's reads only: the API wants its header
    status = await p.evaluate(
        """fetch('/v1/projects/demo/occurrences', {method: 'POST',
             headers: {'Content-Type': 'application/json'},
             body: JSON.stringify({signature: {alertname: 'FromThePage'}})}).then(r => r.status)"""
    )
    assert status == 401
    page.errors.clear()  # the browser logs that 401: expected
    async with httpx.AsyncClient(
        base_url=demo.url, headers={"Authorization": f"Bearer {demo.viewer}"}
    ) as http:
        refused = await http.post(
            "/v1/projects/demo/occurrences", json={"signature": {"alertname": "X"}}
        )
        assert refused.status_code == 403 and refused.json()["detail"] == "this token is read-only"
        fixed = await http.post(f"/v1/projects/demo/anomalies/{API_KEY}/fix",
                                json={"description": "sneaky"})  # fmt: skip
        assert fixed.status_code == 403
        assert (await http.get("/v1/projects/demo/anomalies")).status_code == 200
        assert (await http.get("/v1/projects/demo/anomalies", params={"q": "frompage"})).json()[
            "anomalies"
        ] == []


async def test_another_projects_token_sees_nothing_of_this_one(page: Page, demo: Demo) -> None:
    p = page.page
    await page.sign_in(demo.other)
    await p.wait_for_url("**/projects/team-b")
    assert await p.locator("table.cards td.name a").all_inner_texts() == []  # not chronic
    await p.goto(demo.url + "/projects/team-b?level=all")
    assert await p.locator("table.cards td.name a").all_inner_texts() == ["TheirSecretAlert"]
    await p.goto(demo.url + "/projects/team-b?q=crash")
    assert await p.locator("table.cards tbody tr").count() == 0
    for path in ("/projects/demo", f"/projects/demo/anomalies/{API_KEY}",
                 f"/projects/demo/anomalies/{API_KEY}.json", "/projects/demo?q=crash"):  # fmt: skip
        response = await p.goto(demo.url + path)
        assert response is not None and response.status == 403, path
        text = await p.locator("body").inner_text()
        assert "PodCrashLoopBackOff" not in text and "OOMKilled" not in text
        assert "this session's token is for project 'team-b'" in text
    page.errors.clear()  # the browser logs each 403 as a failed resource: expected here


async def test_signing_out_forgets_the_token(page: Page, demo: Demo) -> None:
    p = page.page
    await page.sign_in(demo.token)
    await p.wait_for_url("**/projects/demo")
    (cookie,) = await p.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert demo.token not in p.url  # never in a URL
    assert await p.evaluate("document.cookie") == ""  # no script can read it
    await p.click("button:text-is('Sign out')")
    await p.wait_for_url("**/signin?out=1")
    assert "Signed out" in await p.locator(".notice").inner_text()
    assert await p.context.cookies() == []
    await p.goto(demo.url + "/projects/demo")
    assert "/signin" in p.url and "next=" in p.url
    await p.fill("#token", "act_0123456789abcdef_" + "x" * 32)
    await p.click("button.primary")
    assert "not one this service knows" in await p.locator(".error").inner_text()
    page.errors.clear()  # the refused sign-in answers 401: expected
    await p.fill("#token", demo.token)
    await p.click("button.primary")
    await p.wait_for_url("**/projects/demo")  # back where it was asked for


async def test_the_page_refreshes_itself_without_a_reload(page: Page, demo: Demo) -> None:
    p = page.page
    await page.sign_in(demo.token)
    await p.wait_for_url("**/projects/demo")
    await p.evaluate("window.stillHere = true")
    fresh = p.get_by_role("link", name="FreshStorm", exact=True)
    assert await fresh.count() == 0
    async with httpx.AsyncClient(
        base_url=demo.url, headers={"Authorization": f"Bearer {demo.token}"}
    ) as http:
        batch = {"occurrences": [{"signature": {"alertname": "FreshStorm"}}] * 3}
        assert (await http.post("/v1/projects/demo/occurrences/batch", json=batch)).is_success
    await p.click("#refresh-now")
    await fresh.wait_for()
    assert await p.evaluate("window.stillHere") is True  # the same page, updated in place
    assert (await p.locator("#refresh-status").inner_text()).startswith("Updated")


async def test_a_link_from_another_site_arrives_signed_in(page: Page, demo: Demo) -> None:
    """A notice's link, followed from a chat app: the SameSite=Strict cookie is not sent with
    that navigation; the page loads itself again from the dashboard, and then it is."""
    target = f"{demo.url}/projects/demo/anomalies/{API_KEY}"

    class Chat(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f'<a id="go" href="{target}">PodCrashLoopBackOff is chronic</a>'.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    chat = ThreadingHTTPServer(("127.0.0.1", 0), Chat)
    threading.Thread(target=chat.serve_forever, daemon=True).start()
    try:
        await page.sign_in(demo.token)
        await page.page.wait_for_url("**/projects/demo")
        # "localhost" is another site than "127.0.0.1", where the dashboard is
        await page.page.goto(f"http://localhost:{chat.server_address[1]}/")
        await page.page.click("#go")
        await page.page.wait_for_url(target)
        await page.page.get_by_role("heading", name="PodCrashLoopBackOff", exact=True).wait_for()
    finally:
        chat.shutdown()
        chat.server_close()


async def test_forms_refuse_other_origins_and_the_cookie_is_strict(demo: Demo) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    async with httpx.AsyncClient(base_url=demo.url) as http:
        foreign = await http.post(
            "/signin",
            content=f"token={demo.token}",
            headers={**form, "Origin": "https://evil.example"},
        )
        assert foreign.status_code == 403 and "set-cookie" not in foreign.headers
        cross_site = await http.post(
            "/signin",
            content=f"token={demo.token}",
            headers={**form, "Sec-Fetch-Site": "cross-site"},
        )
        assert cross_site.status_code == 403
        mine = await http.post(
            "/signin", content=f"token={demo.token}", headers={**form, "Origin": demo.url}
        )
        assert mine.status_code == 303 and mine.headers["location"] == "/projects/demo"
        cookie = mine.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        assert "secure" not in cookie  # plain HTTP here; Secure when served over TLS
        http.cookies.set("ac_session", demo.token)
        page = await http.get("/projects/demo")
        assert page.status_code == 200
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        assert float(page.headers["server-timing"].split("dur=")[1].split(";")[0]) > 0
        elsewhere = await http.post(
            "/signin", content=f"token={demo.token}&next=https://evil.example/x", headers=form
        )
        assert elsewhere.headers["location"] == "/projects/demo"  # no open redirect


async def test_the_api_docs_work_offline(page: Page, demo: Demo) -> None:
    p = page.page
    elsewhere: list[str] = []

    async def only_here(route: Any) -> None:
        if route.request.url.startswith(demo.url):
            await route.continue_()
        else:  # as on a machine without internet
            elsewhere.append(route.request.url)
            await route.abort()

    await p.route("**/*", only_here)
    await p.goto(demo.url + "/docs")
    listed = ".opblock-summary-path[data-path='/v1/projects/{project}/anomalies']"
    await p.locator(listed).first.wait_for()
    assert await p.locator(".opblock").count() >= 15
    assert elsewhere == []


async def test_a_refresh_keeps_what_the_viewer_changed_and_retries_after_an_error(
    page: Page, demo: Demo
) -> None:
    """Tried as a new user would: each refresh unticked the timeline's filter, closed the
    charts' numbers and lost the focus; one failed refresh stopped the refreshing for good."""
    p = page.page
    await page.sign_in(demo.token)
    await p.wait_for_url("**/projects/demo")
    await p.goto(f"{demo.url}/projects/demo/anomalies/{API_KEY}")
    await p.check("#key-events")
    await p.click("#week-numbers summary")
    await p.focus("#key-events")
    failed = {"done": False}

    async def once_unavailable(route: Any) -> None:
        if route.request.resource_type == "fetch" and not failed["done"]:
            failed["done"] = True
            await route.fulfill(status=503, body="the store cannot be reached")
        else:
            await route.continue_()

    await p.route(f"**/anomalies/{API_KEY}", once_unavailable)
    await p.click("#refresh-now")
    await p.locator("#refresh-status", has_text="retrying").wait_for()
    assert await p.is_checked("#auto-refresh")  # still on: it will try again
    page.errors.clear()  # the browser logs the 503: expected
    await p.focus("#key-events")
    # as the timer does it: the focus stays where the viewer left it
    await p.evaluate("document.getElementById('refresh-now').dispatchEvent(new Event('click'))")
    await p.locator("#refresh-status", has_text="Updated").wait_for()
    assert await p.is_checked("#key-events")
    assert await p.locator("#week-numbers").get_attribute("open") is not None
    assert await p.evaluate("document.activeElement.id") == "key-events"
    assert await p.locator("ol.timeline li:visible", has_text="repair").count() == 0


async def test_verdicts_markers_and_the_missing_fix_are_shown(page: Page, demo: Demo) -> None:
    p = page.page
    await page.sign_in(demo.token)
    await p.wait_for_url("**/projects/demo")
    await p.goto(f"{demo.url}/projects/demo/anomalies/{API_KEY}")
    skip = p.locator(".verdict.skip")
    assert await skip.is_visible()
    assert await skip.inner_text() == "skip: fails too often, by outcome"  # (not by reports)
    attempts = p.locator("table.attempts tbody tr")  # the latest, each with its verdict
    assert await attempts.count() == 10
    assert await attempts.locator(".outcome.failed").count() > 0
    assert await attempts.locator(".outcome.succeeded").count() > 0
    box = await skip.bounding_box()
    assert box is not None and box["x"] > 0  # on the page (it once hid as the skip link did)
    assert await p.locator("svg.bars line.marker.fix").count() == 2  # the fix on both charts
    assert await p.locator("svg.bars line.marker.regressed").count() == 2
    await p.goto(f"{demo.url}/projects/demo/anomalies/HTTP5xxRate")  # by name: redirected
    assert "/anomalies/" in p.url and "HTTP5xxRate" not in p.url
    assert "No permanent fix recorded" in await p.locator(".callout.missing").inner_text()
    untried = p.locator("table.cards tr", has_text="never tried")
    assert "–" in await untried.first.locator("td[data-label='Rate']").inner_text()


async def test_wrong_page_parameters_get_a_page_that_says_so(demo: Demo) -> None:
    async with httpx.AsyncClient(base_url=demo.url) as http:
        http.cookies.set("ac_session", demo.token)
        for query in ("window=2h", "level=LOUD", "limit=0", "limit=x", "limit=%C2%B2",
                      "q=" + "x" * 600,
                      "q=" + "+".join("abcdefghi")):  # fmt: skip
            r = await http.get(f"/projects/demo?{query}")
            assert r.status_code == 400, query
            assert r.headers["content-type"].startswith("text/html"), query
            assert "default-src 'self'" in r.headers["content-security-policy"]
        nine = await http.get("/projects/demo", params={"q": "a b c d e f g h i"})
        assert "at most 8 allowed" in nine.text and 'value="a b c d e f g h i"' in nine.text
        # the JSON link answers as JSON, a name too
        gone = await http.get("/projects/demo/anomalies/NoSuchAlert.json")
        assert gone.status_code == 404 and "no anomaly" in gone.json()["detail"]
        several = await http.get("/projects/demo/anomalies/PodCrashLoopBackOff.json")
        assert several.status_code == 300 and len(several.json()["matches"]) == 3
        one = await http.get("/projects/demo/anomalies/HTTP5xxRate.json")
        assert one.json()["anomaly"]["signature"]["alertname"] == "HTTP5xxRate"
        quiet = await http.get("/projects/demo?q=%00%01")  # nothing to look for: no search
        assert quiet.status_code == 200 and "Chronic anomalies" in quiet.text
        assert (await http.head("/projects/demo")).status_code == 200
        assert (await http.head(f"/projects/demo/anomalies/{API_KEY}")).status_code == 200
        # another project's session learns nothing, whatever the parameters
        http.cookies.set("ac_session", demo.other)
        assert (await http.get("/projects/demo?window=2h")).status_code == 403


async def test_the_session_cookie_and_where_a_sign_in_returns(demo: Demo) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    async with httpx.AsyncClient(base_url=demo.url) as http:
        writer = await http.post("/signin", content=f"token={demo.token}", headers=form)
        assert "max-age" not in writer.headers["set-cookie"].lower()  # until the browser closes
        viewer = await http.post("/signin", content=f"token={demo.viewer}", headers=form)
        assert "max-age=2592000" in viewer.headers["set-cookie"].lower()  # 30 days
        for back in ("/projects/demo/../../x", "//evil.example/projects/demo", "/projects/x\\y"):
            r = await http.post("/signin", content=f"token={demo.viewer}&next={back}", headers=form)
            assert r.headers["location"] == "/projects/demo", back
        kept = await http.post(
            "/signin",
            content=f"token={demo.viewer}&next=/projects/demo/anomalies/{API_KEY}",
            headers=form,
        )
        assert kept.headers["location"] == f"/projects/demo/anomalies/{API_KEY}"
        # a link from another site bounces to the same page, named relative to the site
        http.cookies.clear()  # (the browser holds one, but does not send it cross-site)
        bounce = await http.get(
            "/projects/demo?q=a%2520b",
            headers={"Sec-Fetch-Site": "cross-site", "Host": "evil.example"},
        )
        assert 'content="0;url=/projects/demo?q=a%2520b"' in bounce.text
        docs = await http.get("/docs")
        assert docs.headers["x-frame-options"] == "DENY"


async def test_the_tiles_count_every_chronic_anomaly(tmp_path: Path) -> None:
    """Found by a review: the level tiles counted the first 500 chronic anomalies only."""
    store = f"sqlite:///{tmp_path / 'busy.db'}"
    async with AnomalyCounter.from_url(store, "busy") as counter:
        await counter.record_many(
            [{"signature": {"alertname": f"Alert{i}"}} for i in range(600) for _ in range(3)]
        )
        await counter.record_many([{"signature": {"alertname": "Loud"}}] * 10)
    settings = Settings(store_url=store)
    with ServiceServer(settings) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            http.cookies.set("ac_session", make_token(settings, "busy", read_only=True))
            page = (await http.get("/projects/busy")).text
    tiles = {what: n for n, what in re.findall(r'"n">(\d+)</div><div class="what">([^<]+)<', page)}
    assert tiles["at REPEAT"] == "600" and tiles["at PERMANENT_FIX"] == "1", tiles


async def test_behind_a_tls_proxy_the_forms_work_and_the_cookie_is_secure(tmp_path: Path) -> None:
    """Found by a review: behind a proxy that ends TLS, the browser's Origin (https, the public
    host) never matched the plain-HTTP request the service saw: signing in was refused, and
    the cookie would not have been Secure."""
    settings = Settings(store_url=f"sqlite:///{tmp_path / 'p.db'}",
                        public_url="https://ac.example.org/")  # fmt: skip
    token = make_token(settings, "team-a", read_only=True)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    with ServiceServer(settings) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            proxied = {**form, "Host": "ac.example.org", "Origin": "https://ac.example.org"}
            signed = await http.post("/signin", content=f"token={token}", headers=proxied)
            assert signed.status_code == 303, signed.text
            cookie = signed.headers["set-cookie"].lower()
            assert cookie.startswith("__host-ac_session=") and "secure" in cookie
            direct = await http.post("/signin", content=f"token={token}", headers=form)
            assert "secure" not in direct.headers["set-cookie"].lower()  # plain HTTP, as seen
            foreign = {**form, "Host": "ac.example.org", "Origin": "https://evil.example"}
            refused = await http.post("/signin", content=f"token={token}", headers=foreign)
            assert refused.status_code == 403


async def test_dead_letters_are_shown_and_sent_again_from_the_page(
    browser: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A project whose webhook refused its notices for good sees them on its page, and a
    writer sends them again with one button; a viewer sees them without the button."""
    chat = ChatServer()
    chat.plan = [410, 410]  # gone: dead at once, both
    settings = Settings(
        store_url=f"sqlite:///{tmp_path}/notices.db",
        project_channels={"demo": (WebhookConfig(f"{chat.url}/hook"),)},
        notify_backoff=0.01,
    )
    try:
        with ServiceServer(settings) as server:
            token = make_token(settings, "demo")
            async with httpx.AsyncClient(
                base_url=server.url, headers={"Authorization": f"Bearer {token}"}
            ) as http:
                for name in ("DiskFull", "PodCrashLoopBackOff"):
                    for _ in range(3):
                        signature = {"alertname": name, "service": "api", "namespace": "prod"}
                        r = await http.post(
                            "/v1/projects/demo/occurrences", json={"signature": signature}
                        )
                        assert r.status_code == 200

                async def dead() -> bool:
                    r = await http.get("/v1/projects/demo/notices/dead")
                    return len(r.json()["letters"]) == 2

                assert await eventually(dead)
            for viewport, name in ((DESKTOP, "notices"), (PHONE, "notices-phone")):
                context = await browser.new_context(viewport=viewport, timezone_id="Asia/Tokyo")
                page = Page(await context.new_page(), server.url)
                try:
                    await page.sign_in(make_token(settings, "demo", read_only=True))
                    await page.page.wait_for_url("**/projects/demo")
                    panel = page.page.locator("#notices")
                    assert "2 dead letters" in await panel.inner_text()
                    assert await panel.locator("tbody tr").count() == 2
                    assert "HTTP 410" in await panel.inner_text()
                    assert await panel.locator("button").count() == 0  # a viewer: no button
                    await page.no_sideways_scroll()
                    await panel.scroll_into_view_if_needed()
                    await _shot(request, page.page, name, full=True)
                    assert page.errors == []
                finally:
                    await context.close()
            # the form's server side: another site's post, and a viewer's, change nothing
            async with httpx.AsyncClient(base_url=server.url) as http:
                retry = "/projects/demo/notices/retry"
                http.cookies.set("ac_session", token)
                foreign = await http.post(retry, headers={"Origin": "https://evil.example"})
                assert foreign.status_code == 403
                http.cookies.set("ac_session", make_token(settings, "demo", read_only=True))
                viewer = await http.post(retry, headers={"Origin": server.url})
                assert viewer.status_code == 403 and "read-only" in viewer.text
            assert len(chat.received) == 2  # nothing was sent again
            context = await browser.new_context(viewport=DESKTOP)
            page = Page(await context.new_page(), server.url)
            try:
                await page.sign_in(token)
                await page.page.wait_for_url("**/projects/demo")
                await page.page.click("#notices button")
                await page.page.wait_for_url("**/projects/demo#notices")
                delivered = await eventually(lambda: _arrived(chat, 4))
                assert delivered
                await page.page.reload()
                assert "0 dead letters" in await page.page.locator("#notices").inner_text()
                assert page.errors == []
            finally:
                await context.close()
    finally:
        chat.close()
    again = [r for r in chat.received if r.status == 200]
    assert len(again) == 2  # each sent again, once, with its own notice id
    assert {r.headers["Idempotency-Key"] for r in again} == {
        r.headers["Idempotency-Key"] for r in chat.received if r.status == 410
    }


async def _arrived(chat: ChatServer, n: int) -> bool:
    return len(chat.received) >= n


async def test_flapping_anomalies_are_shown(
    browser: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """An alert that fires and resolves every five minutes, through the receiver: the project
    page counts it in a tile and lists it under "Flapping now"; its page says so, and its
    timeline tells when it started."""
    settings = Settings(store_url=f"sqlite:///{tmp_path}/flapping.db")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    labels = {"alertname": "NodeNotReady", "service": "kubelet", "namespace": "infra"}

    def alert(status: str, starts: datetime, ends: datetime | None = None) -> dict[str, Any]:
        iso = "%Y-%m-%dT%H:%M:%SZ"
        return {
            "status": status, "labels": labels, "startsAt": starts.strftime(iso),
            "endsAt": ends.strftime(iso) if ends else "0001-01-01T00:00:00Z",
            "fingerprint": "4f1d2c", "annotations": {},
        }  # fmt: skip

    with ServiceServer(settings) as server:
        token = make_token(settings, "demo")
        async with httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {token}"}
        ) as http:
            for k in range(9, 0, -1):  # every five minutes for the last 45 minutes
                starts = now - timedelta(minutes=5 * k)
                ends = starts + timedelta(minutes=2)
                for body in (alert("firing", starts), alert("resolved", starts, ends)):
                    payload = {"version": "4", "status": body["status"], "alerts": [body]}
                    r = await http.post("/v1/projects/demo/alertmanager", json=payload)
                    assert r.status_code == 200, r.text
        for viewport, name in ((DESKTOP, "flapping"), (PHONE, "flapping-phone")):
            context = await browser.new_context(viewport=viewport, timezone_id="Asia/Tokyo")
            page = Page(await context.new_page(), server.url)
            try:
                await page.sign_in(token)
                await page.page.wait_for_url("**/projects/demo")
                assert (await page.page.locator(".tile.flapping .n").inner_text()).strip() == "1"
                panel = page.page.locator("#flapping")
                assert await panel.locator("tbody tr").count() == 1
                assert "NodeNotReady" in await panel.inner_text()
                await page.no_sideways_scroll()
                await panel.scroll_into_view_if_needed()
                await _shot(request, page.page, name, full=True)
                await panel.locator("a").first.click()
                await page.page.wait_for_url("**/anomalies/**")
                tile = page.page.locator(".tile.flapping")
                assert "flapping" in await tile.inner_text()
                story = await page.page.locator(".story").inner_text()
                assert "started flapping" in story
                await page.no_sideways_scroll()
                await _shot(request, page.page, f"{name}-anomaly", full=False)
                assert page.errors == []
            finally:
                await context.close()
