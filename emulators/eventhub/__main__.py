"""CLI: python -m emulators.eventhub --port 0 --hub NAME[:PARTITIONS] [--hub ...] [options]

Prints one line `READY {json}` on stdout once serving; logs go to stderr; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from .server import DEFAULT_KEY, DEFAULT_KEY_NAME, DEFAULT_MAX_FRAME_SIZE, DEFAULT_PARTITIONS, EventHubEmulator
from .broker import MAX_MESSAGE_SIZE
from .entra import EntraAuthority, parse_role


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m emulators.eventhub", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="listen port, 0 = any free port (default 0)")
    parser.add_argument(
        "--hub",
        action="append",
        default=[],
        metavar="NAME[:PARTITIONS]",
        help="event hub to serve, repeatable (default: 'eventhub')",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=DEFAULT_PARTITIONS,
        help=f"partitions of hubs given without :PARTITIONS (default {DEFAULT_PARTITIONS})",
    )
    parser.add_argument(
        "--control-port", type=int, default=0, help="HTTP port of /_emulator/control, 0 = any free port (default 0)"
    )
    parser.add_argument("--key-name", default=DEFAULT_KEY_NAME, help=f"SAS key name (default {DEFAULT_KEY_NAME})")
    parser.add_argument("--key", default=DEFAULT_KEY, help=f"SAS key (default {DEFAULT_KEY})")
    parser.add_argument(
        "--consumer-group",
        action="append",
        default=[],
        metavar="GROUP",
        help="consumer group created on every hub, repeatable ($Default always exists)",
    )
    parser.add_argument(
        "--strict-consumer-groups",
        action="store_true",
        help="refuse unknown consumer groups (amqp:not-found) instead of creating them",
    )
    parser.add_argument(
        "--persist", metavar="DIR", help="keep events in append-only files under DIR, replayed at start"
    )
    parser.add_argument("--max-events", type=int, metavar="N", help="retain at most N events per partition")
    parser.add_argument("--retention-seconds", type=float, metavar="S", help="drop events older than S seconds")
    parser.add_argument(
        "--max-frame-size",
        type=int,
        default=DEFAULT_MAX_FRAME_SIZE,
        help=f"AMQP max frame size advertised (default {DEFAULT_MAX_FRAME_SIZE})",
    )
    parser.add_argument(
        "--max-message-size",
        type=int,
        default=MAX_MESSAGE_SIZE,
        help=f"largest accepted message/batch in bytes (default {MAX_MESSAGE_SIZE})",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        metavar="S",
        help="advertise an AMQP idle-time-out of S seconds and close connections silent for longer (default: none)",
    )
    parser.add_argument(
        "--preload",
        type=int,
        default=0,
        metavar="N",
        help="append N synthetic events to every hub at start (round-robin over partitions)",
    )
    parser.add_argument(
        "--preload-size",
        type=int,
        default=1024,
        metavar="BYTES",
        help='body size of preloaded events: a JSON {"records": [...]} envelope (default 1024)',
    )
    tls = parser.add_argument_group("TLS, WebSockets and Entra ID (the client's path without a connection string)")
    tls.add_argument("--tls-cert", metavar="PEM", help="certificate (with its key, or see --tls-key): serve AMQPS and "
                     "wss://HOST:PORT/$servicebus/websocket on ports of their own")
    tls.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    tls.add_argument("--amqps-port", type=int, default=0, help="AMQPS port, 0 = any free port (default 0)")
    tls.add_argument("--websocket-port", type=int, default=0, help="WebSockets port, 0 = any free port (default 0)")
    tls.add_argument("--entra-authority", metavar="URL", help="check Entra ID tokens against this tenant's keys, "
                     "https://HOST:PORT/TENANT (without it, jwt tokens are accepted unchecked)")
    tls.add_argument("--entra-ca-file", metavar="PEM", help="CA to trust for --entra-authority")
    tls.add_argument("--role", action="append", default=[], metavar="PRINCIPAL=ROLE",
                     help="Azure RBAC role of a client id or object id on the namespace, repeatable "
                     "(Azure Event Hubs Data Receiver, Data Sender, Data Owner)")
    parser.add_argument("--log-level", default="INFO", help="log level on stderr (default INFO)")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    roles: dict[str, list[str]] = {}
    for spec in args.role:
        principal, role = parse_role(spec)
        roles.setdefault(principal, []).append(role)
    entra = EntraAuthority(args.entra_authority, args.entra_ca_file, roles) if args.entra_authority else None
    emulator = EventHubEmulator(
        args.hub or None,
        partitions=args.partitions,
        host=args.host,
        port=args.port,
        control_port=args.control_port,
        key_name=args.key_name,
        key=args.key,
        consumer_groups=args.consumer_group,
        strict_consumer_groups=args.strict_consumer_groups,
        persist_dir=args.persist,
        max_events=args.max_events,
        retention_seconds=args.retention_seconds,
        max_frame_size=args.max_frame_size,
        max_message_size=args.max_message_size,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        amqps_port=args.amqps_port,
        websocket_port=args.websocket_port,
        entra=entra,
        idle_timeout=args.idle_timeout,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    info = await emulator.start()
    if args.preload:
        emulator.preload(args.preload, args.preload_size)
    sys.stdout.write("READY " + json.dumps(info) + "\n")
    sys.stdout.flush()
    await stop.wait()
    await emulator.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s eventhub-emulator %(name)s: %(message)s",
    )
    try:
        asyncio.run(serve(args))
    except (OSError, ValueError) as exc:
        logging.getLogger("emulators.eventhub").error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
