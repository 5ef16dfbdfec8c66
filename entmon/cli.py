"""The `entmon` command: serve, dashboard, demo, replay."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from entmon.commands import dashboard_command
from entmon.demo.testbeds import DEFAULT as DEFAULT_TESTBED
from entmon.demo.testbeds import NAMES as TESTBEDS
from entmon.wire.knobs import LOSS_MODES

DEFAULT_PORT = 8000
DEFAULT_DASHBOARD_PORT = 8501


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from monitor.embedded_redis import DataDirInUse, EmbeddedRedis
    from monitor.settings import Settings
    from monitor.workers import bind, run, serve_workers

    try:
        settings = Settings()
    except ValidationError as e:
        problems = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
        print(f"entmon serve: invalid configuration: {problems}", file=sys.stderr)
        return 2
    if not settings.auth_enabled and not _is_loopback(args.host):
        print(
            f"entmon serve: refusing to bind {args.host} with no tokens configured (open access). "
            "Set ENTMON_INGEST_TOKENS / ENTMON_ADMIN_TOKENS, or bind 127.0.0.1.",
            file=sys.stderr,
        )
        return 2
    embedded = None
    if settings.redis_url is None:  # the embedded default, started once for every worker
        embedded = EmbeddedRedis(
            settings.data_dir / "redis", appendfsync=settings.redis_appendfsync
        )
        try:
            embedded.start()
        except DataDirInUse as e:
            print(f"entmon serve: refusing to start: {e}", file=sys.stderr)
            return 1
        embedded.supervise(settings.redis_restart_attempts)  # restarted here, for every worker
        os.environ["ENTMON_REDIS_URL"] = embedded.url
        os.environ["ENTMON_EMBEDDED_STATUS_FILE"] = str(embedded.status_file)
    # uvicorn re-raises SIGTERM after its graceful shutdown; turn it into SystemExit so the
    # `finally` below still stops the embedded Redis.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        if args.workers > 1:
            return serve_workers(args.host, args.port, args.workers, args.log_level)
        run(bind(args.host, args.port, reuse_port=False), args.log_level)
    except (OSError, ValueError) as e:  # the port is taken, the host unknown, ...
        print(
            f"entmon serve: cannot listen on {args.host}:{args.port}: {e} "
            "(another port: --port P; vLLM and TRL's vllm-serve also default to 8000)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    os.environ.setdefault("ENTMON_URL", f"http://127.0.0.1:{DEFAULT_PORT}")
    command = dashboard_command(args.port)
    os.execv(command[0], command)  # replaces this process: Ctrl-C goes straight to Streamlit


def cmd_demo(args: argparse.Namespace) -> int:
    from entmon.demo.stack import run_demo

    return run_demo(
        steps=args.steps,
        headless=args.headless,
        port=args.port,
        dashboard_port=args.dashboard_port,
        seed=args.seed,
        switch_at=args.switch_at,
        switch_to=args.switch_to,
        pace=args.pace,
        testbed=args.testbed,
        thermostat=args.thermostat,
    )


def cmd_replay(args: argparse.Namespace) -> int:
    try:
        from client.replay import replay_file
        from client.spool import SpoolError
    except ImportError as e:
        print(
            f'entmon replay needs the client: pip install "entmon[client]" ({e})', file=sys.stderr
        )
        return 2
    url = args.url or os.environ.get("ENTMON_URL") or f"http://127.0.0.1:{DEFAULT_PORT}"
    token = args.token or os.environ.get("ENTMON_TOKEN")
    try:
        result = replay_file(args.file, url=url, token=token)
    except SpoolError as e:
        print(f"entmon replay: {e}", file=sys.stderr)
        return 2
    print(
        f"run {result.run}: {result.accepted} reports stored, {result.duplicates} already there, "
        f"{result.rejected} rejected"
    )
    if result.rejected:
        print(f"  first rejection: {result.first_rejection}", file=sys.stderr)
    if not result.complete:
        print(
            f"entmon replay: stopped, {result.left} bytes left in {args.file} ({result.failure}); "
            "run it again when the monitor is back",
            file=sys.stderr,
        )
        return 1
    print(f"{args.file} fully replayed and removed")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="entmon", description=__doc__)
    defaults = argparse.ArgumentDefaultsHelpFormatter  # --help shows each default
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        formatter_class=defaults,
        help="run the monitor API (embedded Redis unless ENTMON_REDIS_URL)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    serve.add_argument("--log-level", default="info", help="uvicorn's log level")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes, each on its own SO_REUSEPORT socket so the kernel spreads connections; "
        "they share Redis and keep no state",
    )
    serve.set_defaults(func=cmd_serve)

    dash = sub.add_parser(
        "dashboard",
        formatter_class=defaults,
        help="run the Streamlit dashboard (API at ENTMON_URL)",
    )
    dash.add_argument("--port", type=int, default=DEFAULT_DASHBOARD_PORT, help="port to serve on")
    dash.set_defaults(func=cmd_dashboard)

    demo = sub.add_parser(
        "demo", formatter_class=defaults, help="embedded Redis + monitor + dashboard + a live run"
    )
    demo.add_argument("--headless", action="store_true", help="no browser; exit 0 when done")
    demo.add_argument(
        "--testbed", choices=TESTBEDS, default=DEFAULT_TESTBED,
        help="toy: codes cracked from scratch; lm: a tiny LM pretrained on noisy arithmetic "
        "traces (pretrained once, cached in ~/.cache/entmon or ENTMON_CACHE_DIR)",
    )  # fmt: skip
    demo.add_argument("--steps", type=int, default=300, help="GRPO steps of the run")
    demo.add_argument("--seed", type=int, default=0, help="seed of the task and model")
    demo.add_argument(
        "--switch-at", type=int, default=None, metavar="STEP",
        help="after this step (from 0), change the loss mode via the API as the dashboard does",
    )  # fmt: skip
    demo.add_argument(
        "--switch-to", choices=LOSS_MODES, default="kl_cov", help="the loss mode of --switch-at"
    )
    demo.add_argument(
        "--pace", type=float, default=None, metavar="SECONDS",
        help="least time per step, to follow the run (unset: 1 with the dashboard, 0 headless)",
    )  # fmt: skip
    demo.add_argument(
        "--thermostat", action="store_true",
        help="enable the service's entropy thermostat on the run: it drives the entropy bonus so "
        "the entropy follows 0.8 -> 0.1 x its start over 300 steps (monitor/thermostat/)",
    )  # fmt: skip
    demo.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="monitor port (a free one if it is busy)"
    )
    demo.add_argument(
        "--dashboard-port", type=int, default=DEFAULT_DASHBOARD_PORT,
        help="dashboard port (a free one if it is busy)",
    )  # fmt: skip
    demo.set_defaults(func=cmd_demo)

    replay = sub.add_parser(
        "replay", formatter_class=defaults, help="upload a client spool file (deleted once stored)"
    )
    replay.add_argument("file", type=Path)
    replay.add_argument("--url", help="monitor URL (default: $ENTMON_URL or 127.0.0.1:8000)")
    replay.add_argument("--token", help="ingest token (default: $ENTMON_TOKEN)")
    replay.set_defaults(func=cmd_replay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
