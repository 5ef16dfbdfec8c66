"""Issue #16, service side: bad input never answers 5xx, odd reports are answered truthfully,
open access serves only the local machine, and `entmon serve` refuses what would corrupt data.
Each against a real `entmon serve` process on a real Redis."""

from __future__ import annotations

import http.client
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from monitor.embedded_redis import free_port
from tests.conftest import SERVER_START_TIMEOUT_S, ServerProcess

ADMIN = "admin-token-0123456789abcdef"


def post_raw(url: str, body: bytes, run: str = "r1") -> httpx.Response:
    headers = {"content-type": "application/json"}
    return httpx.post(f"{url}/v1/runs/{run}/reports", content=body, headers=headers)


def _detail_locs(response: httpx.Response) -> list[list[str | int]]:
    return [d["loc"] for d in response.json()["detail"]]


# 1. A lone UTF-16 surrogate: refused with a 422 naming the field, never a 500.
@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (rb'{"step":1,"user":{"\udc80":1}}', ["body", "user"]),
        (rb'[{"step":1},{"step":2,"user":{"x\ud800":1}}]', ["body", 1, "user"]),
        (
            rb'{"step":1,"top_tokens":[{"cov":1,"logp":0,"advantage":1,"text":"a\udc80"}]}',
            ["body", "top_tokens", 0, "text"],
        ),
        (rb'{"step":1,"stats":{"\udc80":1}}', ["body", "stats"]),  # also no known name
        (rb'{"step":1,"user":{"\udc80":NaN}}', ["body", "user"]),  # also through the NaN path
    ],
)
def test_a_lone_surrogate_is_refused_naming_the_field(
    server: ServerProcess, body: bytes, loc: list[str | int]
) -> None:
    r = post_raw(server.url, body)
    assert r.status_code == 422, r.text
    assert _detail_locs(r) == [loc]
    assert "lone UTF-16 surrogate" in r.text
    assert httpx.get(f"{server.url}/v1/runs/r1").status_code == 404  # nothing half stored


def test_a_valid_surrogate_pair_is_text_and_stored(server: ServerProcess) -> None:
    r = post_raw(server.url, rb'{"step":1,"user":{"\ud83d\ude00":1}}')  # json.dumps' escape
    assert r.status_code == 200, r.text
    steps = httpx.get(f"{server.url}/v1/runs/r1/steps").json()["steps"]
    assert steps[0]["user"] == {"\U0001f600": 1.0}


# 6. Deeply nested with NaN (the json fallback), huge integers in the query.
def test_nan_and_deep_nesting_is_a_422(server: ServerProcess) -> None:
    body = b'{"step":1,"stats":{"entropy":NaN},"user":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = post_raw(server.url, body)
    assert r.status_code == 422, r.text
    assert "malformed JSON" in r.text


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("steps?start=", "start"),
        ("steps?end=", "end"),
        ("steps?every=", "every"),
        ("histograms?name=entropy&start=", "start"),
        ("top_tokens?step=", "step"),
    ],
)
def test_a_400_digit_integer_in_the_query_is_a_422(
    server: ServerProcess, query: str, name: str
) -> None:
    assert post_raw(server.url, b'{"step":1}').status_code == 200
    r = httpx.get(f"{server.url}/v1/runs/r1/{query}{'9' * 400}")
    assert r.status_code == 422, r.text
    assert _detail_locs(r) == [["query", name]]


def test_a_discarded_duplicate_does_not_report_its_nan(server: ServerProcess) -> None:
    assert post_raw(server.url, b'{"step":5,"stats":{"entropy":1.0}}').json()["nonfinite"] == []
    again = post_raw(server.url, b'{"step":5,"stats":{"entropy":NaN}}').json()
    assert (again["accepted"], again["duplicates"], again["nonfinite"]) == (0, 1, [])
    fresh = post_raw(server.url, b'{"step":6,"stats":{"entropy":NaN}}').json()
    assert fresh["nonfinite"] == ["step 6: entropy"]


def test_a_step_older_than_the_retention_window_is_answered_expired(
    redis_url: str, tmp_path: Path
) -> None:
    env = {"ENTMON_REDIS_URL": redis_url, "ENTMON_RETENTION_STEPS": "10"}
    server = ServerProcess(env | {"ENTMON_DATA_DIR": str(tmp_path)}).start()
    try:
        assert post_raw(server.url, b'{"step":100}').json()["accepted"] == 1
        old = post_raw(server.url, b'{"step":5}').json()
        assert (old["accepted"], old["duplicates"], old["expired"]) == (0, 0, 1)
        batch = post_raw(server.url, b'[{"step":101},{"step":3},{"step":200}]').json()
        # 101 was in the window when it came, but the batch's own 200 leaves it behind
        assert (batch["accepted"], batch["expired"]) == (1, 2)
        assert httpx.get(f"{server.url}/v1/runs/r1").json()["reports"] == 2
        steps = httpx.get(f"{server.url}/v1/runs/r1/steps").json()["steps"]
        assert [s["step"] for s in steps] == [200]
    finally:
        server.stop()


