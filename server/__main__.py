"""Command line: ``python -m server {dev,serve,worker,migrate,create-admin,seed-plans}``.

Configuration errors end the command with one line naming the variable and
exit status 2, never a traceback. Each command imports only what it runs, inside
its function: ``migrate`` or ``create-admin`` do not load the app or the worker
(seconds of imports), and ``serve``/``worker`` freeze what they imported (``gc.freeze``)
and set the collector's ``GC_THRESHOLDS``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from server.devstack import running_stack_settings
from server.foundation.settings import Settings, SettingsError, load_settings, parse_gc_thresholds


def _settings(*required: str, dev_stack: bool = True) -> Settings:
    """The settings from the environment; with no ``DATABASE_URL`` there, those of the dev
    stack running from ``DATA_DIR`` (``./scripts/dev``) fill in what the environment leaves out."""
    environ: dict[str, str] = dict(os.environ)
    if dev_stack and not environ.get("DATABASE_URL"):
        environ = running_stack_settings(Path(environ.get("DATA_DIR") or Settings().data_dir)) | environ
    try:
        settings = load_settings(environ)
    except SettingsError as exc:
        sys.exit(f"lounges: {exc}")
    missing = [name.upper() for name in required if not getattr(settings, name)]
    if missing:
        sys.exit(f"lounges: {', '.join(missing)} must be set (or use `python -m server dev` for embedded defaults)")
    return settings


STOCK_WS_PROTOCOL = "websockets-sansio"  # uvicorn's own sans-I/O protocol, which the gateway's extends


def _websocket_protocol() -> type[asyncio.Protocol] | str:
    """The gateway's frame-writing WebSocket protocol, when the installed uvicorn still has
    the private API it builds on; otherwise, after one warning, uvicorn's stock protocol
    (``"auto"`` if even its module is gone): an upgrade costs speed, not correctness."""
    log = logging.getLogger("lounges.realtime")
    try:
        # Imported here, like every command's modules, and guarded: it imports uvicorn's private module.
        from server.gateway.uvicorn_writer import GatewayWebSocketProtocol, missing_private_api
    except ImportError as exc:
        log.warning(
            "uvicorn's sans-I/O WebSocket protocol is gone; frames are sent through ASGI", extra={"error": repr(exc)}
        )
        return "auto"
    missing = missing_private_api()
    if missing:
        log.warning(
            "uvicorn's WebSocket protocol lacks what the frame writer uses; frames are sent through ASGI",
            extra={"missing": missing},
        )
        return STOCK_WS_PROTOCOL
    return GatewayWebSocketProtocol


def _shared_metrics_dir(workers: int, settings: Settings) -> str | None:
    """For ``--workers N``: a fresh directory where every web process keeps its metrics, so a
    scrape of any one answers for all (prometheus_client's multiprocess mode). It must be set
    before prometheus_client is first imported, which fixes the mode for the process and the
    children forked from it."""
    if workers <= 1 or not settings.metrics_enabled:
        return None
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its multiprocess directory was set")
    directory = tempfile.mkdtemp(prefix="lounges-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    return directory


def serve(args: argparse.Namespace) -> None:
    settings = _settings("database_url", "redis_url")
    metrics_dir = _shared_metrics_dir(args.workers, settings)

    import uvicorn

    from server.app import create_app
    from server.foundation.logging import configure_logging
    from server.foundation.metrics import mark_process_dead
    from server.gateway.endpoint import gateway_dispatch
    from server.gateway.shutdown import DrainingServer
    from server.process_group import ProcessGroup

    configure_logging(settings.log_level, settings.log_format)  # before the protocol check may warn
    host, port = args.host or settings.host, args.port or settings.port
    # uvicorn's sans-I/O protocol plus synchronous writes of prepared frames, when the
    # installed uvicorn allows (server/gateway/frame_writer.py); "uvicorn" runs the stock one.
    ws_protocol = _websocket_protocol() if args.ws_protocol == "gateway" else STOCK_WS_PROTOCOL

    def run(sockets: list[socket.socket] | None) -> None:
        """One node: the app, with sockets on the gateway's path going to the gateway."""
        app = create_app(settings)
        config = uvicorn.Config(
            gateway_dispatch(app, app.state),
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            # Forwarded headers are applied by the app, from TRUSTED_PROXIES only (server/app.py);
            # uvicorn's default would believe any caller on 127.0.0.1.
            proxy_headers=False,
            interface="asgi3",  # gateway_dispatch is a plain function returning coroutines
            ws=ws_protocol,
            ws_max_size=max(settings.ws_max_frame_bytes * 4, 1024 * 1024),
            ws_ping_interval=None,  # the protocol's own pings (WS_PING_INTERVAL) detect dead peers
            ws_per_message_deflate=False,  # a zlib context per socket costs far more than the bytes it saves here
            timeout_graceful_shutdown=20,
        )
        DrainingServer(config, app).run(sockets)

    _tune_collector(settings)
    if args.workers <= 1:
        run(None)
        return
    listener = uvicorn.Config(app=run, host=host, port=port, log_config=None).bind_socket()
    try:
        status = ProcessGroup(args.workers, listener, lambda sock: run([sock]), on_exit=mark_process_dead).run()
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    sys.exit(status)


def _tune_collector(settings: Settings) -> None:
    """Before serving: everything imported so far lives as long as the process (and, with
    --workers, is shared by the forked nodes), so it is frozen out of the collector's full
    passes; and the collector runs at ``GC_THRESHOLDS``, so that objects living a few
    milliseconds die young instead of filling the old generation (whose full passes then
    stall the whole process for ~1 µs per object: over a second at 10,000 sockets)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*parse_gc_thresholds(settings.gc_thresholds))


def worker(args: argparse.Namespace) -> None:
    from workers.main import check_health, create_worker

    settings = _settings("database_url", "redis_url")
    if args.check:
        healthy, detail = asyncio.run(check_health(settings))
        print(
            f"lounges: worker {'healthy' if healthy else 'unhealthy'}: {detail}",
            file=sys.stdout if healthy else sys.stderr,
        )
        sys.exit(0 if healthy else 1)
    from server.foundation.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    worker = create_worker(settings)
    _tune_collector(settings)
    worker.run()


def migrate(args: argparse.Namespace) -> None:
    from server.foundation.migrations import apply_migrations

    database_url = _settings("database_url").database_url
    assert database_url is not None  # _settings exits when it is missing
    asyncio.run(apply_migrations(database_url))


def create_admin(args: argparse.Namespace) -> None:
    import getpass

    from server.domain.accounts.admin_cli import create_or_promote_admin

    settings = _settings("database_url")
    password = os.environ.get("LOUNGES_ADMIN_PASSWORD") or getpass.getpass("Password for the admin: ")
    outcome = asyncio.run(create_or_promote_admin(settings, args.email, args.full_name, password))
    print(f"lounges: {outcome}")


def seed_plans(args: argparse.Namespace) -> None:
    from server.domain.billing.services import seed_plans as seed

    settings = _settings("database_url")
    for line in asyncio.run(seed(settings, pro_price=args.pro_price, team_price=args.team_price)):
        print(f"lounges: {line}")


def dev(args: argparse.Namespace) -> None:
    from server.devstack import run_dev_stack

    sys.exit(run_dev_stack(_settings(dev_stack=False)))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m server", description="Lounges backend")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "dev", help="run web + worker on embedded PostgreSQL, Valkey and S3 (what is not configured)"
    ).set_defaults(handler=dev)
    serve_parser = commands.add_parser("serve", help="run the web server (uvicorn)")
    serve_parser.add_argument("--host")
    serve_parser.add_argument("--port", type=int)
    serve_parser.add_argument(
        "--ws-protocol",
        choices=("gateway", "uvicorn"),
        default="gateway",
        help="WebSocket protocol: uvicorn's plus direct frame writes (default), or uvicorn's stock one",
    )
    serve_parser.add_argument(
        "--workers",
        type=_positive,
        default=os.environ.get("WEB_CONCURRENCY") or "1",
        help="web processes sharing the port, each a full node (default: WEB_CONCURRENCY, else 1)",
    )
    serve_parser.set_defaults(handler=serve)
    worker_parser = commands.add_parser("worker", help="run the arq worker")
    worker_parser.add_argument("--check", action="store_true", help="exit 0 only if a worker is alive")
    worker_parser.set_defaults(handler=worker)
    commands.add_parser("migrate", help="apply database migrations").set_defaults(handler=migrate)
    admin_parser = commands.add_parser(
        "create-admin",
        help="create the first admin, or make an existing user admin (password from LOUNGES_ADMIN_PASSWORD or a prompt)",
    )
    admin_parser.add_argument("--email", required=True)
    admin_parser.add_argument("--full-name", default="Administrator")
    admin_parser.set_defaults(handler=create_admin)
    plans_parser = commands.add_parser(
        "seed-plans", help="create the free/pro/team plans if missing (idempotent, by code)"
    )
    plans_parser.add_argument("--pro-price", help="Stripe price id of pro (default: STRIPE_PRICE_PRO)")
    plans_parser.add_argument("--team-price", help="Stripe price id of team (default: STRIPE_PRICE_TEAM)")
    plans_parser.set_defaults(handler=seed_plans)
    args = parser.parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
