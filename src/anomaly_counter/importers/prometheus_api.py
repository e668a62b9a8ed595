"""Prometheus's HTTP API: the raw samples of a selector and the alerting rules, its failures
told as our errors (unreachable, timed out or failing: ``SourceUnavailableError``; not a
Prometheus, redirecting, or refusing the query: ``InvalidInputError``). A sample or series no
Prometheus would send (a NaN or infinite time, a label value that is not a string) is skipped
and counted; an answer whose shape is not Prometheus's is refused whole."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError, SourceUnavailableError
from ..redact import redacted
from .prometheus_episodes import AlertRule, SeriesKey

if TYPE_CHECKING:
    import httpx

# Sample times and ALERTS_FOR_STATE's values (activeAt) are seconds since 1970: beyond this
# (the year 5138) one is not a time, and the times made of it would overflow a datetime.
_LATEST_S = 1e11
_NOT_STRUCTURE = (KeyError, TypeError, ValueError, AttributeError)


class Prometheus:
    """The query API of a Prometheus (or of anything that answers as one)."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        import httpx

        self.shown = redacted(url)
        self.timeout = timeout
        try:
            httpx.URL(url)
        except (httpx.InvalidURL, UnicodeError) as exc:  # (UnicodeError: idna's, as for xn--)
            raise InvalidInputError(f"cannot use {self.shown!r}: {exc}") from None
        self.skipped_series = 0  # malformed, in the answers so far
        self.skipped_samples = 0
        self._http = httpx.AsyncClient(
            base_url=url.rstrip("/") + "/",
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            # Not followed: httpx turns a redirected POST into a GET (which Prometheus
            # answers "no expression found"); the user is told the address instead.
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def samples(
        self, series: str, at_ms: int, length_ms: int
    ) -> dict[SeriesKey, list[tuple[int, float]]]:
        """The raw samples of a selector's series over ``length_ms`` up to ``at_ms``, each
        series's in time order; malformed series and samples skipped (and counted)."""
        query = f"{series}[{length_ms}ms]"
        data = await self._query({"query": query, "time": f"{at_ms // 1000}.{at_ms % 1000:03d}"})
        try:
            if data["resultType"] != "matrix" or not isinstance(data["result"], list):
                raise TypeError(data["resultType"])
            items = list(data["result"])
        except _NOT_STRUCTURE as exc:
            raise InvalidInputError(
                f"{self.shown} answered {query!r} with something Prometheus does not send ({exc!r})"
            ) from None
        found: dict[SeriesKey, list[tuple[int, float]]] = {}
        for item in items:
            key = _series_key(item)
            if key is None:
                self.skipped_series += 1
                continue
            values = item["values"]
            kept = [sample for sample in map(_sample, values) if sample is not None]
            self.skipped_samples += len(values) - len(kept)
            found.setdefault(key, []).extend(kept)
        for kept in found.values():
            kept.sort()
        return found

    async def alert_rules(self) -> list[AlertRule]:
        """The alerting rules it evaluates now ([] when it does not say, or says something odd:
        not every server that answers queries serves rules). Not answering is an error here
        as for a query: one wait for a server that does not answer, not two."""
        response = await self._send("GET", "api/v1/rules", params={"type": "alert"})
        try:
            groups = response.json()["data"]["groups"]
            rules = [
                _rule(rule) for group in groups for rule in group["rules"]
                if rule.get("type") == "alerting"
            ]  # fmt: skip
        except (*_NOT_STRUCTURE, OverflowError):
            return []
        # (one rule wrong: none trusted, as a hold taken from the others may not be its own)
        return [] if None in rules else [rule for rule in rules if rule is not None]

    async def _send(self, method: str, path: str, **request: Any) -> httpx.Response:
        import httpx

        try:
            return await self._http.request(method, path, **request)
        except httpx.TimeoutException:
            raise SourceUnavailableError(
                f"Prometheus at {self.shown} did not answer within {self.timeout:g} s"
            ) from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol, UnicodeError) as exc:
            raise InvalidInputError(f"cannot use {self.shown!r}: {exc}") from None
        except httpx.HTTPError as exc:  # (the connection refused, reset, or unreadable)
            raise SourceUnavailableError(
                f"cannot reach Prometheus at {self.shown}: {exc or type(exc).__name__}"
            ) from None

    async def _query(self, form: dict[str, str]) -> Any:
        response = await self._send("POST", "api/v1/query", data=form)
        if response.is_redirect:
            where = redacted(response.headers.get("location", "?"))
            raise InvalidInputError(
                f"{self.shown} redirected the query (HTTP {response.status_code} to {where}):"
                " give --url as the address Prometheus answers at"
            )
        return self._data(response, form["query"])

    def _data(self, response: httpx.Response, query: str) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("status") not in ("success", "error"):
            if response.status_code >= 500:
                raise SourceUnavailableError(
                    f"{self.shown} answered HTTP {response.status_code} to a query"
                )
            raise InvalidInputError(
                f"{self.shown} is not a Prometheus API: HTTP {response.status_code} to"
                " /api/v1/query, without Prometheus's JSON"
            )
        if body["status"] == "error":
            what = f"{body.get('errorType', 'error')}: {body.get('error', '')}"
            if response.status_code >= 500:  # (not ready, overloaded, timed out)
                raise SourceUnavailableError(f"Prometheus at {self.shown} failed {query!r}: {what}")
            raise InvalidInputError(f"Prometheus at {self.shown} refused {query!r}: {what}")
        if "data" not in body:
            raise InvalidInputError(f"{self.shown} is not a Prometheus API: no data in its answer")
        return body["data"]


def _series_key(item: Any) -> SeriesKey | None:
    """A series's labels, when they are what Prometheus sends: names and values that are
    strings (UTF-8: a fingerprint hashes their bytes), and a list of samples."""
    try:
        metric, values = item["metric"], item["values"]
    except (KeyError, TypeError, IndexError):
        return None
    if not isinstance(metric, dict) or not isinstance(values, list):
        return None
    labels = [(k, v) for k, v in metric.items() if k not in ("__name__", "alertstate")]
    for name, value in labels:
        if not (isinstance(name, str) and isinstance(value, str)):
            return None
        try:
            name.encode(), value.encode()
        except UnicodeEncodeError:  # (a lone surrogate, as "\ud800" in JSON)
            return None
    return tuple(sorted(labels))


def _sample(pair: Any) -> tuple[int, float] | None:
    """``[time, "value"]`` as ``(ms, value)``: None when either is not a finite number of
    seconds since 1970 (NaN and the infinities are not; every value the backfill reads is 1
    or activeAt)."""
    try:
        seconds, value = pair
        seconds, value = float(seconds), float(value)
    except (TypeError, ValueError):
        return None
    if not (0 <= seconds < _LATEST_S and 0 <= value < _LATEST_S):  # (False for NaN)
        return None
    return round(seconds * 1000), value


def _rule(rule: Any) -> AlertRule | None:
    """An alerting rule of the rules API (None: one no Prometheus would list)."""
    name, labels, duration = rule["name"], rule.get("labels") or {}, rule["duration"]
    if (
        not isinstance(name, str)
        or not isinstance(labels, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
        or isinstance(duration, bool)
        or not isinstance(duration, int | float)
        or not 0 <= duration < _LATEST_S
    ):
        return None
    return AlertRule(name, labels, round(duration * 1000))
