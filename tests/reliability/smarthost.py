"""A smarthost for supportd's outbound SMTP, run as its own process on loopback.

It records every mail it takes (one JSON line per mail, flushed and fsynced before the 250,
as a real MTA queues before it answers). Two misbehaviours on request:
`--hold-first S` keeps the first mail's DATA reply back for S seconds (to kill supportd
between send and record); `--answer HOST:PORT` turns it into a broken autoresponder that
answers every mail back to supportd without any RFC 3834 header.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import json
import os
import signal
import smtplib
from email.message import EmailMessage
from email.utils import make_msgid, parseaddr

from aiosmtpd.smtp import SMTP, Envelope, Session


class Recorder:
    def __init__(self, record: str, hold_first: float, answer: tuple[str, int] | None) -> None:
        self.record, self.hold_first, self.answer = record, hold_first, answer
        self.count = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content
        assert isinstance(raw, bytes)
        message = email.message_from_bytes(raw)
        await asyncio.to_thread(self._record, json.dumps({
            "to": envelope.rcpt_tos, "message_id": message["Message-ID"],
            "subject": message["Subject"]}))
        self.count += 1
        if self.count == 1 and self.hold_first:
            await asyncio.sleep(self.hold_first)
        if self.answer is not None:
            await asyncio.to_thread(self._answer, message, envelope.rcpt_tos[0])
        return "250 2.0.0 OK queued"

    def _record(self, line: str) -> None:
        with open(self.record, "a") as out:
            out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())

    def _answer(self, message: email.message.Message, recipient: str) -> None:
        assert self.answer is not None
        reply = EmailMessage()
        reply["From"] = recipient
        reply["To"] = parseaddr(str(message["Reply-To"] or message["From"]))[1]
        reply["Subject"] = f"Re: {message['Subject']}"
        reply["Message-ID"] = make_msgid(domain="autoresponder.test")
        reply["In-Reply-To"] = str(message["Message-ID"])
        reply.set_content("Thank you for your mail. I will read it when I am back.")
        try:
            with smtplib.SMTP(*self.answer, timeout=10) as client:
                client.send_message(reply)
        except smtplib.SMTPException:
            pass  # refused (e.g. our own bounce address): a real autoresponder gives up too


async def serve(port: int, recorder: Recorder) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(recorder, hostname="smarthost.test", decode_data=False), "127.0.0.1", port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", required=True, help="file to append a JSON line per mail")
    parser.add_argument("--hold-first", type=float, default=0.0)
    parser.add_argument("--answer", help="HOST:PORT to answer every mail to")
    args = parser.parse_args()
    answer = None
    if args.answer:
        host, _, port = args.answer.rpartition(":")
        answer = (host, int(port))
    asyncio.run(serve(args.port, Recorder(args.record, args.hold_first, answer)))


if __name__ == "__main__":
    main()
