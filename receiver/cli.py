"""The `receiver` command line. A user's mistake is one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from rich import box
from rich.console import Console
from rich.table import Column, Table

from handlers import ConfigError
from receiver import logs
from receiver.completion import Lognormal
from receiver.config import Settings, SettingsError, load_settings
from receiver.costs import day_start, grouping, sum_costs
from receiver.events import TERMINAL, DeliveryStatus, Job, JobStatus, iso, valid_idempotency_key
from receiver.failover import parse_choice
from receiver.generation import KlingRequest, ValidationError
from receiver.providers import registry
from receiver.providers.base import ProviderError, UnsupportedParameter
from receiver.providers.registry import NAMES
from receiver.service import IdempotencyConflict, NoSuchJob, NotFinished, Receiver, UnknownProvider
from receiver.serving import port_number

USER_ERRORS = (SettingsError, ConfigError, ValidationError, UnknownProvider, ProviderError)


class CommandError(Exception):
    """A user's mistake found by a command; printed as one line."""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number of at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="receiver", description=__doc__)
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="default info (warning for demo)"
    )
    parser.add_argument("--version", action="version", version=f"receiver {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="web app plus, unless --no-worker, the in-process worker")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=port_number, default=8000)
    serve.add_argument(
        "--no-worker", action="store_true", help="serve webhooks only; run `receiver worker` apart"
    )
    sub.add_parser("worker", help="polling and dispatch in a loop, no web app")
    sub.add_parser("tick", help="one round of polling and dispatch, then exit (cron, serverless)")

    submit = sub.add_parser("submit", help="record and submit a job")
    submit.add_argument(
        "--provider",
        metavar="|".join([*NAMES, "auto"]),
        help="a provider, auto (RECEIVER_PROVIDER_ORDER), or a comma-separated list tried in order; "
        "default RECEIVER_PROVIDER",
    )
    submit.add_argument("--prompt", required=True)
    submit.add_argument("--mode", choices=["standard", "pro", "4k"])
    submit.add_argument("--aspect-ratio", choices=["16:9", "9:16", "1:1"])
    submit.add_argument("--duration", type=int, metavar="S")
    submit.add_argument("--start-image", metavar="URL")
    submit.add_argument("--end-image", metavar="URL")
    submit.add_argument("--audio", action="store_true", help="generate audio")
    submit.add_argument("--negative-prompt", metavar="TEXT")
    submit.add_argument("--multi-prompt", metavar="TEXT")
    submit.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="names the job: running the same submit again with the same KEY (after a lost answer, say) "
        "shows the job the first one made and never buys a second run",
    )
    submit.add_argument("--wait", action="store_true", help="follow the job to the end")
    submit.add_argument("--json", action="store_true")

    jobs = sub.add_parser("jobs", help="list jobs, newest first")
    jobs.add_argument("--status", choices=[str(s) for s in JobStatus])
    jobs.add_argument("--limit", type=positive_int, default=100)
    jobs.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="one job and its deliveries")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    replay = sub.add_parser(
        "replay",
        help="re-deliver a finished job's event, or a budget event by its id (evt_...), same event id",
    )
    replay.add_argument("id")
    replay.add_argument("--handler", metavar="NAME")
    dead = sub.add_parser("dead", help="list dead deliveries")
    dead.add_argument("--json", action="store_true")
    costs = sub.add_parser("costs", help="what jobs cost, summed per provider, model or metadata key")
    costs.add_argument(
        "--since",
        default="today",
        metavar="WHEN",
        help="today (UTC, the default), an ISO date or time, or an age such as 12h or 7d",
    )
    costs.add_argument(
        "--by", nargs="+", default=["provider"], metavar="WHAT", help="provider, model or metadata KEY"
    )
    costs.add_argument("--json", action="store_true")
    stats = sub.add_parser("stats", help="completion times learned per kind of job (they plan the polls)")
    stats.add_argument("--json", action="store_true")

    demo = sub.add_parser("demo", help="everything at once on this machine, then a summary")
    demo.add_argument("--keep", metavar="DIR", help="keep the demo's files in DIR")
    emulate = sub.add_parser("emulate", help="a provider emulator on its own, for your tests")
    from receiver.emulators import cli as emulators_cli

    emulators_cli.add_arguments(emulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level or ("warning" if args.command == "demo" else "info"))
    try:
        if args.command == "emulate":
            from receiver.emulators import cli as emulators_cli

            return emulators_cli.run(args)
        if args.command == "demo":
            from receiver import demo

            return demo.run(keep=args.keep)
        settings = load_settings()
        if args.command == "serve":
            return serve(settings, args)
        return asyncio.run(_run(COMMANDS[args.command](settings, args)))
    except USER_ERRORS as exc:
        print(f"receiver: error: {logs.mask(str(exc))}", file=sys.stderr)
        refused = isinstance(exc, ProviderError) and not isinstance(exc, UnsupportedParameter)
        return 1 if refused else 2
    except CommandError as exc:
        print(f"receiver: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


async def _run(command: Awaitable[int]) -> int:
    return await command


def serve(settings: Settings, args: argparse.Namespace) -> int:
    from receiver.app import create_app
    from receiver.serving import Server, listen, server_config

    receiver = Receiver.from_settings(settings)
    receiver.signer  # noqa: B018  # fail now, not at the first webhook, when RECEIVER_SECRET is missing
    # The store and the port are checked before uvicorn starts, so a mistake in either is one line
    # (uvicorn would print a traceback and "Application startup failed", exit 3).
    asyncio.run(_with_receiver(settings, _ready))
    try:
        sock = listen(args.host, args.port)
    except OSError as exc:
        raise CommandError(
            f"error: --port: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
        ) from None
    app = create_app(receiver, run_worker=not args.no_worker)
    host, port = sock.getsockname()[:2]
    where = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    worker = "no worker (run `receiver worker`)" if args.no_worker else "worker in this process"
    print(start_line(settings, f"serving on {where}", worker), flush=True)
    # log_config=None: uvicorn's loggers reach the root handler logs.configure set (JSON, masked).
    config = server_config(app, log_level="warning", access_log=False, log_config=None)
    server = Server(config, on_stop=receiver.changes.close)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0 if server.started else 3


async def _ready(receiver: Receiver) -> int:
    """Opening the store (connect, migrate) is the check."""
    return 0


async def _with_receiver(settings: Settings, fn: Callable[[Receiver], Awaitable[int]]) -> int:
    receiver = Receiver.from_settings(settings)
    await receiver.open()
    try:
        return await fn(receiver)
    finally:
        await receiver.close()


def start_line(settings: Settings, *parts: str) -> str:
    """What a long-running command is about to run, in one line: the store without credentials, the
    providers that have a key, the handlers by name and type."""
    providers = [name for name in NAMES if registry.get(name).api_key(settings)]
    handlers = [f"{h.get('name', '?')} ({h.get('type', '?')})" for h in settings.handlers]
    return " · ".join(
        [
            f"receiver {version()} {parts[0]}",
            f"store {shown_url(settings.database_url)}",
            f"providers {', '.join(providers) or 'none (no API key set)'}",
            f"handlers {', '.join(handlers) or 'none'}",
            *parts[1:],
        ]
    )


def shown_url(url: str) -> str:
    """A database URL fit to print: no user, no password, no query (libpq takes a password there)."""
    parts = urlsplit(url)
    if not parts.netloc:  # sqlite:///path: nothing secret, and urlunsplit would drop its "//"
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def version() -> str:
    try:
        return importlib.metadata.version("kling-receiver")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


async def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    async def run(receiver: Receiver) -> int:
        print(start_line(settings, "worker", "polling and dispatch in this process"), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await receiver.worker.run(stop)
        return 0

    return await _with_receiver(settings, run)


async def cmd_tick(settings: Settings, args: argparse.Namespace) -> int:
    async def run(receiver: Receiver) -> int:
        print(json.dumps(await receiver.tick()))
        return 0

    return await _with_receiver(settings, run)


def request_from_args(args: argparse.Namespace) -> KlingRequest:
    metadata: dict[str, Any] = {}
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CommandError(f"error: --meta {item!r}: expected KEY=VALUE")
        metadata[key] = value
    data: dict[str, Any] = {
        "prompt": args.prompt,
        "mode": args.mode,
        "aspect_ratio": args.aspect_ratio,
        "duration": args.duration,
        "start_image": args.start_image,
        "end_image": args.end_image,
        "generate_audio": args.audio,
        "negative_prompt": args.negative_prompt,
        "multi_prompt": args.multi_prompt,
        "metadata": metadata,
    }
    return KlingRequest.from_dict({k: v for k, v in data.items() if v is not None})


async def cmd_submit(settings: Settings, args: argparse.Namespace) -> int:
    request = request_from_args(args)
    try:
        choice = parse_choice(args.provider, settings.provider)
    except UnknownProvider as exc:
        raise CommandError(f"error: --provider: {exc}") from None

    async def run(receiver: Receiver) -> int:
        key = args.idempotency_key
        if key is not None and not valid_idempotency_key(key):
            raise CommandError("error: --idempotency-key: 1 to 255 printable ASCII characters")
        try:
            job, _ = await receiver.submit_once(choice, request, key)
        except IdempotencyConflict as exc:
            raise CommandError(f"error: --idempotency-key: {exc}") from None
        if args.wait and job.provider and registry.get(job.provider).sends_webhooks:
            problem = await unreachable(settings.public_url)
            if problem:
                print(
                    f"receiver: warning: RECEIVER_PUBLIC_URL {settings.public_url} does not answer /healthz "
                    f"({problem}), so {job.provider}'s webhooks cannot reach this receiver; start "
                    "`receiver serve` there, or wait for the slower reconciliation polls",
                    file=sys.stderr,
                    flush=True,
                )
        if args.wait:
            job = await follow(receiver, job)
        if args.json:
            print(json.dumps(job.to_json(), indent=2))
        elif args.wait:
            Console().print(job_table(job))
        else:
            print(job.id)
        if job.status is JobStatus.QUEUED:
            print(
                f"{job.id} queued: a worker (serve, worker or tick) sends it when the budget allows",
                file=sys.stderr,
            )
        elif job.status is JobStatus.UNKNOWN:
            print(
                f"{job.id} unknown: the answer to the submit was lost; a worker (serve, worker or tick) "
                "sends it again with the same Idempotency-Key, which cannot buy a second run",
                file=sys.stderr,
            )
        return 0 if not args.wait or job.status == "succeeded" else 1

    return await _with_receiver(settings, run)


async def unreachable(public_url: str) -> str | None:
    """Why the receiver at `public_url` does not answer its health check, or None when it does."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=3) as client:
            answer = await client.get(f"{public_url}/healthz")
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return None if answer.status_code == 200 else f"HTTP {answer.status_code}"


async def follow(receiver: Receiver, job: Job) -> Job:
    """Drive polling and dispatch in this process while showing live status and progress."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    stop = asyncio.Event()
    task = asyncio.create_task(receiver.worker.run(stop))
    console = Console(stderr=True)
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            bar = progress.add_task(f"{job.id} {job.status}", total=100)
            if job.status is JobStatus.QUEUED:
                console.print(f"{job.id} queued: sent to {job.provider} when its rate budget allows")
            while True:
                job = await receiver.get_job(job.id)
                progress.update(bar, completed=job.progress or 0, description=f"{job.id} {job.status}")
                pending = any(d.status in ("pending", "retrying") for d in job.deliveries)
                if job.status in TERMINAL and not pending:
                    return job
                await asyncio.sleep(0.25)  # display refresh, not synchronisation
    finally:
        stop.set()
        await task


async def cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    async def run(receiver: Receiver) -> int:
        jobs = await receiver.list_jobs(args.status, args.limit)
        if args.json:
            print(json.dumps({"jobs": [j.to_json() for j in jobs]}, indent=2))
            return 0
        Console().print(jobs_table(jobs))
        return 0

    return await _with_receiver(settings, run)


def jobs_table(jobs: Sequence[Job]) -> Table:
    """One line per job that fits 80 columns: no vertical rules, the creation time in UTC without the
    year, and handlers as delivered/total (`show ID` has each handler's state)."""
    table = Table(
        *(Column(name, no_wrap=True) for name in ("id", "provider", "status", "created", "via")),
        Column("handlers"),
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    for j in jobs:
        delivered = sum(d.status is DeliveryStatus.DELIVERED for d in j.deliveries)
        dead = sum(d.status is DeliveryStatus.DEAD for d in j.deliveries)
        handlers = f"{delivered}/{len(j.deliveries)}" if j.deliveries else ""
        if dead:
            handlers += f" {dead} dead"
        created = j.created_at.astimezone(UTC).strftime("%m-%d %H:%M")
        table.add_row(j.id, j.provider, str(j.status), created, j.completed_via or "", handlers)
    return table


def job_table(job: Job) -> Table:
    data = job.to_json()
    table = Table(show_header=False, title=job.id)
    for key in (
        "provider",
        "provider_job_id",
        "status",
        "progress",
        "completed_via",
        "created_at",
        "completed_at",
    ):
        if data[key] is not None:  # not known yet (no progress report, not finished): left out
            table.add_row(key, str(data[key]))
    if job.cost is not None:
        table.add_row("cost", f"{job.cost:g} {data['cost']['unit']}")
    table.add_row("prompt", str(job.request.get("prompt", "")))
    table.add_row("output_urls", "\n".join(job.output_urls))
    if job.error:
        table.add_row("error", f"{job.error.code}: {job.error.message}")
    for d in job.deliveries:
        detail = f"{d.status} after {d.attempts} attempt(s)" + (f": {d.last_error}" if d.last_error else "")
        table.add_row(f"delivery {d.handler}", detail)
    return table


async def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    async def run(receiver: Receiver) -> int:
        try:
            job = await receiver.get_job(args.id)
        except NoSuchJob as exc:
            raise CommandError(f"error: {exc}") from None
        if args.json:
            print(json.dumps(job.to_json(), indent=2))
        else:
            Console().print(job_table(job))
        return 0

    return await _with_receiver(settings, run)


async def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    async def run(receiver: Receiver) -> int:
        try:
            if args.id.startswith("evt_"):
                replayed = await receiver.replay_budget_event(args.id, args.handler)
            else:
                replayed = await receiver.replay(args.id, args.handler)
        except (NoSuchJob, NotFinished) as exc:
            raise CommandError(f"error: {exc}") from None
        counts = await receiver.worker.dispatch()
        print(json.dumps({"replayed": replayed.count, "event_id": replayed.event_id, **counts}))
        return 0 if not counts["dead"] else 1

    return await _with_receiver(settings, run)


async def cmd_dead(settings: Settings, args: argparse.Namespace) -> int:
    async def run(receiver: Receiver) -> int:
        rows = await receiver.store.dead_deliveries()
        budget = await receiver.store.dead_budget_deliveries()
        if args.json:
            keys = ("job_id", "handler", "attempts", "last_error")
            budget_keys = ("provider", "day", "level", "handler", "attempts", "last_error", "event_id")
            listed = {
                "dead": [dict(zip(keys, row, strict=True)) for row in rows],
                "dead_budget_events": [dict(zip(budget_keys, row, strict=True)) for row in budget],
            }
            print(json.dumps(listed, indent=2))
            return 0
        if not rows and not budget:
            print("no dead deliveries")
            return 0
        console = Console()
        if rows:
            table = Table(Column("job", no_wrap=True), "handler", "attempts", "last error")
            for job_id, handler, attempts, last_error in rows:
                table.add_row(job_id, handler, str(attempts), last_error or "")
            console.print(table)
        if budget:
            table = Table(
                Column("budget event", no_wrap=True),
                Column("level", no_wrap=True),
                "handler",
                "attempts",
                "last error",
            )
            for provider, day, level, handler, attempts, last_error, event_id in budget:
                reached = f"{provider} {day} {level}%"
                table.add_row(event_id, reached, handler, str(attempts), last_error or "")
            console.print(table)
        return 0

    return await _with_receiver(settings, run)


def since_of(text: str, now: datetime) -> datetime:
    """`today` (midnight UTC), an ISO date or time (UTC unless it says otherwise), or `12h` / `7d` ago."""
    if text == "today":
        return day_start(now)
    if match := re.fullmatch(r"(\d+(?:\.\d+)?)([hd])", text):
        hours = float(match.group(1)) * (24 if match.group(2) == "d" else 1)
        return now - timedelta(hours=hours)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(
            f"error: --since: expected today, an ISO date or time, or 12h/7d, got {text!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def cmd_costs(settings: Settings, args: argparse.Namespace) -> int:
    by = " ".join(args.by)
    try:
        grouping(by)
    except ValueError as exc:
        raise CommandError(f"error: {exc}") from None
    since = since_of(args.since, datetime.now(UTC))

    async def run(receiver: Receiver) -> int:
        lines = sum_costs(await receiver.store.costs_since(since), by)
        if args.json:
            rows = [{"group": x.group, "unit": x.unit, "jobs": x.jobs, "total": x.total} for x in lines]
            print(json.dumps({"since": iso(since), "by": by, "costs": rows}, indent=2))
            return 0
        table = Table(by, "unit", Column("jobs", justify="right"), Column("total", justify="right"))
        table.title = f"costs since {iso(since)}"
        for line in lines:
            table.add_row(line.group, line.unit, str(line.jobs), f"{line.total:g}")
        Console().print(table)
        return 0

    return await _with_receiver(settings, run)


async def cmd_stats(settings: Settings, args: argparse.Namespace) -> int:
    async def run(receiver: Receiver) -> int:
        models = await receiver.completion_models()
        rows = [(kind.label, model) for kind, model in sorted(models.kinds.items())]
        rows.append(("any other kind (prior)", Lognormal.prior(models.expected)))
        if args.json:
            print(
                json.dumps({"kinds": [{"kind": label, **model.summary()} for label, model in rows]}, indent=2)
            )
            return 0
        table = Table(Column("kind", no_wrap=True), "samples", "model", "p50", "p90", "p99")
        for label, model in rows:
            summary = model.summary()
            seconds = [f"{summary[q]:.0f} s" for q in ("p50", "p90", "p99")]
            table.add_row(label, str(model.samples), "learned" if model.learned else "prior", *seconds)
        Console().print(table)
        return 0

    return await _with_receiver(settings, run)


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], Awaitable[int]]] = {
    "worker": cmd_worker,
    "tick": cmd_tick,
    "submit": cmd_submit,
    "jobs": cmd_jobs,
    "show": cmd_show,
    "replay": cmd_replay,
    "dead": cmd_dead,
    "costs": cmd_costs,
    "stats": cmd_stats,
}
