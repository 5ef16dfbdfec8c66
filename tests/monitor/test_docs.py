"""/docs works offline: Swagger UI's assets are served by the service itself."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import Page, expect

from tests.conftest import ServerProcess


def test_the_docs_page_loads_only_same_origin_assets(server: ServerProcess) -> None:
    html = httpx.get(f"{server.url}/docs").raise_for_status().text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(a.startswith("/") and not a.startswith("//") for a in assets), assets
    for asset in assets:
        r = httpx.get(f"{server.url}{asset}")
        assert r.status_code == 200 and len(r.content) > 100, asset
    assert "/openapi.json" in html


def test_the_docs_render_in_a_browser_with_no_network_but_the_service(
    server: ServerProcess, page: Page
) -> None:
    blocked: list[str] = []

    def only_the_service(route):  # type: ignore[no-untyped-def]
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_service)
    page.goto(f"{server.url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("entmon", timeout=30_000)
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    assert blocked == []
