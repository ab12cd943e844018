"""``python -m emulators.runtime --port 0 --out FILE``: serve the runtime stub on loopback, print ``READY {json}``."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path

import orjson

from emulators.runtime.server import RuntimeKnobs, RuntimeStub


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m emulators.runtime", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="JSONL file receiving every delivered event")
    parser.add_argument("--logs-out", type=Path, help="JSONL file of the trigger's logs (default: OUT.logs.jsonl)")
    parser.add_argument("--data-path", type=Path, help="the trigger's data path, where playbook records files are")
    parser.add_argument("--token", help="bearer token the trigger must send (default: random)")
    parser.add_argument("--intake-key", help="intake key the trigger must send (default: random)")
    parser.add_argument("--secrets", type=Path, help="JSON file of trigger secrets served by GET /secrets")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--failure-rate", type=float, default=0.0, help="fraction of requests answered 503")
    parser.add_argument("--down-for", type=float, default=0.0, help="cut every connection for this long at start")
    parser.add_argument("--down-status", type=int, default=0, help="while down, answer this status instead of cutting")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--count-only", action="store_true",
                        help="check and count delivered events without writing them to OUT (benchmarks)")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    stub = RuntimeStub(
        out=args.out,
        logs_out=args.logs_out or args.out.with_name(args.out.name + ".logs.jsonl"),
        data_path=args.data_path or Path(tempfile.gettempdir()),
        trigger_secrets=orjson.loads(args.secrets.read_bytes()) if args.secrets else {},
        knobs=RuntimeKnobs(
            latency_ms=args.latency_ms,
            failure_rate=args.failure_rate,
            down_until=time.monotonic() + args.down_for if args.down_for else 0.0,
            down_status=args.down_status,
        ),
        seed=args.seed,
        keep_events=not args.count_only,
    )
    if args.token:
        stub.token = args.token
    if args.intake_key:
        stub.intake_key = args.intake_key
    await stub.start(args.host, args.port)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    print("READY " + orjson.dumps(stub.ready_info()).decode(), flush=True)
    await stopped.wait()
    await stub.stop()


def main(argv: list[str] | None = None) -> None:
    asyncio.run(serve(parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
