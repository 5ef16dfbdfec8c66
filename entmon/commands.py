"""Command lines that start entmon's own processes (the demo and the tests start them too)."""

from __future__ import annotations

import sys
from importlib.resources import files


def entmon_command(*args: str) -> list[str]:
    """`entmon ARGS...` run by this interpreter (no PATH lookup: works in any environment)."""
    return [sys.executable, "-m", "entmon.cli", *args]


def dashboard_command(port: int) -> list[str]:
    """Streamlit serving the installed dashboard package's app on loopback."""
    app = files("dashboard") / "app.py"
    return [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.port", str(port),
        "--server.address", "127.0.0.1",
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "viewer",
    ]  # fmt: skip
