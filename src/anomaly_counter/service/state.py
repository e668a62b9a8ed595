"""What the service's routes share: the store, a counter per project, the spool and its
replayer, the notices' deliverer, the metrics, the lanes and authentication of this process."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace

from ..counter import AnomalyCounter
from ..errors import InvalidInputError, SpoolFullError, StoreUnavailableError
from ..model import AnomalyFrequency, Occurrence
from ..notify.deliverer import Deliverer
from ..replay import Replayer
from ..settings import Settings
from ..spool import spool_of
from ..stores.base import Store, store_from_url
from .auth import Authenticator
from .known_tokens import KnownTokens
from .lanes import Lanes
from .metrics import Metrics
from .sweeper import Sweeper

CHECKED_TOKEN = "checked_token"
"""Where the body's gate leaves the token it checked, in the request's state."""


class Service:
    """What the routes share. Counters answer strictly: a store that cannot take a write is a
    503 (Alertmanager retries it), never a 2xx for something not stored."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = replace(settings, strict=True)
        self.store = store or store_from_url(self.settings.store_url, self.settings)
        self.metrics = Metrics()
        self.lanes = Lanes(settings.limits_for, settings.body_timeout, self.metrics.limit_reached)
        self._counters: dict[str, AnomalyCounter] = {}
        self.deliverer = Deliverer(self.settings, self.counter, self.metrics)
        self.sweeper = Sweeper(
            self.settings.sweep_seconds, self._known_projects, self.counter, self._swept
        )
        self.replayer: Replayer | None = None
        self.spool = spool_of(self.settings)
        if self.spool is not None:
            self.replayer = Replayer(self.spool, self.counter, self._replayed)
            self.metrics.watch_spool(self.spool)
        # the tokens the store vouched for, kept beside the spool (its lock makes this process
        # the file's only writer) for an outage, and a restart during one
        directory = self.spool.directory if self.spool is not None else None
        known = KnownTokens(directory, self.settings.auth_stale_seconds)
        self.auth = Authenticator(self.store, known)

    def counter(self, project: str) -> AnomalyCounter:
        counter = self._counters.get(project)
        if counter is None:
            counter = AnomalyCounter(
                self.store, project, settings=self.settings, spool=self.spool, replay=False
            )
            counter.on_replay_refused = functools.partial(self.metrics.limit_reached, project)
            self._counters[project] = counter
        return counter

    def _known_projects(self) -> list[str]:
        """The projects this process has served, and those its settings name."""
        s = self.settings
        named = (s.project_channels, s.project_thresholds, s.project_limits, s.project_episodes)
        return [*self._counters, *(project for table in named for project in table)]

    def _swept(self, project: str, stopped: int) -> None:
        self.metrics.flapping_stopped.labels(project=project).inc(stopped)
        self.deliverer.wake_project(project)

    def _replayed(self, project: str, frequencies: list[AnomalyFrequency]) -> None:
        self.metrics.spool_replayed.inc(len(frequencies))
        self.metrics.counted(project, frequencies)
        self.deliverer.wake(project, frequencies)

    async def record(
        self, project: str, occurrences: Sequence[Occurrence]
    ) -> list[AnomalyFrequency]:
        """Count occurrences, account for them, and queue the notices they call for."""
        counter = self.counter(project)
        try:
            async with self.metrics.timing("record"):
                if len(occurrences) == 1 and not occurrences[0].episode:
                    o = occurrences[0]
                    frequencies = [
                        await counter.record_anomaly(
                            o.signature, at=o.at, occurrence_id=o.occurrence_id
                        )
                    ]
                else:
                    frequencies = await counter.record_many(occurrences)
        except InvalidInputError:
            self.metrics.refused(project, "rejected", len(occurrences))
            raise
        except StoreUnavailableError:
            self.metrics.refused(project, "degraded", len(occurrences))
            raise
        except SpoolFullError:
            self.metrics.refused(project, "refused", len(occurrences))
            raise
        spooled = sum(1 for f in frequencies if f.spooled)
        self.metrics.refused(project, "spooled", spooled)
        self.metrics.counted(project, [f for f in frequencies if not f.spooled])
        self.deliverer.wake(project, frequencies)
        return frequencies
