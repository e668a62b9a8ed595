"""A store around another: every call goes through to it. The stores that add a behaviour to
any store (the spool, resilience) take this and change only what they add to."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from ..outbox import DeadLetter, Lease, OutboxEntry, OutboxStats, Settlement
from ..tokens import TokenRecord
from ..windows import WindowState
from .base import (
    AnomalyWrite,
    Chunks,
    Recording,
    RecordRequest,
    Resolution,
    Snapshot,
    Store,
    WritePolicy,
)
from .image import AnomalyImage


class ChunkFeed:
    """A batch's chunks handed to a store one at a time (each ``prepare``-d), knowing which it
    answered (``answered``): when the store goes away in the middle, ``rest()`` is the chunks
    it was handed but did not answer, then those not handed yet, in order."""

    def __init__(
        self,
        chunks: Chunks,
        prepare: Callable[[Sequence[RecordRequest]], Sequence[RecordRequest]] = lambda c: c,
    ) -> None:
        self._chunks = iter(chunks)  # (once: the rest continues where the store stopped)
        self._prepare = prepare
        self.handed: list[Sequence[RecordRequest]] = []
        self.answered = 0

    def __iter__(self) -> Iterator[Sequence[RecordRequest]]:
        for chunk in self._chunks:
            self.handed.append(self._prepare(chunk))
            yield self.handed[-1]

    def rest(self) -> list[Sequence[RecordRequest]]:
        return [*self.handed[self.answered :], *self]


class StoreWrapper(Store):
    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.pipeline_chunk = inner.pipeline_chunk

    async def record(
        self, recording: Recording, requests: Sequence[RecordRequest]
    ) -> list[Snapshot]:
        return await self.inner.record(recording, requests)

    async def record_chunks(
        self, recording: Recording, chunks: Chunks, *, whole: Sequence[str] | None = None
    ) -> AsyncIterator[list[Snapshot]]:
        async for snapshots in self.inner.record_chunks(recording, chunks, whole=whole):
            yield snapshots

    async def admit(self, recording: Recording, anomaly_keys: Sequence[str]) -> None:
        await self.inner.admit(recording, anomaly_keys)

    async def read(
        self, project: str, anomaly_keys: Sequence[str], at_ms: int, now_ms: int
    ) -> list[Snapshot | None]:
        return await self.inner.read(project, anomaly_keys, at_ms, now_ms)

    async def record_repair(
        self, project: str, write: AnomalyWrite, action: str, success: bool, until_ms: int = 0
    ) -> None:
        await self.inner.record_repair(project, write, action, success, until_ms)

    async def repair_stats(
        self, project: str, anomaly_key: str, now_ms: int
    ) -> dict[str, tuple[int, int]]:
        return await self.inner.repair_stats(project, anomaly_key, now_ms)

    async def repair_history(self, project: str, anomaly_key: str) -> list[dict[str, Any]]:
        return await self.inner.repair_history(project, anomaly_key)

    async def repair_histories(
        self, project: str, anomaly_keys: Sequence[str]
    ) -> list[list[dict[str, Any]]]:
        return await self.inner.repair_histories(project, anomaly_keys)

    async def record_disposition(self, project: str, write: AnomalyWrite, disposition: str) -> None:
        await self.inner.record_disposition(project, write, disposition)

    async def disposition_stats(
        self, project: str, anomaly_key: str, now_ms: int
    ) -> dict[str, int]:
        return await self.inner.disposition_stats(project, anomaly_key, now_ms)

    async def disposition_summary(self, project: str, now_ms: int) -> dict[str, int]:
        return await self.inner.disposition_summary(project, now_ms)

    async def candidates(self, project: str, index: str) -> AsyncIterator[tuple[str, int]]:
        async for candidate in self.inner.candidates(project, index):
            yield candidate

    async def chronic(self, project: str) -> list[tuple[str, int]]:
        return await self.inner.chronic(project)

    async def refresh_index(
        self, project: str, index: str, entries: Sequence[tuple[str, int, int]]
    ) -> None:
        await self.inner.refresh_index(project, index, entries)

    async def mark_fix(self, project: str, write: AnomalyWrite, description: str) -> None:
        await self.inner.mark_fix(project, write, description)

    async def undo_fix(self, project: str, write: AnomalyWrite) -> bool:
        return await self.inner.undo_fix(project, write)

    async def resolve(self, recording: Recording, resolution: Resolution) -> None:
        await self.inner.resolve(recording, resolution)

    async def flapping(self, project: str) -> list[tuple[str, int]]:
        return await self.inner.flapping(project)

    async def sweep(self, recording: Recording, limit: int) -> int:
        return await self.inner.sweep(recording, limit)

    async def states(self, project: str, anomaly_keys: Sequence[str]) -> list[WindowState | None]:
        return await self.inner.states(project, anomaly_keys)

    async def timeline(self, project: str, anomaly_key: str) -> list[str]:
        return await self.inner.timeline(project, anomaly_key)

    async def note(self, project: str, anomaly_key: str, entry: str) -> None:
        await self.inner.note(project, anomaly_key, entry)

    async def summary_days(self, project: str, now_ms: int) -> dict[int, dict[str, int]]:
        return await self.inner.summary_days(project, now_ms)

    async def repair_stats_many(
        self, project: str, anomaly_keys: Sequence[str], now_ms: int
    ) -> list[dict[str, tuple[int, int]]]:
        return await self.inner.repair_stats_many(project, anomaly_keys, now_ms)

    async def search(
        self, project: str, word: str, limit: int
    ) -> tuple[list[tuple[str, str]], bool]:
        return await self.inner.search(project, word, limit)

    async def forget_terms(self, project: str, entries: Sequence[tuple[str, str]]) -> None:
        await self.inner.forget_terms(project, entries)

    @property
    def outbox_partitions(self) -> int:  # type: ignore[override]
        return self.inner.outbox_partitions

    async def outbox_lease(
        self, project: str, partitions: Sequence[int], holder: str, lease_ms: int
    ) -> list[Lease]:
        return await self.inner.outbox_lease(project, partitions, holder, lease_ms)

    async def outbox_read(
        self, project: str, partition: int, channels: Sequence[str], limit: int
    ) -> tuple[list[OutboxEntry], dict[str, str]]:
        return await self.inner.outbox_read(project, partition, channels, limit)

    async def outbox_settle(self, project: str, partition: int, settlement: Settlement) -> bool:
        return await self.inner.outbox_settle(project, partition, settlement)

    async def outbox_release(self, project: str, partition: int, holder: str) -> None:
        await self.inner.outbox_release(project, partition, holder)

    async def outbox_stats(self, project: str) -> OutboxStats:
        return await self.inner.outbox_stats(project)

    async def dead_letters(self, project: str) -> list[DeadLetter]:
        return await self.inner.dead_letters(project)

    async def retry_dead_letters(self, project: str, letters: Sequence[DeadLetter]) -> int:
        return await self.inner.retry_dead_letters(project, letters)

    async def save_token(self, record: TokenRecord) -> None:
        await self.inner.save_token(record)

    async def get_token(self, token_id: str) -> TokenRecord | None:
        return await self.inner.get_token(token_id)

    async def list_tokens(self, project: str | None = None) -> list[TokenRecord]:
        return await self.inner.list_tokens(project)

    async def revoke_token(self, token_id: str) -> bool:
        return await self.inner.revoke_token(token_id)

    async def ping(self) -> None:
        await self.inner.ping()

    async def aclose(self) -> None:
        await self.inner.aclose()

    # -- export and import --------------------------------------------------------------------
    # (straight through, never degraded: a move must fail loudly, not export or import nothing)

    async def export_anomalies(self, project: str) -> AsyncIterator[AnomalyImage]:
        async for image in self.inner.export_anomalies(project):
            yield image

    async def import_anomalies(
        self, project: str, images: Sequence[AnomalyImage], policy: WritePolicy, now_ms: int
    ) -> int:
        return await self.inner.import_anomalies(project, images, policy, now_ms)

    async def held_anomalies(self, project: str, anomaly_keys: Sequence[str]) -> list[str]:
        return await self.inner.held_anomalies(project, anomaly_keys)

    async def import_summary(
        self, project: str, days: dict[int, dict[str, int]], now_ms: int
    ) -> None:
        await self.inner.import_summary(project, days, now_ms)

    # -- deleting --

    async def delete_anomaly(self, project: str, anomaly_key: str) -> bool:
        return await self.inner.delete_anomaly(project, anomaly_key)

    async def delete_project(self, project: str) -> int:
        return await self.inner.delete_project(project)
