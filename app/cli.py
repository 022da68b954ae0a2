"""Thin commands: serve, migrate, keys, hash-password, seed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import getpass
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson

from app.logs import setup_logging
from app.settings import Settings, SettingsError, from_env

log = logging.getLogger("vidmetrics")
# how `serve --workers N` hands its worker processes what they need (never logged)
WORKER_SETTINGS = "VIDMETRICS_WORKER_SETTINGS"
WORKER_EXAMPLE_KEY = "VIDMETRICS_EXAMPLE_KEY"


@contextlib.contextmanager
def database(settings: Settings, *, own: bool = False) -> Iterator[str]:
    """storage.embedded.database, imported when a command needs a database."""
    from app.storage import embedded

    with embedded.database(settings, own=own) as url:
        yield url


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(0)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from app.application import create_app
    from app.auth.credentials import admin_password
    from app.auth.keys import example_key
    from app.server_limits import fit_to_fd_limit
    from app.storage import db

    settings, new_password = admin_password(settings)
    settings = fit_to_fd_limit(settings)
    with database(settings, own=True) as url:
        if not args.no_migrate:
            db.migrate(url, progress=True)
        key, new_key = asyncio.run(example_key(url, settings))
        log.info(_announcement(settings, url, new_password, key, new_key))
        workers = args.workers or settings.workers
        if workers > 1:
            # each worker builds its own app (pool, writer, key cache) from the parent's
            # settings, as fitted above, handed over whole
            os.environ[WORKER_SETTINGS] = dataclasses.replace(settings, database_url=url).to_json()
            os.environ[WORKER_EXAMPLE_KEY] = key or ""
            app: object = "app.cli:worker_app"
            log.info("starting %d worker processes on one port", workers)
        else:
            app = create_app(settings, url, example_key=key)
        status = _run_server(app, settings, workers)
        if status:
            log.error("vidmetrics failed to start (exit status %d)", status)
        else:
            log.info("stopped")
    return status


def _announcement(
    settings: Settings, url: str, new_password: str | None, key: str | None, new_key: bool
) -> str:
    """The one line `serve` starts with: where, which database, how to log in."""
    from app.storage import db

    where = (
        f"embedded PostgreSQL in {settings.data_dir.resolve()}"
        if settings.embedded
        else db.redact(url)
    )
    shown = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
    line = f"vidmetrics on http://{shown}:{settings.port}/ (database: {where})"
    if new_password:
        line += (
            f"; admin login {settings.user} / {new_password} "
            f"(kept in {settings.data_dir / 'admin-password'})"
        )
    elif settings.embedded and settings.auth_enabled and not settings.password_hash:
        line += f"; admin password in {settings.data_dir / 'admin-password'}"
    if key:
        line += f"; example ingest key {key}" + (" (new)" if new_key else "")
    return line


def _run_server(app: object, settings: Settings, workers: int) -> int:
    """uvicorn until it stops; its exit status."""
    import uvicorn

    from app.ingest.socket import SocketProtocol
    from app.server_limits import http_protocol

    # uvicorn re-raises the signal that stopped it once it has shut down; make SIGTERM
    # an exception (as SIGINT already is) so the `finally` that stops PostgreSQL runs.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        uvicorn.run(
            app,  # type: ignore[arg-type]
            factory=workers > 1,
            workers=workers if workers > 1 else None,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            access_log=False,  # access logs would record client addresses
            server_header=False,
            proxy_headers=False,
            ws_max_size=settings.max_frame_bytes,
            ws_per_message_deflate=False,
            timeout_graceful_shutdown=10,
            log_config=None,
            ws=SocketProtocol,
            ws_ping_interval=None,  # pings: Hub.sweep
            backlog=4096,
            http=http_protocol(settings),
            timeout_keep_alive=5,
        )
    except KeyboardInterrupt:
        pass
    except SystemExit as exc:  # uvicorn exits 3 when the app fails to start
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def worker_app() -> object:
    """The app of one worker process of `serve --workers N`: the parent has migrated the
    database and handed over its Settings (with the database's URL)."""
    from app.application import create_app
    from app.server_limits import http_protocol

    settings = Settings.from_json(os.environ[WORKER_SETTINGS])
    assert settings.database_url is not None
    setup_logging(settings)
    http_protocol(settings)
    return create_app(
        settings,
        settings.database_url,
        example_key=os.environ.get(WORKER_EXAMPLE_KEY) or None,
    )


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from app.storage import db

    with database(settings) as url:
        if args.revision.startswith("-") or args.revision == "base":
            db.downgrade(url, args.revision)
        else:
            db.migrate(url, args.revision, progress=True)
    print(f"schema at {args.revision}")
    return 0


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    from app.auth.keys import generate_key
    from app.storage import db, key_store

    async def run(url: str) -> int:
        conn = await db.connect(url)
        try:
            if args.action == "create":
                try:
                    row = await key_store.insert_key(conn, args.key or generate_key())
                except key_store.KeyExists:
                    print(f"error: key {args.key!r} already exists", file=sys.stderr)
                    return 1
                print(row.key)
            elif args.action == "list":
                for row in await key_store.list_keys(conn):
                    state = (
                        f"revoked {row.disabled_at:%Y-%m-%d %H:%M}" if row.disabled_at else "active"
                    )
                    print(f"{row.key}\t{state}")
            else:
                if not await key_store.revoke_key(conn, args.key):
                    print(f"error: no key {args.key!r}", file=sys.stderr)
                    return 1
                print(f"revoked {args.key}")
            return 0
        finally:
            await conn.close()

    if args.action == "revoke" and not args.key:
        print("error: keys revoke needs a KEY", file=sys.stderr)
        return 2
    with database(settings) as url:
        return asyncio.run(run(url))


def cmd_hash_password(args: argparse.Namespace, settings: Settings) -> int:
    from app.auth.basic import hash_password

    password = args.password
    if password is None:
        password = (
            sys.stdin.readline().rstrip("\n")
            if not sys.stdin.isatty()
            else getpass.getpass("password: ")
        )
    if not password:
        print("error: empty password", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def cmd_seed(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from app.storage import demo

    started = time.perf_counter()
    with (
        database(settings) as url,
        tqdm(total=args.sessions, unit="session", disable=args.quiet, file=sys.stderr) as bar,
    ):
        n_events = asyncio.run(
            demo.seed_key(
                url,
                args.key,
                videos_count=args.videos,
                sessions=args.sessions,
                days=args.days,
                seed_value=args.seed,
                progress=bar.update,
            )
        )
    took = time.perf_counter() - started
    print(
        f"seeded {args.sessions} sessions, {n_events} events for {args.videos} videos "
        f"over {args.days} days under key {args.key!r} in {took:.1f}s "
        f"({args.sessions / took:,.0f} sessions/s)"
    )
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from app.errors import BadRequest
    from app.model.results import Summary
    from app.query import exporting, params
    from app.storage import db, summaries

    query: dict[str, Any] = {}
    body: dict[str, Any] = {"timeframe": args.timeframe, "format": args.format, "query": query}
    try:
        if args.key:
            query["key"] = args.key
        if args.video:
            query["video"] = orjson.loads(args.video)
        if not body["query"]:
            del body["query"]
        if args.identifier:
            body["identifier"] = args.identifier
        q = params.export_query(body, dt.datetime.now(dt.UTC), settings.retention_days)
        exporting.encoder(q.format)
    except orjson.JSONDecodeError:
        print("error: --video must be a JSON object", file=sys.stderr)
        return 2
    except (BadRequest, exporting.FormatUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def run(url: str) -> int:
        conn = await db.connect(url)
        try:
            total = await summaries.count_sessions(conn, q.selection, q.window)
            bar = tqdm(total=total, unit="session", disable=args.quiet, file=sys.stderr)

            async def counted() -> AsyncIterator[list[Summary]]:
                async for batch in summaries.stream(conn, q.selection, q.window):
                    bar.update(len(batch))
                    yield batch

            with open(args.output, "wb") as out:
                async for chunk in exporting.encode(q.format, counted()):
                    out.write(chunk)
            bar.close()
            return total
        finally:
            await conn.close()

    with database(settings) as url:
        total = asyncio.run(run(url))
    print(f"exported {total} sessions to {args.output} ({q.format})")
    return 0


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("vidmetrics")
    except PackageNotFoundError:  # running from a checkout without installing it
        return "unknown"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="vidmetrics", description=__doc__)
    top.add_argument("--version", action="version", version=f"vidmetrics {version()}")
    sub = top.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server (migrations first)")
    serve.add_argument("--no-migrate", action="store_true", help="do not apply migrations")
    serve.add_argument(
        "--workers",
        type=int,
        default=0,
        help="server processes on one port (default: METRICS_WORKERS, 1)",
    )
    serve.set_defaults(func=cmd_serve)
    migrate = sub.add_parser("migrate", help="upgrade the schema (idempotent)")
    migrate.add_argument(
        "revision",
        nargs="?",
        default="head",
        help="target revision (default head; 'base' downgrades everything)",
    )
    migrate.set_defaults(func=cmd_migrate)
    keys = sub.add_parser("keys", help="manage ingest keys")
    keys.add_argument("action", choices=["create", "list", "revoke"])
    keys.add_argument("key", nargs="?", help="the key (create: custom value; revoke: which)")
    keys.set_defaults(func=cmd_keys)
    hp = sub.add_parser("hash-password", help="print an argon2id hash for METRICS_PASSWORD_HASH")
    hp.add_argument("password", nargs="?", help="the password (default: prompt or stdin)")
    hp.set_defaults(func=cmd_hash_password)
    export = sub.add_parser("export", help="write per-session summaries to a file")
    export.add_argument("--format", choices=["ndjson", "csv", "parquet"], default="ndjson")
    export.add_argument("--output", "-o", required=True, help="the file to write")
    export.add_argument("--key", help="every video under this ingest key")
    export.add_argument("--video", help="videos whose metadata contains this JSON object")
    export.add_argument("--identifier", help="a legacy video identifier")
    export.add_argument(
        "--timeframe", default="30 days", help='a span ending now, e.g. "30 days" (default)'
    )
    export.add_argument("--quiet", action="store_true", help="no progress bar")
    export.set_defaults(func=cmd_export)
    seed = sub.add_parser("seed", help="write realistic dummy data")
    seed.add_argument("--days", type=int, default=30)
    seed.add_argument("--sessions", type=int, default=10_000)
    seed.add_argument("--videos", type=int, default=20)
    seed.add_argument("--seed", type=int, default=1)
    seed.add_argument("--key", default="seed")
    seed.add_argument("--quiet", action="store_true", help="no progress bar")
    seed.set_defaults(func=cmd_seed)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = from_env()
        setup_logging(settings)
        if (
            getattr(args, "days", 1) < 1
            or getattr(args, "sessions", 1) < 0
            or getattr(args, "videos", 1) < 1
        ):
            raise SettingsError("seed needs --days >= 1, --sessions >= 0 and --videos >= 1")
        return int(args.func(args, settings))
    except SettingsError as exc:
        print(f"vidmetrics: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # one clear line for operational failures
        from app.storage.embedded import EmbeddedError

        if isinstance(exc, EmbeddedError):
            print(f"vidmetrics: {exc}", file=sys.stderr)
            return 1
        from app.storage import failures

        failure = failures.translate(exc)
        if isinstance(failure, failures.MissingSchema):
            print(
                "vidmetrics: the database has no vidmetrics schema; run `vidmetrics migrate`",
                file=sys.stderr,
            )
            return 1
        if failure is not None:
            print(f"vidmetrics: database error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
