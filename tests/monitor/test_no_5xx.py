"""Property: whatever a client sends, a real `entmon serve` never answers 5xx and never hangs.

Arbitrary JSON (unicode with lone surrogates, deep nesting, huge integers, NaN and infinities,
report-shaped or not) to every endpoint that takes a body, arbitrary query strings and run ids
to every endpoint. schemathesis (test_schemathesis.py) covers what the OpenAPI document allows;
this covers what it does not. Kept to a modest number of examples: well under a minute.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from entmon.wire.stats import STAT_NAMES
from tests.conftest import ServerProcess

EXAMPLES = 40
REQUEST_TIMEOUT_S = 30.0  # a hang fails the test; nothing here is close to it when all is well
SURROGATES = st.sampled_from(["\udc80", "\ud800", "x\udfffy", "\ud83d"])
TEXT = st.one_of(
    st.text(max_size=12),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=4), SURROGATES, st.text(max_size=4)),
)
HUGE = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400),
    st.integers(min_value=-(2**70), max_value=2**70),
)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
SCALARS = st.one_of(st.none(), st.booleans(), HUGE, FLOATS, TEXT)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=16,
)
NUMBERS = st.one_of(HUGE, FLOATS, st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"]))
TOP_TOKEN = st.fixed_dictionaries(
    {"cov": NUMBERS, "logp": NUMBERS, "advantage": NUMBERS},
    optional={"text": TEXT, "token_id": HUGE, "position": HUGE, "entropy": NUMBERS},
)
REPORT = st.fixed_dictionaries(
    {"step": HUGE},
    optional={
        "rank": HUGE,
        "world_size": HUGE,
        "time": NUMBERS,
        "control_version": HUGE,
        "stats": st.dictionaries(st.sampled_from(STAT_NAMES) | TEXT, NUMBERS, max_size=4),
        "user": st.dictionaries(TEXT, NUMBERS | JSON, max_size=4),
        "top_tokens": st.lists(TOP_TOKEN, max_size=3),
        "histograms": st.dictionaries(st.sampled_from(["entropy", "covariance"]) | TEXT, JSON),
    },
)
RUNS = st.one_of(st.sampled_from(["r1", "r-2", "a.b"]), TEXT)
PARAMS = st.sampled_from(
    ["start", "end", "every", "max_points", "stats", "name", "step", "limit", "fit_steps",
     "smooth", "floor", "horizon", "trend_points", "health_steps"]
)  # fmt: skip


def body_text(value: Any, depth: int) -> bytes:
    """json.dumps writes NaN / Infinity literals and escapes lone surrogates as \\udc80."""
    text = json.dumps(value)
    return ("[" * depth + text + "]" * depth).encode()


BODIES = st.builds(
    body_text,
    st.one_of(REPORT, st.lists(REPORT, max_size=3), JSON),
    st.one_of(st.just(0), st.just(0), st.integers(0, 30), st.integers(5_000, 200_000)),
)


def encode(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


QUERIES = st.lists(
    st.tuples(PARAMS | TEXT, st.one_of(HUGE.map(str), FLOATS.map(str), TEXT)), max_size=4
).map(lambda pairs: "&".join(f"{encode(k)}={encode(v)}" for k, v in pairs))
PATHS = (
    "/v1/runs/{run}",
    "/v1/runs/{run}/steps",
    "/v1/runs/{run}/histograms",
    "/v1/runs/{run}/top_tokens",
    "/v1/runs/{run}/control",
    "/v1/runs/{run}/audit",
    "/v1/runs/{run}/analysis",
    "/v1/runs",
    "/metrics",
    "/healthz",
    "/readyz",
)
# No shrinking: against a real server it can take minutes, and the assertion already names the
# request that failed.
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
    phases=(Phase.explicit, Phase.generate),
)


def no_5xx(response: httpx.Response) -> None:
    assert response.status_code < 500, (
        response.request.method,
        response.request.url,
        response.text,
    )


def test_any_body_to_any_body_taking_endpoint_is_never_a_5xx(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as client:
        seeded = client.post("/v1/runs/r1/reports", json=[{"step": s} for s in range(3)])
        assert seeded.status_code == 200

        @FUZZ
        @given(body=BODIES, run=RUNS, if_match=TEXT)
        def check(body: bytes, run: str, if_match: str) -> None:
            headers = {"content-type": "application/json"}
            path = f"/v1/runs/{encode(run)}"
            no_5xx(client.post(f"{path}/reports", content=body, headers=headers))
            control = client.put(
                f"{path}/control",
                content=body,
                headers=headers | {"if-match": encode(if_match)},
            )
            no_5xx(control)
            zero = client.put(f"{path}/control", content=body, headers=headers | {"if-match": "0"})
            no_5xx(zero)

        check()


def test_any_query_and_run_id_to_any_endpoint_is_never_a_5xx(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as client:
        seeded = client.post(
            "/v1/runs/r1/reports",
            json=[
                {"step": s, "stats": {"entropy": 1.0 / (s + 1), "reward": 0.1 * s}}
                for s in range(30)
            ],
        )
        assert seeded.status_code == 200

        @FUZZ
        @given(run=RUNS, query=QUERIES, path=st.sampled_from(PATHS))
        def check(run: str, query: str, path: str) -> None:
            url = path.format(run=encode(run)) + (f"?{query}" if query else "")
            no_5xx(client.get(url))

        check()

        # and deleting any run id, last (it empties what the reads above look at)
        @FUZZ
        @given(run=RUNS)
        def delete(run: str) -> None:
            no_5xx(client.delete(f"/v1/runs/{encode(run)}"))

        delete()
