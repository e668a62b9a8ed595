// anomaly-counter's dashboard: times in the viewer's zone, and a page that refreshes itself.
// Everything works without this script (times then read in UTC, refresh by reloading).
"use strict";

(function () {
  const thisYear = new Intl.DateTimeFormat(undefined, {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
  });
  const otherYear = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
  });
  // the page says once which zone its times are in (charts and days stay in UTC: they say so)
  const zone = new Intl.DateTimeFormat(undefined, { timeZoneName: "long" })
    .formatToParts(new Date()).find(function (p) { return p.type === "timeZoneName"; });
  document.querySelectorAll("[data-zone]").forEach(function (el) {
    el.textContent = "Times in " + (zone ? zone.value : "your time zone") + "; UTC on hover.";
    el.hidden = false;
  });
  const dayOnly = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
  const year = new Date().getFullYear();
  const clock = new Intl.DateTimeFormat(undefined, {
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  });

  // <time datetime="ISO" title="... UTC">: the text in the viewer's zone, UTC on hover.
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      const when = new Date(el.getAttribute("datetime"));
      if (isNaN(when)) return;
      const format = el.dataset.format === "day" ? dayOnly :
        (when.getFullYear() === year ? thisYear : otherYear);
      el.textContent = format.format(when);
    });
  }

  const live = document.getElementById("live");
  const status = document.getElementById("refresh-status");
  const auto = document.getElementById("auto-refresh");
  const now = document.getElementById("refresh-now");
  const every = 15000;
  let busy = false;

  // What the person has changed on the page (boxes ticked, "Numbers" opened, a list scrolled,
  // the focus): kept across a refresh, which replaces the live part.
  function state() {
    const saved = { checked: {}, open: {}, scroll: {}, focus: null };
    live.querySelectorAll("input[type=checkbox][id]").forEach(function (el) {
      saved.checked[el.id] = el.checked;
    });
    live.querySelectorAll("details[id]").forEach(function (el) { saved.open[el.id] = el.open; });
    live.querySelectorAll("[id]").forEach(function (el) {
      if (el.scrollTop) saved.scroll[el.id] = el.scrollTop;
    });
    if (document.activeElement && live.contains(document.activeElement)) {
      saved.focus = document.activeElement.id || null;
    }
    return saved;
  }

  function restore(saved) {
    Object.entries(saved.checked).forEach(function ([id, value]) {
      const el = document.getElementById(id);
      if (el) el.checked = value;
    });
    Object.entries(saved.open).forEach(function ([id, value]) {
      const el = document.getElementById(id);
      if (el) el.open = value;
    });
    Object.entries(saved.scroll).forEach(function ([id, value]) {
      const el = document.getElementById(id);
      if (el) el.scrollTop = value;
    });
    if (saved.focus) {
      const el = document.getElementById(saved.focus);
      if (el) el.focus({ preventScroll: true });
    }
  }

  async function refresh() {
    if (!live || busy) return;
    busy = true;
    try {
      const response = await fetch(window.location.href, {
        headers: { "Accept": "text/html" }, credentials: "same-origin", cache: "no-store",
      });
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById("live");
      if (response.redirected || response.status === 401 || response.status === 403) {
        // signed out, or the token was revoked: nothing more to refresh
        if (status) status.textContent = "Signed out: reload the page to sign in again";
        if (auto) auto.checked = false;
        return;
      }
      if (!response.ok || !fresh) {
        // the store away for a while, say: keep the page, say so, and try again later
        if (status) status.textContent = "Not refreshed (HTTP " + response.status + "): retrying";
        return;
      }
      const saved = state();
      live.replaceChildren(...Array.from(fresh.childNodes).map(function (n) {
        return document.importNode(n, true);
      }));
      restore(saved);
      localTimes(live);
      if (status) status.textContent = "Updated " + clock.format(new Date());
    } catch (error) {
      if (status) status.textContent = "Not refreshed (" + error.message + "): retrying";
    } finally {
      busy = false;
    }
  }

  if (auto) {
    auto.checked = localStorage.getItem("ac-auto-refresh") !== "off";
    auto.addEventListener("change", function () {
      localStorage.setItem("ac-auto-refresh", auto.checked ? "on" : "off");
    });
    setInterval(function () {
      if (auto.checked && document.visibilityState === "visible") refresh();
    }, every);
  }
  if (now) now.addEventListener("click", refresh);

  // filters apply as soon as they change (their form still has a button without script)
  document.querySelectorAll("select[data-submit]").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });
  document.querySelectorAll("[data-needs-script]").forEach(function (el) { el.hidden = false; });

  localTimes(document);
})();
