"""The baseline: the reference design's sequence of Redis commands for one occurrence.

Written for the benchmark from the reference's description (seed-notes.md): per occurrence it
issues the same commands, one round trip each, as the reference's ``record_anomaly`` does,
including its fallback reads of legacy keys. It is not part of the library.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as aioredis

from anomaly_counter import hash_signature

TTL = 35 * 86_400


class ReferenceSequence:
    def __init__(self, client: aioredis.Redis, project: str = "bench") -> None:
        self.redis = client
        self.project = project

    def _key(self, prefix: str, key: str) -> str:
        return f"{self.project}:anomaly:{prefix}:{key}"

    async def _get_with_fallback(self, prefix: str, key: str) -> Any:
        value = await self.redis.get(self._key(prefix, key))
        if value is None:
            value = await self.redis.get(f"anomaly:{prefix}:{key}")
        return value

    async def record_anomaly(self, signature: dict[str, Any]) -> dict[str, Any]:
        key = hash_signature(signature)
        now = time.time()
        timeline = self._key("timeline", key)
        await self.redis.zadd(timeline, {str(now): now})
        await self.redis.zremrangebyscore(timeline, "-inf", now - 30 * 86_400)
        await self.redis.expire(timeline, TTL)
        counts = [
            await self.redis.zcount(timeline, now - seconds, "+inf")
            for seconds in (3_600, 86_400, 604_800, 2_592_000)
        ]
        await self.redis.zrange(timeline, 0, 0, withscores=True)
        await self.redis.zrange(timeline, -1, -1, withscores=True)
        await self._get_with_fallback("repair_count", key)
        await self._get_with_fallback("permanent_fix", key)
        meta = self._key("metadata", key)
        if not await self.redis.exists(meta) and not await self.redis.exists(
            f"anomaly:metadata:{key}"
        ):
            await self.redis.hset(meta, mapping={"signature": json.dumps(signature)})
            await self.redis.expire(meta, TTL)
        disposition = await self.redis.hgetall(self._key("disposition", key))
        if not disposition:
            await self.redis.hgetall(f"anomaly:disposition:{key}")
        return {"anomaly_key": key, "count_24h": counts[1]}
