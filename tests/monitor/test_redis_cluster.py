"""The whole API against a 3-master Redis Cluster (ENTMON_REDIS_CLUSTER): no cross-slot error.

Each run's keys share the hash tag {run}, so its Lua scripts stay in one slot; the run index
`entmon:runs` lives in another slot, on another node for the runs below, so the ingest pipeline
really is split across nodes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from redis.cluster import RedisCluster

from monitor.main import create_app
from monitor.settings import Settings
from monitor.store import RUNS_KEY, RunKeys
from tests.conftest import LOCAL
from tests.redis_cluster import RedisClusterProcesses
from tests.synthetic_reports import report

RUNS = ("alpha", "beta", "gamma", "delta")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    with RedisClusterProcesses(tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture
def api(cluster: RedisClusterProcesses) -> Iterator[TestClient]:
    client = RedisCluster.from_url(cluster.url)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    client.close()
    with TestClient(
        create_app(Settings(redis_url=cluster.url, redis_cluster=True)), base_url=LOCAL
    ) as c:
        yield c


def node_of(cluster: RedisClusterProcesses, key: str) -> int:
    """Port of the master that owns the key's slot."""
    with redis.Redis(port=cluster.nodes[0].port) as r:
        slot = r.execute_command("CLUSTER", "KEYSLOT", key)
        for lo, hi, (_, port, *_) in r.execute_command("CLUSTER", "SLOTS"):
            if lo <= slot <= hi:
                return int(port)
    raise AssertionError(f"slot {slot} unassigned")


def test_cluster_setting_needs_a_url() -> None:
    with pytest.raises(ValueError, match="ENTMON_REDIS_URL"):
        Settings(redis_cluster=True)


def test_the_runs_span_every_master(cluster: RedisClusterProcesses) -> None:
    owners = {node_of(cluster, RunKeys.of(run).meta) for run in RUNS}
    assert owners == {n.port for n in cluster.nodes}
    assert any(node_of(cluster, RUNS_KEY) != node_of(cluster, RunKeys.of(r).meta) for r in RUNS)


def test_whole_api_against_a_cluster(api: TestClient, cluster: RedisClusterProcesses) -> None:
    assert api.get("/readyz").json() == {"status": "ready"}
    for run in RUNS:
        single = api.post(f"/v1/runs/{run}/reports", json=report(0))
        assert single.status_code == 200, single.text
        assert single.json()["accepted"] == 1
        batch = [report(s, rank=r, world_size=2) for s in range(1, 6) for r in range(2)]
        body = api.post(f"/v1/runs/{run}/reports", json=batch).json()
        assert (body["accepted"], body["duplicates"]) == (10, 0)
        again = api.post(f"/v1/runs/{run}/reports", json=batch[:3]).json()  # idempotent
        assert (again["accepted"], again["duplicates"]) == (0, 3)

    assert sorted(r["run"] for r in api.get("/v1/runs").json()["runs"]) == sorted(RUNS)
    run = RUNS[1]
    summary = api.get(f"/v1/runs/{run}").json()
    assert (summary["first_step"], summary["last_step"], summary["reports"]) == (0, 5, 11)
    steps = api.get(f"/v1/runs/{run}/steps", params={"start": 2, "end": 4}).json()["steps"]
    assert [(s["step"], s["ranks"]) for s in steps] == [(2, 2), (3, 2), (4, 2)]
    hist = api.get(f"/v1/runs/{run}/histograms", params={"name": "covariance"}).json()
    assert len(hist["steps"]) == 6 and sum(hist["steps"][-1]["counts"]) == 2000
    assert api.get(f"/v1/runs/{run}/top_tokens").json()["step"] == 5
    analysis = api.get(f"/v1/runs/{run}/analysis")  # the sampling script, in the run's slot
    assert analysis.status_code == 200, analysis.text
    assert analysis.json()["steps"] == 6

    control = api.get(f"/v1/runs/{run}/control")
    changed = api.put(
        f"/v1/runs/{run}/control",
        json={"loss_mode": "kl_cov", "kl_cov_ratio": 0.002, "reason": "cluster test"},
        headers={"If-Match": control.headers["etag"]},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["version"] == 1
    stale = api.put(
        f"/v1/runs/{run}/control", json={"kl_cov_ratio": 0.5}, headers={"If-Match": '"0"'}
    )
    assert stale.status_code == 412
    audit = api.get(f"/v1/runs/{run}/audit").json()["entries"]
    assert [(e["version"], e["reason"]) for e in audit] == [(1, "cluster test")]
    ack = api.post(f"/v1/runs/{run}/reports", json=report(6, control_version=1)).json()
    assert ack["control"]["loss_mode"] == "kl_cov"  # read in the same pipeline as the write

    families = {f.name: f for f in text_string_to_metric_families(api.get("/metrics").text)}
    entropy_runs = {s.labels["run"] for s in families["entmon_policy_entropy"].samples}
    assert entropy_runs == set(RUNS)
    modes = {
        s.labels["run"]: s.labels["loss_mode"] for s in families["entmon_control_loss_mode"].samples
    }
    assert modes[run] == "kl_cov"

    assert api.delete(f"/v1/runs/{run}").status_code == 204
    assert api.get(f"/v1/runs/{run}").status_code == 404
    assert sorted(r["run"] for r in api.get("/v1/runs").json()["runs"]) == sorted(set(RUNS) - {run})
    with redis.Redis(port=node_of(cluster, RunKeys.of(run).meta)) as owner:
        assert not owner.keys(f"entmon:{{{run}}}:*")
