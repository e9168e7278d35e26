"""`receiver emulate apiframe|runbase`: one provider emulator in the foreground, for users' tests."""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn

from receiver.emulators.apiframe import RESULT_SHAPES, WEBHOOK_FIELDS, WEBHOOK_MODES, ApiframeEmulator
from receiver.emulators.common import Emulator
from receiver.emulators.runbase import RunbaseEmulator
from receiver.providers import apiframe, runbase
from receiver.serving import listen, port_number

DEFAULT_PORTS = {apiframe.PROVIDER: 8101, runbase.PROVIDER: 8102}
KEY_VARIABLES = {apiframe.PROVIDER: "APIFRAME_API_KEY", runbase.PROVIDER: "RUNBASE_API_KEY"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("provider", choices=tuple(DEFAULT_PORTS), help="which provider to emulate")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=port_number, help="port (default 8101 apiframe, 8102 runbase)")
    parser.add_argument("--delay", type=float, default=5.0, help="seconds from submit to final status")
    parser.add_argument("--failure-rate", type=float, default=0.0, help="share of jobs that fail, 0 to 1")
    parser.add_argument("--seed", type=int, help="seed for which jobs fail")
    webhooks = parser.add_argument_group(apiframe.PROVIDER)
    webhooks.add_argument("--webhook", choices=WEBHOOK_MODES, default="deliver", help="webhook behaviour")
    webhooks.add_argument("--webhook-delay", type=float, default=0.0, help="extra seconds in --webhook delay")
    webhooks.add_argument("--webhook-field", choices=WEBHOOK_FIELDS, default="webhookUrl")
    webhooks.add_argument("--result-shape", choices=RESULT_SHAPES, default="videoUrl")
    limits = parser.add_argument_group(runbase.PROVIDER)
    limits.add_argument("--rate-limit", type=int, default=20, help="requests per 10 s per key")


def build(args: argparse.Namespace) -> Emulator:
    """The emulator the arguments describe; raises ValueError for an out-of-range setting."""
    api_key = os.environ.get(KEY_VARIABLES[args.provider]) or None
    if args.provider == apiframe.PROVIDER:
        return ApiframeEmulator(
            api_key=api_key,
            delay=args.delay,
            failure_rate=args.failure_rate,
            webhook=args.webhook,
            webhook_delay=args.webhook_delay,
            webhook_field=args.webhook_field,
            result_shape=args.result_shape,
            seed=args.seed,
        )
    return RunbaseEmulator(
        api_key=api_key,
        delay=args.delay,
        failure_rate=args.failure_rate,
        rate_limit=args.rate_limit,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    try:
        emulator = build(args)
    except ValueError as exc:
        print(f"receiver emulate: {exc}", file=sys.stderr)
        return 2
    port = DEFAULT_PORTS[args.provider] if args.port is None else args.port
    try:
        sock = listen(args.host, port)
    except OSError as exc:
        print(
            f"receiver emulate: cannot listen on {args.host}:{port}: {exc.strerror or exc}", file=sys.stderr
        )
        return 1
    port = sock.getsockname()[1]
    key_note = f"key from {KEY_VARIABLES[args.provider]}" if emulator.config()["api_key_set"] else "any key"
    print(
        f"{args.provider} emulator listening on http://{args.host}:{port} "
        f"(jobs finish after {args.delay:g} s, {key_note})",
        flush=True,
    )
    server = uvicorn.Server(uvicorn.Config(emulator.app, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m receiver.emulators.cli", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