@pytest.mark.parametrize("run", [".", "..", "...", ".hidden"])
def test_run_ids_made_of_dots_are_refused(server: ServerProcess, run: str) -> None:
    # http.client sends the path as written (httpx would resolve "." and "..")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        body = b'{"step":1}'
        headers = {"Content-Type": "application/json"}
        conn.request("POST", f"/v1/runs/{run}/reports", body=body, headers=headers)
        response = conn.getresponse()
        assert response.status == 422, response.read()
        response.read()
    finally:
        conn.close()
    assert httpx.get(f"{server.url}/v1/runs").json()["runs"] == []


def _serve_and_exit(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "entmon.cli", "serve", "--port", str(free_port())]
    clean = ServerProcess(env).env
    return subprocess.run(
        command, env=clean, capture_output=True, text=True, timeout=SERVER_START_TIMEOUT_S
    )


@pytest.mark.parametrize(
    ("tokens", "says"),
    [
        ({}, "production needs tokens"),
        ({"ENTMON_ADMIN_TOKENS": "short"}, "placeholder or short token"),
    ],
)
def test_production_without_real_tokens_exits_with_a_clear_message(
    redis_url: str, tokens: dict[str, str], says: str
) -> None:
    env = {"ENTMON_REDIS_URL": redis_url, "ENTMON_ENVIRONMENT": "production"} | tokens
    done = _serve_and_exit(env)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "entmon serve: invalid configuration:" in done.stderr
    assert says in done.stderr


# 7. Open access (no tokens) serves the local machine only.
def test_without_tokens_a_foreign_host_header_is_refused(server: ServerProcess) -> None:
    assert post_raw(server.url, b'{"step":1}').status_code == 200
    evil = {"host": "attacker.example:8000"}
    r = httpx.delete(f"{server.url}/v1/runs/r1", headers=evil)  # DNS rebinding
    assert r.status_code == 403
    assert "not loopback" in r.json()["detail"]
    put = httpx.put(
        f"{server.url}/v1/runs/r1/control",
        json={"loss_mode": "kl_cov"},
        headers=evil | {"If-Match": '"0"'},
    )
    assert put.status_code == 403
    assert httpx.get(f"{server.url}/v1/runs/r1").status_code == 200  # still there
    for host in ("localhost", "127.0.0.1:80", "[::1]:8000", "LOCALHOST."):
        assert httpx.get(f"{server.url}/v1/runs/r1", headers={"host": host}).status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_without_tokens_a_body_not_sent_as_json_is_refused(
    server: ServerProcess, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    r = httpx.post(f"{server.url}/v1/runs/r1/reports", content=b'{"step":1}', headers=headers)
    assert r.status_code == 415, r.text
    assert "application/json" in r.json()["detail"]
    assert httpx.get(f"{server.url}/v1/runs/r1").status_code == 404


def test_with_tokens_any_host_and_the_token_decides(redis_url: str, tmp_path: Path) -> None:
    env = {"ENTMON_REDIS_URL": redis_url, "ENTMON_ADMIN_TOKENS": ADMIN}
    server = ServerProcess(env | {"ENTMON_DATA_DIR": str(tmp_path)}).start()
    try:
        headers = {"host": "monitor.example", "authorization": f"Bearer {ADMIN}"}
        r = httpx.post(f"{server.url}/v1/runs/r1/reports", json={"step": 1}, headers=headers)
        assert r.status_code == 200
    finally:
        server.stop()


# 5. One embedded Redis per data directory.
def test_a_second_serve_on_the_same_data_dir_refuses(tmp_path: Path) -> None:
    first = ServerProcess({"ENTMON_DATA_DIR": str(tmp_path)}).start()
    try:
        assert post_raw(first.url, b'{"step":1}').status_code == 200
        assert first.process is not None
        done = _serve_and_exit({"ENTMON_DATA_DIR": str(tmp_path)})
        assert done.returncode == 1
        assert f"in use by another entmon (pid {first.process.pid})" in done.stderr
        assert "Traceback" not in done.stderr
        assert post_raw(first.url, b'{"step":2}').json()["accepted"] == 1  # the first is fine
    finally:
        first.stop()
    # the lock goes with the process: a new serve on the directory starts and has the data
    again = ServerProcess({"ENTMON_DATA_DIR": str(tmp_path)}).start()
    try:
        assert httpx.get(f"{again.url}/v1/runs/r1").json()["reports"] == 2
    finally:
        again.stop()


# 8. A cap on runs: any ingest token could otherwise create runs without limit.
def test_a_report_creating_a_run_beyond_the_cap_is_429(redis_url: str, tmp_path: Path) -> None:
    env = {"ENTMON_REDIS_URL": redis_url, "ENTMON_MAX_RUNS": "2"}
    server = ServerProcess(env | {"ENTMON_DATA_DIR": str(tmp_path)}).start()
    try:
        assert post_raw(server.url, b'{"step":1}', run="a").status_code == 200
        assert post_raw(server.url, b'{"step":1}', run="b").status_code == 200
        third = post_raw(server.url, b'{"step":1}', run="c")
        assert third.status_code == 429
        assert "at most 2 runs (ENTMON_MAX_RUNS)" in third.json()["detail"]
        assert post_raw(server.url, b'{"step":2}', run="a").json()["accepted"] == 1  # existing
        assert httpx.delete(f"{server.url}/v1/runs/b").status_code == 204
        assert post_raw(server.url, b'{"step":1}', run="c").json()["accepted"] == 1  # room again
        runs = {r["run"] for r in httpx.get(f"{server.url}/v1/runs").json()["runs"]}
        assert runs == {"a", "c"}
    finally:
        server.stop()
