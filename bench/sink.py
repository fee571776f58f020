"""The baseline: a bare one-process aiosmtpd server that says 250 to every mail and keeps none.

Run: `python bench/sink.py --port 2599`; it prints `ready` once it listens and runs until
SIGTERM. Same aiosmtpd options as supportd's intake, so the difference is what supportd adds.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiosmtpd.smtp import SMTP, Envelope, Session


class Discard:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 OK discarded"


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Discard(), data_size_limit=25 * 1024 * 1024, hostname="sink",
                     decode_data=False, enable_SMTPUTF8=True, ident="sink"),
        host=host, port=port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="A discarding one-process aiosmtpd sink.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
