"""Sends notices in the background: ingestion only puts them on a queue.

Exactly one occurrence reports each crossing (the store decides it atomically), so however many
service processes run, one of them hears of it and sends its notice. Each channel gets its own
retries, with exponential backoff and jitter; a failure is logged and counted, never raised at
the ingesting caller. The queue is bounded: past it, a notice is dropped, logged and counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import httpx
import structlog

from ..backoff import pauses
from ..errors import AnomalyCounterError
from ..model import AnomalyFrequency
from .channels import Channel, channels_for
from .notice import ESCALATION, REGRESSION, Notice

if TYPE_CHECKING:
    from ..counter import AnomalyCounter
    from ..settings import Settings

logger = structlog.get_logger("anomaly_counter.notify")

_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_MAX_RETRY_AFTER = 60.0


class Outcomes(Protocol):
    def notice_sent(self, channel: str) -> None: ...

    def notice_failed(self, channel: str) -> None: ...


class _NoOutcomes:
    def notice_sent(self, channel: str) -> None:
        pass

    def notice_failed(self, channel: str) -> None:
        pass


@dataclass(frozen=True, slots=True)
class _Job:
    project: str
    frequency: AnomalyFrequency
    kind: str


class Dispatcher:
    """Notices of the crossings and regressions that recorded occurrences report."""

    def __init__(
        self,
        settings: Settings,
        counter_for: Callable[[str], AnomalyCounter],
        outcomes: Outcomes | None = None,
        *,
        workers: int = 4,
        queue_size: int = 10_000,
    ) -> None:
        self._settings = settings
        self._channels = {p: channels_for(settings, p) for p in settings.project_channels}
        self._counter_for = counter_for
        self._outcomes = outcomes or _NoOutcomes()
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(queue_size)
        self._workers_wanted = workers
        self._workers: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None

    def watch(self, project: str, frequencies: list[AnomalyFrequency]) -> None:
        """Queue a notice for each occurrence that crossed into a level or regressed."""
        if not self._channels.get(project):
            return
        for frequency in frequencies:
            kinds = [ESCALATION] if frequency.escalated_to else []
            if frequency.newly_regressed:
                kinds.append(REGRESSION)
            for kind in kinds:
                try:
                    self._queue.put_nowait(_Job(project, frequency, kind))
                except asyncio.QueueFull:
                    logger.error(
                        "notice_dropped", project=project, anomaly_key=frequency.anomaly_key
                    )
                    for channel in self._channels[project]:
                        self._outcomes.notice_failed(channel.name)

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self._settings.notify_timeout)
        self._workers = [asyncio.create_task(self._work()) for _ in range(self._workers_wanted)]

    async def stop(self, grace: float = 5.0) -> None:
        """Send what is queued (for up to ``grace`` seconds), then stop."""
        try:
            await asyncio.wait_for(self._queue.join(), grace)
        except TimeoutError:
            logger.error("notices_unsent_at_stop", queued=self._queue.qsize())
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                notice = await self._notice(job)
                await asyncio.gather(
                    *(self._deliver(c, notice) for c in self._channels[job.project])
                )
            except Exception:  # a bug must not stop the notices that follow
                logger.exception("notice_failed", project=job.project)
            finally:
                self._queue.task_done()

    async def _notice(self, job: _Job) -> Notice:
        counter = self._counter_for(job.project)
        key = job.frequency.anomaly_key
        try:
            repairs = await counter.get_all_repair_stats(key)
            candidates = list(dict.fromkeys([*repairs, *self._settings.repair_actions]))
            ranked = await counter.recommend_actions(key, candidates)
        except AnomalyCounterError as exc:  # the store is down: send what is known
            logger.warning("notice_without_repairs", project=job.project, error=str(exc))
            repairs, ranked = {}, []
        return Notice.of(
            job.kind, job.project, job.frequency, repairs, ranked, self._settings.base_url
        )

    async def _deliver(self, channel: Channel, notice: Notice) -> None:
        assert self._client is not None, "start() first"
        request = channel.request(notice)
        waits = pauses(self._settings.notify_backoff)
        attempts = self._settings.notify_attempts
        for attempt in range(1, attempts + 1):
            wait: float | None = None
            retry = True
            try:
                response = await self._client.post(
                    request.url, content=request.body, headers=request.headers
                )
                if response.is_success:
                    self._outcomes.notice_sent(channel.name)
                    logger.info(
                        "notice_sent",
                        channel=channel.name,
                        project=notice.project,
                        anomaly_key=notice.anomaly_key,
                        kind=notice.kind,
                    )
                    await self._tell(notice, channel.name, "sent")
                    return
                problem = f"HTTP {response.status_code}"
                retry = response.status_code in _RETRY_STATUSES  # else it will stay wrong
                wait = _retry_after(response)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if not retry or attempt == attempts:
                break
            await asyncio.sleep(wait if wait is not None else next(waits))  # (Retry-After first)
        self._outcomes.notice_failed(channel.name)
        logger.error(
            "notice_failed",
            channel=channel.name,
            project=notice.project,
            anomaly_key=notice.anomaly_key,
            error=problem,
        )
        await self._tell(notice, channel.name, "failed")

    async def _tell(self, notice: Notice, channel: str, outcome: str) -> None:
        """Put the notice's outcome in the anomaly's timeline (best effort: the notice itself
        is what matters)."""
        try:
            await self._counter_for(notice.project).note_notice(
                notice.anomaly_key, channel, notice.kind, outcome
            )
        except AnomalyCounterError as exc:
            logger.warning("notice_not_in_timeline", project=notice.project, error=str(exc))


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return min(float(response.headers["Retry-After"]), _MAX_RETRY_AFTER)
    except (KeyError, ValueError):
        return None
