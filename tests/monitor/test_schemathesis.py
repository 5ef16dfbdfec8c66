"""Property-based run of the whole API from its own OpenAPI document against a real server.

Driven through hypothesis directly: schemathesis's pytest plugin does not support pytest 9 yet.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import CheckFunction, positive_data_acceptance

from tests.conftest import ServerProcess

EXAMPLES_PER_OPERATION = 25
# If-Match is optional in the schema so that its absence answers 428 (RFC 6585), not 422;
# schemathesis would count that 428 as a rejection of valid data. (The thermostat's settings are
# law.Settings as a JSON object, checked by the law: a schema-valid object may still be a 422.)
CONDITIONAL = {("PUT", "/v1/runs/{run}/control"), ("PUT", "/v1/runs/{run}/thermostat")}


def fuzz(operation: schemathesis.APIOperation, excluded: list[CheckFunction]) -> None:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(excluded_checks=excluded)

    check()


def test_every_operation_conforms_and_never_answers_5xx(server: ServerProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    for operation in operations:
        conditional = (operation.method.upper(), operation.path) in CONDITIONAL
        fuzz(operation, [positive_data_acceptance] if conditional else [])
