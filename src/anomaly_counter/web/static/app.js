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

  async function refresh() {
    if (!live || busy) return;
    busy = true;
    try {
      const response = await fetch(window.location.href, {
        headers: { "Accept": "text/html" }, credentials: "same-origin", cache: "no-store",
      });
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById("live");
      if (!response.ok || response.redirected || !fresh) {
        // signed out, revoked, or the store is away: say so and stop refreshing
        if (status) status.textContent = response.ok ? "Signed out: reload to sign in" :
          "Could not refresh (HTTP " + response.status + ")";
        if (auto) auto.checked = false;
        return;
      }
      live.replaceChildren(...Array.from(fresh.childNodes).map(function (n) {
        return document.importNode(n, true);
      }));
      localTimes(live);
      if (status) status.textContent = "Updated " + clock.format(new Date());
    } catch (error) {
      if (status) status.textContent = "Could not refresh: " + error.message;
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
