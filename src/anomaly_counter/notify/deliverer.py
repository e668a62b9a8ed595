"""Sends the notices of the outbox (anomaly_counter.outbox), from any number of processes.

The store writes each notice in the same atomic step as the occurrence that causes it; this
module only delivers. Every service process runs a deliverer. For each project with channels
and each of its outbox partitions, one deliverer at a time holds a lease (renewed while it
lives; a process that dies loses it after ``notify_lease`` and another takes over). The holder
sends each channel its notices in order, one at a time, retrying with backoff (``Retry-After``
first) until the channel takes it; a notice refused for good (4xx other than 408/425/429), or
still failing after ``notify_dead_after`` (or ``notify_attempts`` tries), becomes a dead letter,
kept for a person to see and retry. A notice's idempotency key is the same on every try and
from every process, so a receiver can drop the duplicate that a crash between sending and
settling may cause; nothing else sends a notice twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

import httpx
import structlog

from ..backoff import pauses
from ..errors import AnomalyCounterError
from ..model import AnomalyFrequency
from ..outbox import DeadLetter, Lease, OutboxEntry, OutboxStats, Settlement
from ..stores.base import Store
from .channels import Channel, channels_for
from .notice import Notice

if TYPE_CHECKING:
    from ..counter import AnomalyCounter
    from ..settings import Settings

logger = structlog.get_logger("anomaly_counter.notify")

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_READ = 100  # entries read from a partition at a time


class Outcomes(Protocol):
    def notice_sent(self, channel: str) -> None: ...

    def notice_failed(self, channel: str) -> None: ...

    def notice_dead(self, channel: str) -> None: ...

    def outbox(self, project: str, stats: OutboxStats) -> None: ...


class _NoOutcomes:
    def notice_sent(self, channel: str) -> None:
        pass

    def notice_failed(self, channel: str) -> None:
        pass

    def notice_dead(self, channel: str) -> None:
        pass

    def outbox(self, project: str, stats: OutboxStats) -> None:
        pass


class _LeaseLost(Exception):
    """The partition's lease may have passed to another deliverer: stop sending from it."""


class _Stopping(Exception):
    """The deliverer is stopping: no new try."""


