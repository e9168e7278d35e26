"""A Lambda stand-in for end-to-end runs: `receiver.serverless.handler` behind a loopback API Gateway
with `--concurrency` warm containers, and `receiver.serverless.tick` every `--tick-every` seconds as
EventBridge calls it. Prints the gateway's URL, runs until SIGTERM, and exits 1 if any tick failed.

    python -m tests.support.lambda_host --concurrency 4 --tick-every 1
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import traceback

from tests.support.gateway import running_gateway


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tick-every", type=float, default=1.0)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    from receiver import serverless  # Lambda's init phase: the settings are read here

    failed = 0
    with running_gateway("receiver.serverless.handler", args.concurrency) as gateway:
        print(gateway.url, flush=True)
        while not stop.wait(args.tick_every):  # the schedule, not a wait for anything
            try:
                serverless.tick({"source": "aws.events"}, None)
            except Exception:
                failed += 1
                traceback.print_exc()
    serverless.shutdown()
    print(f"lambda_host: {failed} failed ticks", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
