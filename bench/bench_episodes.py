"""What incidents and flapping cost: recording Alertmanager episodes (each a firing with its
fingerprint, then its resolution) against the same number of plain occurrences, side by side on
Redis (a redis-server of its own) and SQLite; the memory of the busiest anomaly with a full
flapping history and its open episodes at the bound; and a sweep of many quiet flapping
anomalies. Prints the machine and Markdown.

    python bench/bench_episodes.py [--rounds 3]   (PYTHONPATH=<tree>/src to run another tree)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from datetime import UTC, datetime, timedelta

import structlog

from anomaly_counter import AnomalyCounter, Settings
from anomaly_counter.episodes import EpisodeRules
from anomaly_counter.model import Occurrence
from bench_record import Server, machine  # beside this script, on its sys.path

EPISODES = 2_000
SIGNATURES = [{"alertname": f"Flap{i % 50}", "service": f"s{i % 7}"} for i in range(50)]


async def alerts(url: str, project: str, as_episodes: bool) -> float:
    """One alert at a time, as the receiver sends them (a record_many of one), then its
    resolution: as plain occurrences (the receiver's cost before episodes), or as episodes
    (each firing judged into its incident, each resolution closing it, both counted for
    flapping: the anomalies flip every few seconds, many flap)."""
    now = datetime.now(UTC)
    async with AnomalyCounter.from_url(settings=Settings(store_url=url), project=project) as c:
        began = time.perf_counter()
        for i in range(EPISODES):
            signature = SIGNATURES[i % len(SIGNATURES)]
            at = now - timedelta(seconds=EPISODES - i)
            fingerprint = f"fp{i % 3}" if as_episodes else None
            await c.record_many([Occurrence(signature, at, f"am:{fingerprint}:{i}", fingerprint)])
            await c.record_resolution(
                c.hash_signature(signature), at=at, episode=fingerprint, started=at
            )
        return EPISODES / (time.perf_counter() - began)


async def memory(server: Server) -> dict[str, float]:
    """MEMORY USAGE of one anomaly's keys: 10,000 episodes over 30 days flipping every few
    minutes (a full flapping state, the timeline's routine part full of resolutions and
    flapping entries), then its milestones full too (60 fixes, as bench_record), then with
    max_open episodes open (the bound) as well."""
    server.client.flushall()
    now = datetime.now(UTC)
    start = now - timedelta(days=30) + timedelta(minutes=1)
    total = 10_000
    step = (now - start) / total
    signature = {"alertname": "PodCrashLoopBackOff", "service": "api", "namespace": "prod"}
    settings = Settings(store_url=server.url, episodes=EpisodeRules(open_hours=720))

    def used(ids: bool = False) -> int:
        """Its keys' memory, without (or only) the occurrence ids it remembers (``i``: bounded
        by dedup_max_ids, the same with or without episodes; see bench_record)."""
        keys = [k for k in server.client.keys("ac:{memory*") if b":a:" in k]
        keys = [k for k in keys if k.endswith(b":i") == ids]
        return sum(server.client.memory_usage(k, samples=0) or 0 for k in keys)

    async with AnomalyCounter.from_url(server.url, "memory", settings=settings) as counter:
        key = counter.hash_signature(signature)
        for first in range(0, total, 500):
            batch = range(first, min(first + 500, total))
            await counter.record_many(
                [Occurrence(signature, start + step * i, f"am:p:{i}", "p") for i in batch]
            )
            for i in batch[-20:]:  # the last ones of each batch also resolve: flapping
                at = start + step * i + timedelta(seconds=30)
                await counter.record_resolution(key, at=at, episode="p", started=start + step * i)
        figures: dict[str, float] = {"flipping": used()}
        for i in range(60):  # more than the milestones keep
            await counter.mark_permanent_fix_applied(
                key, f"raised the memory limit to {i + 1} GiB", by="oncall:maria"
            )
        figures["full timeline"] = used()
        figures["entries"] = len(await counter.timeline(key))
        bound = settings.episodes.max_open
        await counter.record_many(
            [Occurrence(signature, now, f"am:open{n}:1", f"open{n}") for n in range(bound)]
        )
        figures["open"] = used()
        figures["ids"] = used(ids=True)
        found = await counter.get_frequency(key)
        assert found is not None
        figures["firing"], figures["instances"] = found.firing, found.instances
        figures["percent"] = found.flap_percent
    return figures


async def sweep(url: str, n: int) -> tuple[float, int]:
    """n anomalies flapping, then quiet for two hours: one sweep stops them all. Its time."""
    clock_now = [datetime.now(UTC) - timedelta(hours=3)]
    settings = Settings(store_url=url)
    async with AnomalyCounter.from_url(
        url, "sweep", settings=settings, clock=lambda: clock_now[0]
    ) as c:
        t0 = clock_now[0]
        for k in range(8):
            clock_now[0] = t0 + timedelta(minutes=5 * k)
            occurrences = [
                Occurrence({"alertname": f"F{a}"}, clock_now[0], f"am:f:{a}:{k}", "f")
                for a in range(n)
            ]
            await c.record_many(occurrences)
            for a in range(n):
                key = c.hash_signature({"alertname": f"F{a}"})
                await c.record_resolution(key, at=clock_now[0], episode="f", started=clock_now[0])
        flapping = (await c.flapping_anomalies(limit=n)).total
        clock_now[0] = t0 + timedelta(hours=3)
        began = time.perf_counter()
        stopped = await c.sweep_flapping(limit=n)
        elapsed = time.perf_counter() - began
        assert stopped == flapping, (stopped, flapping)
    return elapsed, stopped


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    print(f"Machine: {machine()}")
    print()
    server = Server()
    directory = tempfile.mkdtemp()
    try:
        print(f"| round | store | {EPISODES:,} alerts + resolutions, plain | as episodes | ratio |")
        print("|---|---|---:|---:|---:|")
        for r in range(args.rounds):
            for name, url in (
                ("Redis", server.url),
                ("SQLite", f"sqlite:///{directory}/r{r}.db"),
            ):
                before = await alerts(url, f"plain{r}", as_episodes=False)
                after = await alerts(url, f"episodes{r}", as_episodes=True)
                print(
                    f"| {r + 1} | {name} | {before:,.0f}/s | {after:,.0f}/s"
                    f" | {after / before:.2f} |"
                )
        print()
        figures = await memory(server)
        print(
            "MEMORY USAGE of one anomaly's keys (Redis), 10,000 episodes over 30 days with"
            f" flips: {figures['flipping']:,.0f} bytes (flapping {figures['percent']:.1f} %);"
            f" with a full timeline ({figures['entries']:.0f} entries):"
            f" {figures['full timeline']:,.0f} bytes; with {figures['firing']:.0f} episodes open"
            f" (max_open) too: {figures['open']:,.0f} bytes"
            f" (firing {figures['firing']:.0f}, instances {figures['instances']:.0f}); besides"
            f" the 10,000 episodes' ids it remembers: {figures['ids']:,.0f} bytes"
        )
        print()
        for name, url in (("Redis", server.url), ("SQLite", f"sqlite:///{directory}/s.db")):
            elapsed, stopped = await sweep(url, 500)
            print(
                f"Sweep ({name}): {stopped} quiet flapping anomalies stopped in"
                f" {elapsed * 1000:,.0f} ms"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