class Deliverer:
    """The notices of every project with channels, from this process."""

    def __init__(
        self,
        settings: Settings,
        counter_for: Callable[[str], AnomalyCounter],
        outcomes: Outcomes | None = None,
    ) -> None:
        self._settings = settings
        self._channels = {
            project: channels
            for project in settings.project_channels
            if (channels := channels_for(settings, project))
        }
        self._counter_for = counter_for
        self._outcomes = outcomes or _NoOutcomes()
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._lease_ms = int(settings.notify_lease * 1000)
        self._wake: dict[str, asyncio.Event] = {}
        self._held_until: dict[tuple[str, int], float] = {}  # (project, partition): monotonic
        self._workers: dict[tuple[str, int, str], asyncio.Task[None]] = {}  # (project,
        # partition, channel): each channel's sender
        self._loops: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self._stopping = asyncio.Event()

    def _store(self, project: str) -> Store:
        return self._counter_for(project).store

    def wake(self, project: str, frequencies: list[AnomalyFrequency]) -> None:
        """Look at a project's outbox now: these writes of this process put notices in it."""
        if any(f.escalated_to or f.newly_regressed for f in frequencies):
            self.wake_project(project)

    def wake_project(self, project: str) -> None:
        """Look at a project's outbox now (a write of this process put notices in it)."""
        event = self._wake.get(project)
        if event is not None:
            event.set()

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self._settings.notify_timeout)
        for project in self._channels:
            self._wake[project] = asyncio.Event()
            self._loops.append(asyncio.create_task(self._watch(project)))

    async def stop(self, grace: float = 5.0) -> None:
        """Stop: no new try starts, a notice being sent is settled (for up to ``grace``
        seconds), the leases are given back, and what is left stays in the outbox for the next
        deliverer. A partition whose send had to be cut keeps its lease until it runs out, so
        that nobody sends that notice again at once."""
        self._stopping.set()
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        workers = dict(self._workers)
        cut: set[tuple[str, int]] = set()
        if workers:
            _, pending = await asyncio.wait(workers.values(), timeout=grace)
            for (project, partition, _), worker in workers.items():
                if worker in pending:
                    worker.cancel()
                    cut.add((project, partition))
            await asyncio.gather(*workers.values(), return_exceptions=True)
        for project, partition in set(self._held_until) - cut:
            with contextlib.suppress(AnomalyCounterError):  # (else it expires by itself)
                await self._store(project).outbox_release(project, partition, self.holder)
        if self._client is not None:
            await self._client.aclose()

    # -- leases --------------------------------------------------------------------------------

    async def _watch(self, project: str) -> None:
        """Hold what leases of the project's partitions can be held, and keep a sender on each
        partition with notices, until stopped."""
        wake = self._wake[project]
        looked = 0.0
        while True:
            try:
                await self._look(project)
                if time.monotonic() - looked >= 5 * self._settings.notify_poll:
                    looked = time.monotonic()
                    await self._report(project)
            except Exception:  # a bug must not stop the notices that follow
                logger.exception("outbox_watch_failed", project=project)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self._settings.notify_poll)
            wake.clear()

    async def _look(self, project: str) -> None:
        store = self._store(project)
        partitions = range(store.outbox_partitions)
        began = time.monotonic()
        try:  # (all of the project's partitions in one round trip)
            leases = await store.outbox_lease(project, partitions, self.holder, self._lease_ms)
        except AnomalyCounterError as exc:
            logger.warning("outbox_unreachable", project=project, error=str(exc))
            return
        for partition, lease in zip(partitions, leases, strict=True):
            here = (project, partition)
            if lease == Lease.OTHERS:
                self._held_until.pop(here, None)
                continue
            self._renewed(project, partition, began)
            if lease == Lease.IDLE:
                continue
            for channel in self._channels[project]:  # a sender for each channel, apart
                sender = (project, partition, channel.ident)
                worker = self._workers.get(sender)
                if worker is None or worker.done():
                    self._workers[sender] = asyncio.create_task(
                        self._send_channel(project, partition, channel)
                    )

    async def _report(self, project: str) -> None:
        try:
            stats = await self._store(project).outbox_stats(project)
        except AnomalyCounterError:
            return
        self._outcomes.outbox(project, stats)

    def _check_lease(self, project: str, partition: int) -> None:
        if time.monotonic() >= self._held_until.get((project, partition), 0.0):
            raise _LeaseLost

    def _renewed(self, project: str, partition: int, began: float) -> None:
        """Held for sure until the lease's end as counted from before the call that took or
        renewed it, less a margin."""
        self._held_until[project, partition] = began + self._settings.notify_lease * 0.8

    # -- sending -------------------------------------------------------------------------------

    async def _send_channel(self, project: str, partition: int, channel: Channel) -> None:
        """Send one channel a partition's notices past its cursor, in order, each settled
        before the next is sent, until none is left or the lease is lost. Each channel has a
        sender of its own: one that is down delays only its own notices."""
        try:
            await self._send_each(project, partition, channel)
        except (_LeaseLost, _Stopping):
            logger.info("outbox_partition_left", project=project, partition=partition)
        except AnomalyCounterError as exc:  # the store went away: the watch comes back later
            logger.warning("outbox_unreachable", project=project, error=str(exc))
        except Exception:  # a bug must not stop the notices that follow
            logger.exception("outbox_send_failed", project=project, partition=partition)

    async def _send_each(self, project: str, partition: int, channel: Channel) -> None:
        store = self._store(project)
        idents = [c.ident for c in self._channels[project]]
        while True:
            self._check_lease(project, partition)
            entries, _ = await store.outbox_read(project, partition, [channel.ident], _READ)
            if not entries:
                return
            for entry in entries:
                mine = entry.for_channel(channel.ident)  # (else one retried for another)
                dead = await self._deliver(project, partition, channel, entry) if mine else None
                began = time.monotonic()
                settled = await store.outbox_settle(
                    project, partition, Settlement(self.holder, channel.ident, entry, idents, dead)
                )
                if not settled:
                    self._held_until.pop((project, partition), None)
                    raise _LeaseLost
                self._renewed(project, partition, began)
                if mine:
                    await self._tell(project, entry, channel.name, "failed" if dead else "sent")

    async def _deliver(
        self, project: str, partition: int, channel: Channel, entry: OutboxEntry
    ) -> DeadLetter | None:
        """Send one notice to one channel until it takes it (None), or until it is dead: a
        refusal for good, ``notify_attempts`` failed tries, or ``notify_dead_after`` from when
        the notice was written (however many processes tried it meanwhile)."""
        assert self._client is not None, "start() first"
        settings = self._settings
        request = channel.request(await self._notice(project, entry))
        waits = pauses(settings.notify_backoff, settings.notify_max_pause)
        deadline = entry.written_ms / 1000 + settings.notify_dead_after
        first_failed: float | None = None
        attempts = 0
        while True:
            if self._stopping.is_set():
                raise _Stopping
            self._check_lease(project, partition)
            wait: float | None = None
            retry = True
            # a try never outlasts the lease as this process knows it: past it, another
            # deliverer may take the partition and send this notice (the same key) again
            left = self._held_until.get((project, partition), 0.0) - time.monotonic()
            try:
                async with asyncio.timeout(max(0.0, left)):
                    response = await self._client.post(
                        request.url, content=request.body, headers=request.headers
                    )
                if response.is_success:
                    self._outcomes.notice_sent(channel.name)
                    logger.info(
                        "notice_sent", channel=channel.name, project=project,
                        anomaly_key=entry.anomaly_key, kind=entry.kind,
                        notice_id=entry.key(project),
                    )  # fmt: skip
                    return None
                problem = f"HTTP {response.status_code}"
                retry = response.status_code in RETRY_STATUSES  # else it will stay wrong
                wait = _retry_after(response, settings.notify_max_pause)
            except TimeoutError:
                raise _LeaseLost from None
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            except Exception as exc:  # (a bug, or a channel's odd answer: tried again later)
                logger.exception("notice_try_failed", channel=channel.name, project=project)
                problem = f"{type(exc).__name__}: {exc}"
            attempts += 1
            now = time.time()
            first_failed = first_failed or now
            self._outcomes.notice_failed(channel.name)
            if (
                not retry
                or (settings.notify_attempts and attempts >= settings.notify_attempts)
                or now >= deadline
            ):
                self._outcomes.notice_dead(channel.name)
                logger.error(
                    "notice_dead", channel=channel.name, project=project,
                    anomaly_key=entry.anomaly_key, notice_id=entry.key(project), error=problem,
                    attempts=attempts,
                )  # fmt: skip
                return DeadLetter(
                    notice_id=entry.key(project),
                    channel=channel.ident,
                    entry=entry,
                    error=problem,
                    attempts=attempts,
                    first_failed_ms=int(first_failed * 1000),
                    dead_ms=int(now * 1000),
                )
            logger.warning(
                "notice_retried", channel=channel.name, project=project,
                notice_id=entry.key(project), error=problem, attempts=attempts,
            )  # fmt: skip
            pause = wait if wait is not None else next(waits)  # (Retry-After first)
            with contextlib.suppress(TimeoutError):  # (a stop ends the pause)
                await asyncio.wait_for(self._stopping.wait(), min(pause, max(0.0, deadline - now)))

    async def _notice(self, project: str, entry: OutboxEntry) -> Notice:
        counter = self._counter_for(project)
        frequency: AnomalyFrequency | None = None
        try:
            frequency = await counter.get_frequency(entry.anomaly_key)
            repairs = await counter.get_all_repair_stats(entry.anomaly_key)
            (ranked,) = await counter.recommendations([entry.anomaly_key])  # (tried, configured)
        except AnomalyCounterError as exc:  # the store is away: send what the entry says
            logger.warning("notice_without_repairs", project=project, error=str(exc))
            repairs, ranked = {}, []
        notice = Notice.of_entry(
            project, entry, frequency, repairs, ranked, self._settings.base_url
        )
        return replace(notice, notice_id=entry.key(project))

    async def _tell(self, project: str, entry: OutboxEntry, channel: str, outcome: str) -> None:
        """Put the notice's outcome in the anomaly's timeline (best effort: the notice itself
        is what matters)."""
        try:
            await self._counter_for(project).note_notice(
                entry.anomaly_key, channel, entry.kind, outcome
            )
        except AnomalyCounterError as exc:
            logger.warning("notice_not_in_timeline", project=project, error=str(exc))


async def send_again(
    counter: AnomalyCounter, settings: Settings, notice_ids: Sequence[str] | None
) -> tuple[int, list[DeadLetter]]:
    """Put dead letters (those of ``notice_ids``, or all) back in the outbox, for a running
    service to deliver. Those whose channel is not configured any more (its URL or token
    changed, or it was removed: its ident is a digest of where it sends) are left where they
    are and returned: nothing would send them."""
    idents = {c.ident for c in channels_for(settings, counter.project_id)}
    wanted = None if notice_ids is None else set(notice_ids)
    chosen = [d for d in await counter.dead_letters() if wanted is None or d.notice_id in wanted]
    retried = await counter.retry_letters([d for d in chosen if d.channel in idents])
    return retried, [d for d in chosen if d.channel not in idents]


def _retry_after(response: httpx.Response, longest: float) -> float | None:
    try:
        return min(max(float(response.headers["Retry-After"]), 0.0), longest)
    except (KeyError, ValueError):
        return None
