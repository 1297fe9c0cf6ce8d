"""`voice-agent sim mail`: a local SMTP server that keeps every message it accepts as a .eml file, for the
demo and the load test (the cluster's emails go nowhere outside the machine).

    voice-agent sim mail --port 0 --dir DIR     # prints "listening on smtp://127.0.0.1:PORT" first
    voice-agent sim mail --port 0 --dir DIR --data-delay-ms 2000   # a slow server: each DATA waits 2 s

`--data-delay-ms` holds every message that long after its DATA arrived and before the 250 (and the .eml): the
window in which the chaos load test and the tool-worker tests kill a sender mid-send.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path


class MailDrop:
    """aiosmtpd handler: each accepted message becomes DIR/NNNN.eml (the envelope in X- headers)."""

    def __init__(self, directory: Path, data_delay_s: float = 0.0):
        self.directory = directory
        self.data_delay_s = data_delay_s
        self.count = 0

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd's name)
        if self.data_delay_s:
            print(f"DATA for {', '.join(envelope.rcpt_tos)}: holding it {self.data_delay_s:g} s", flush=True)
            await asyncio.sleep(self.data_delay_s)
            transport = getattr(server, "transport", None)
            if transport is None or transport.is_closing():  # the client died before our 250: keep nothing,
                print("DATA: the client left before the reply; message dropped", flush=True)  # as a real MTA
                return "421 closing"
        self.count += 1
        head = f"X-Envelope-From: {envelope.mail_from}\r\nX-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
        data = envelope.original_content or envelope.content
        path = self.directory / f"{self.count:04d}.eml"
        path.write_bytes(head.encode() + (data if isinstance(data, bytes) else data.encode()))
        print(f"accepted message {self.count} for {', '.join(envelope.rcpt_tos)} -> {path}", flush=True)
        return "250 Message accepted for delivery"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525, help="0: any free port (the URL is printed first)")
    parser.add_argument("--dir", required=True, help="where the .eml files go")
    parser.add_argument(
        "--data-delay-ms", type=int, default=0, help="hold each message this long before accepting it (a slow server)"
    )


async def _serve(args: argparse.Namespace, directory: Path) -> None:
    from aiosmtpd.smtp import SMTP

    handler = MailDrop(directory, max(0, args.data_delay_ms) / 1000)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, hostname="sim-mail"), args.host, args.port)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on smtp://{args.host}:{port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


def run(args: argparse.Namespace) -> int:
    try:
        import aiosmtpd  # noqa: F401
    except ImportError:
        print("voice-agent sim mail needs aiosmtpd (pip install aiosmtpd, or the project's test extra)")
        return 2
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    asyncio.run(_serve(args, directory))
    return 0
