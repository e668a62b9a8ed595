"""Prometheus's HTTP API: the raw samples of a selector and the alerting rules, its failures
told as our errors (unreachable, timed out or failing: ``SourceUnavailableError``; not a
Prometheus, or refusing the query: ``InvalidInputError``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError, SourceUnavailableError
from ..redact import redacted
from .prometheus_episodes import AlertRule, SeriesKey

if TYPE_CHECKING:
    import httpx


class Prometheus:
    """The query API of a Prometheus (or of anything that answers as one)."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        import httpx

        self.shown = redacted(url)
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=url.rstrip("/") + "/",
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            follow_redirects=True,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def samples(
        self, series: str, at_ms: int, length_ms: int
    ) -> dict[SeriesKey, list[tuple[int, float]]]:
        """The raw samples of a selector's series over ``length_ms`` up to ``at_ms``."""
        query = f"{series}[{length_ms}ms]"
        data = await self._query({"query": query, "time": f"{at_ms // 1000}.{at_ms % 1000:03d}"})
        try:
            if data["resultType"] != "matrix":
                raise TypeError(data["resultType"])
            found: dict[SeriesKey, list[tuple[int, float]]] = {}
            for item in data["result"]:
                metric: dict[str, str] = item["metric"]
                key = tuple(
                    sorted((k, v) for k, v in metric.items() if k not in ("__name__", "alertstate"))
                )
                found[key] = [(round(float(t) * 1000), float(v)) for t, v in item["values"]]
            return found
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidInputError(
                f"{self.shown} answered {query!r} with something Prometheus does not send ({exc!r})"
            ) from None

    async def alert_rules(self) -> list[AlertRule]:
        """The alerting rules it evaluates now ([] when it does not say: not every server
        that answers queries serves rules)."""
        import httpx

        try:
            response = await self._http.get("api/v1/rules", params={"type": "alert"})
            groups = response.json()["data"]["groups"]
            return [
                AlertRule(rule["name"], rule.get("labels") or {}, round(rule["duration"] * 1000))
                for group in groups
                for rule in group["rules"]
                if rule.get("type") == "alerting"
            ]
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
            # (no rules API, or an odd one: the samples alone tell the starts)
            return []

    async def _query(self, form: dict[str, str]) -> Any:
        import httpx

        try:
            response = await self._http.post("api/v1/query", data=form)
        except httpx.TimeoutException:
            raise SourceUnavailableError(
                f"Prometheus at {self.shown} did not answer within {self.timeout:g} s"
            ) from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise InvalidInputError(f"cannot use {self.shown}: {exc}") from None
        except httpx.TransportError as exc:
            raise SourceUnavailableError(
                f"cannot reach Prometheus at {self.shown}: {exc or type(exc).__name__}"
            ) from None
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
