"""A real Redis Cluster for tests: redis-server processes on loopback, made into a cluster of
three primaries with a replica each by ``redis-cli --cluster create``."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.crc import key_slot

from .conftest import require_binary, wait_for_ping

NODE_TIMEOUT_MS = 2000


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too: below 55536."""
    while True:
        port = random.randrange(21000, 45000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port


class LocalCluster:
    def __init__(self, directory: Path, primaries: int = 3, replicas: int = 1) -> None:
        self.binary = require_binary("redis-server")
        self.cli = require_binary("redis-cli")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ports = [_cluster_port() for _ in range(primaries * (1 + replicas))]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        try:
            for port in self.ports:
                self.start_node(port)
            addresses = [f"127.0.0.1:{port}" for port in self.ports]
            subprocess.run(
                [self.cli, "--cluster", "create", *addresses,
                 "--cluster-replicas", str(replicas), "--cluster-yes"],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
            self.wait_until_ok()
            self._wait_for_shape(primaries, primaries * replicas)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[:3])

    def start_node(self, port: int, appendonly: str = "no") -> None:
        """Start (or restart, with its nodes.conf) the node on this port."""
        self.processes[port] = subprocess.Popen(
            [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", appendonly, "--dir", str(self.directory),
             "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--dbfilename", f"dump-{port}.rdb",
             "--appendfilename", f"aof-{port}.aof", "--repl-diskless-sync-delay", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_ping(port)

    def command(self, port: int, *args: str) -> str:
        """A command's reply as redis-cli prints it ('' if the node does not answer)."""
        result = subprocess.run(
            [self.cli, "-p", str(port), *args], capture_output=True, text=True, timeout=10
        )
        return result.stdout if result.returncode == 0 else ""

    def kill(self, port: int) -> None:
        process = self.processes.pop(port)
        process.kill()
        process.wait(10)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port)

    def nodes(self) -> list[dict[str, str]]:
        """CLUSTER NODES as seen by a live node: id, address, flags, slots."""
        for port in self.processes:
            text = self.command(port, "CLUSTER", "NODES")
            if not text.strip() or text.startswith(("ERR", "Could not connect")):
                continue
            rows = []
            for line in text.strip().splitlines():
                fields = line.split()
                rows.append(
                    {
                        "id": fields[0],
                        "port": fields[1].split("@")[0].rsplit(":", 1)[1],
                        "flags": fields[2],
                        "master": fields[3],
                        "slots": " ".join(fields[8:]),
                    }
                )
            return rows
        raise RuntimeError("no cluster node answers")

    def primary_ports(self) -> list[int]:
        return sorted(
            int(n["port"])
            for n in self.nodes()
            if "master" in n["flags"] and "fail" not in n["flags"] and n["slots"]
        )

    def used_slots(self, port: int) -> list[int]:
        """The slots that hold keys on this node."""
        with self.client(port) as client:
            return sorted({key_slot(k) for k in client.scan_iter(count=1000)})

    def first_slot(self, port: int) -> int:
        slots = next(n["slots"] for n in self.nodes() if int(n["port"]) == port)
        return int(slots.split()[0].split("-")[0])

    def node_id(self, port: int) -> str:
        return next(n["id"] for n in self.nodes() if int(n["port"]) == port)

    def wait_until_ok(self, timeout: float = 30) -> None:
        """Every live node says the cluster is ok and agrees on who serves every slot."""
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for port in self.processes:
                states.append("cluster_state:ok" in self.command(port, "CLUSTER", "INFO"))
            if all(states):
                result = subprocess.run(
                    [self.cli, "--cluster", "check", f"127.0.0.1:{next(iter(self.processes))}"],
                    capture_output=True, text=True, timeout=30,
                )  # fmt: skip
                if result.returncode == 0 and "[OK] All 16384 slots covered" in result.stdout:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not settle")
            time.sleep(0.1)

    def _wait_for_shape(self, primaries: int, replicas: int, timeout: float = 30) -> None:
        """Every node knows every other's role (gossip spreads it after create), and every
        replica has synced (a replica that never did cannot take over)."""
        deadline = time.monotonic() + timeout
        for port in self.processes:
            while True:
                flags = [
                    line.split()[2] for line in self.command(port, "CLUSTER", "NODES").splitlines()
                ]
                if (
                    sum("master" in f for f in flags) == primaries
                    and sum("slave" in f for f in flags) == replicas
                ):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node {port} sees {flags}")
                time.sleep(0.1)
        self.wait_for_replicas(timeout)

    def wait_for_replicas(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        for port in self.processes:
            while True:
                info = self.command(port, "INFO", "replication")
                if "role:master" in info or "master_link_status:up" in info:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica {port} did not sync")
                time.sleep(0.05)

    def flush(self) -> None:
        for port in self.primary_ports():
            with self.client(port) as client:
                client.flushall()
                client.script_flush()

    def reshard(self, source: int, target: int, slots: int) -> subprocess.Popen[bytes]:
        """Move `slots` slots from one primary to another with redis-cli, in the background;
        what it prints goes to reshard.log (a line per slot: more than a pipe holds)."""
        log = self.directory / "reshard.log"
        with log.open("ab") as output:
            return subprocess.Popen(
                [self.cli, "--cluster", "reshard", f"127.0.0.1:{source}",
                 "--cluster-from", self.node_id(source), "--cluster-to", self.node_id(target),
                 "--cluster-slots", str(slots), "--cluster-yes", "--cluster-pipeline", "10"],
                stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def reshard_log(self) -> str:
        return (self.directory / "reshard.log").read_text()[-2000:]

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            process.wait(10)
        self.processes.clear()
