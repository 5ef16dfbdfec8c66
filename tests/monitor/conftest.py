from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from monitor.main import create_app
from monitor.settings import Settings
from tests.conftest import LOCAL


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url)


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    """The app in process (lifespan included) against the session's real Redis."""
    with TestClient(create_app(settings), base_url=LOCAL) as client:
        yield client
