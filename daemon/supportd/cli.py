"""CLI: `supportd run | check-config | tickets | show | ticket | replay | imap-check | worker`.

Each has --help. `supportd worker` is the process `run` starts for processing and outbound
mail; `--standalone`, one more beside a daemon on the same store.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import uvloop

from supportd.app import run_daemon
from supportd.clock import SystemClock
from supportd.config import Config, ConfigInvalid, load_config
from supportd.intake.imap import check_mailbox
from supportd.logs import configure_logging
from supportd.outbound.templates import load_renderer
from supportd.store.api import StoreUnavailable, open_store
from supportd.tickets.decide import TicketEvent
from supportd.tickets.model import Priority, Status
from supportd.tickets.service import TicketService
from supportd.worker import run_worker

DEFAULT_CONFIG = Path("supportd.toml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="supportd", description="An email-first helpdesk daemon.")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="the TOML config file (default: ./supportd.toml)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default: INFO")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("run", help="run the daemon until SIGTERM",
                        description="Run the daemon: SMTP intake, processing, outbound mail. "
                                    "SIGHUP reloads the config file and templates; SIGTERM "
                                    "lets open SMTP transactions finish, then exits. Under "
                                    "systemd (Type=notify) it reports READY, STATUS and "
                                    "WATCHDOG and logs with journald priorities.")
    worker = commands.add_parser(
        "worker", help="process mail and send what it queues (`run` starts one)",
        description="The worker process that `supportd run` starts: it processes inbox mail "
                    "into tickets and sends the mail that queues, and exits with the daemon "
                    "that started it. With --standalone it runs on its own beside a daemon "
                    "on the same store, to process and send more at once: each inbox row "
                    "and each mail is claimed by one worker. SIGHUP reloads its config.")
    own = worker.add_mutually_exclusive_group(required=True)
    own.add_argument("--socket-fd", type=int, help="(from `run`) the socket to the daemon")
    own.add_argument("--standalone", action="store_true", help="run without a daemon")
    worker.add_argument("--parent-pid", type=int, help="(from `run`) the daemon's pid")
    change = commands.add_parser(
        "ticket", help="change a ticket: status, assignee, group, priority, note",
        description="Change one ticket as an agent would by mail, through the same rules: "
                    "an illegal status move or an unknown agent or group changes nothing and "
                    "says why (exit 1). The customer hears of a move to pending or solved.")
    change.add_argument("ticket", type=int)
    change.add_argument("--status", choices=[s.value for s in Status if s != Status.NEW])
    change.add_argument("--assign", metavar="AGENT", help="an agent's address")
    change.add_argument("--group")
    change.add_argument("--priority", choices=[p.value for p in Priority])
    change.add_argument("--note", help="an internal note, never sent to the customer")
    change.add_argument("--by", default="operator", help="who is acting (the event's actor)")
    commands.add_parser("check-config", help="check the config file and templates",
                        description="Check the config file and the templates; print every "
                                    "error with file, key and reason; exit 2 if any.")
    tickets = commands.add_parser("tickets", help="list tickets",
                                  description="List tickets, oldest first.")
    tickets.add_argument("--status", choices=[s.value for s in Status])
    tickets.add_argument("--group")
    tickets.add_argument("--assignee", help="an agent's address")
    tickets.add_argument("--limit", type=int, default=100)
    show = commands.add_parser("show", help="show one ticket's conversation and events",
                               description="Show a ticket: its fields, participants, "
                                           "messages, events and outbound mail.")
    show.add_argument("ticket", type=int)
    imap_check = commands.add_parser(
        "imap-check", help="log in to the [[imap]] mailboxes and count waiting mail",
        description="Connect to each [[imap]] mailbox (or only NAME), log in, and show the "
                    "server's capabilities and how many mails wait to be fetched. Changes "
                    "nothing: the folder is opened read-only (EXAMINE). Exit 1 on a problem.")
    imap_check.add_argument("name", nargs="?", help="one [[imap]] name (default: every one)")
    replay = commands.add_parser(
        "replay", help="process failed inbox mail again",
        description="Run failed inbox mail through processing again, after a fix. The raw "
                    "mail was kept; queued replies are sent by the running daemon. With "
                    "--failed, outbound mail that failed (a broken template, a refused "
                    "delivery) is queued to be sent again too.")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("inbox_id", nargs="?", type=int, help="one inbox row")
    which.add_argument("--failed", action="store_true", help="every failed inbox row")

    # Subcommand options may also come before the command name's own options.
    for sub in commands.choices.values():
        sub.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                         help="the TOML config file (default: ./supportd.toml)")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)  # journald priorities under systemd, else readable

    if args.command == "check-config":
        return check_config(args.config)
    try:
        config = load_config(args.config)
    except ConfigInvalid as invalid:
        for error in invalid.errors:
            print(error, file=sys.stderr)
        return 2
    actions: dict[str, Callable[[], Coroutine[Any, Any, int]]] = {
        "run": lambda: _run(config),
        "worker": lambda: _worker(config, args.socket_fd, args.parent_pid),
        "ticket": lambda: change_ticket(config, TicketEvent(
            ticket_id=args.ticket, actor=args.by,
            status=Status(args.status) if args.status else None, assignee=args.assign,
            group=args.group, priority=Priority(args.priority) if args.priority else None,
            note=args.note)),
        "tickets": lambda: list_tickets(config, args.status, args.group, args.assignee,
                                        args.limit),
        "show": lambda: show_ticket(config, args.ticket),
        "replay": lambda: replay_inbox(config, args.inbox_id, every_failed=args.failed),
        "imap-check": lambda: imap_check_command(config, args.name),
    }
    # uvloop: the same asyncio API, with less CPU per connection and per callback.
    return uvloop.run(actions[args.command]())


async def _worker(config: Config, socket_fd: int | None, parent_pid: int | None) -> int:
    await run_worker(config, socket_fd=socket_fd, parent_pid=parent_pid)
    return 0


async def _run(config: Config) -> int:
    try:
        await run_daemon(config)
    except ConfigInvalid as invalid:  # the templates, checked at start
        for error in invalid.errors:
            print(error, file=sys.stderr)
        return 2
    return 0


def check_config(path: Path) -> int:
    try:
        config = load_config(path, create_missing_secrets=False)
    except ConfigInvalid as invalid:
        for error in invalid.errors:
            print(error, file=sys.stderr)
        return 2
    try:
        load_renderer(config)
    except ConfigInvalid as invalid:
        for error in invalid.errors:
            print(error, file=sys.stderr)
        return 2
    print(f"{path}: OK ({len(config.agents)} agents, {len(config.groups)} groups, "
          f"support at {', '.join(config.support.addresses)})")
    return 0


async def list_tickets(config: Config, status: str | None, group: str | None,
                       assignee: str | None, limit: int) -> int:
    store = await open_store(config.store_path)
    try:
        rows = await store.tickets(status=status, group=group, assignee=assignee, limit=limit)
    finally:
        await store.close()
    print(f"{'#':>6}  {'status':8} {'priority':9} {'group':10} {'assignee':22} "
          f"{'requester':26} subject")
    for t in rows:
        print(f"{t.id:>6}  {t.status:8} {t.priority:9} {t.group:10} {t.assignee or '-':22} "
              f"{t.requester:26} {t.subject}")
    print(f"{len(rows)} ticket(s)")
    return 0


async def show_ticket(config: Config, ticket_id: int) -> int:
    store = await open_store(config.store_path)
    try:
        ticket = await store.ticket(ticket_id)
        if ticket is None:
            print(f"no ticket #{ticket_id}", file=sys.stderr)
            return 1
        people = await store.participants(ticket_id)
        messages = await store.messages(ticket_id)
        events = await store.events(ticket_id)
        effects = await store.effects(ticket_id)
    finally:
        await store.close()
    print(f"Ticket #{ticket.id}: {ticket.subject}")
    print(f"  status {ticket.status}, priority {ticket.priority}, group {ticket.group}, "
          f"assignee {ticket.assignee or 'nobody'}, account {ticket.account or '-'}")
    print("  " + ", ".join(f"{p.email} ({p.role})" for p in people))
    for m in messages:
        print(f"\n--- {m.created_at:%Y-%m-%d %H:%M:%S} {m.kind} from {m.author}: {m.subject}")
        for file in m.attachments:
            print(f"    attachment: {file}")
        print(m.body)
    print("\nEvents:")
    for e in events:
        print(f"  {e.at:%Y-%m-%d %H:%M:%S}  {e.actor:24} {e.kind:16} {e.detail}")
    print("\nOutbound mail:")
    for effect in (e for e in effects if e.kind == "mail"):
        error = f" ({effect.last_error})" if effect.last_error else ""
        state = "sent" if effect.state == "done" else effect.state
        print(f"  {effect.payload['template']:16} to {effect.payload['headers']['to']:28} "
              f"{state}{error}")
    return 0


async def change_ticket(config: Config, event: TicketEvent) -> int:
    store = await open_store(config.store_path)
    try:
        plan = await TicketService(config, store, SystemClock()).change(event)
    except StoreUnavailable as unavailable:
        print(f"ticket #{event.ticket_id}: the store cannot write now: {unavailable}",
              file=sys.stderr)
        return 1
    finally:
        await store.close()
    for error in plan.errors:
        print(f"ticket #{event.ticket_id}: {error.line}: {error.message}", file=sys.stderr)
    if not plan.errors:
        print(plan.summary)
    return 1 if plan.errors else 0


async def imap_check_command(config: Config, name: str | None) -> int:
    mailboxes = [m for m in config.imap if name in (None, m.name)]
    if not mailboxes:
        print(f"{config.path}: no [[imap]] mailbox" + (f" named {name!r}" if name else ""),
              file=sys.stderr)
        return 2
    positions = {}
    if config.store_path.exists():  # never create the store just to look
        store = await open_store(config.store_path)
        try:
            positions = {m.name: await store.imap_position(m.name) for m in mailboxes}
        finally:
            await store.close()
    problems = 0
    for mailbox in mailboxes:
        print(f"imap {mailbox.name}: {mailbox.user} at {mailbox.host}:{mailbox.port} "
              f"(tls {mailbox.tls})")
        try:
            lines = await check_mailbox(mailbox, positions.get(mailbox.name))
        except Exception as error:
            lines = [f"PROBLEM: {type(error).__name__}: {error}"]
        problems += any(line.startswith("PROBLEM") for line in lines)
        for line in lines:
            print("  " + line)
    return 1 if problems else 0


async def replay_inbox(config: Config, inbox_id: int | None, *, every_failed: bool) -> int:
    store = await open_store(config.store_path)
    try:
        service = TicketService(config, store, SystemClock())
        ids = await store.inbox_ids("failed") if every_failed else [inbox_id or 0]
        failures = 0
        for one in ids:
            row = await store.inbox_row(one)
            if row is None:
                print(f"inbox {one}: no such row", file=sys.stderr)
                failures += 1
                continue
            outcome = await service.process(one)
            print(f"inbox {one}: ticket #{outcome.ticket_id}: {outcome.summary}"
                  if outcome.ticket_id else f"inbox {one}: {outcome.summary}")
            failures += outcome.failed
        if not ids:
            print("no failed inbox mail")
        if every_failed:
            mails = await store.requeue_failed("mail", SystemClock().now())
            print(f"{mails} failed mail queued again" if mails == 1
                  else f"{mails} failed mails queued again")
    finally:
        await store.close()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
