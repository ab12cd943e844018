"""`python -m emulators.office365 --port 0 [...]`: serve until SIGTERM/SIGINT; print one READY line on stdout."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import orjson

from .config import build_arg_parser, config_from_args
from .server import Office365Emulator


async def _serve(emulator: Office365Emulator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    info = await emulator.start()
    try:
        sys.stdout.write("READY " + orjson.dumps(info).decode() + "\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await emulator.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"invalid arguments: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(Office365Emulator(config, access_log=args.access_log)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
