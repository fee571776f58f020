"""Loop storm: supportd against an autoresponder that answers every mail it gets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from supportd.tickets.decide import TICKET_MAIL_LIMIT
from tests.integration.conftest import mail
from tests.reliability.conftest import ConfiguredDaemon, Smarthost, free_port, wait_for

LIMIT = 3


def test_autoresponder_answering_everything_gets_at_most_the_hourly_bound(
    tmp_path: Path, smarthost_factory: Callable[..., Smarthost]
) -> None:
    port = free_port()
    # Broken on purpose: no Auto-Submitted, no Precedence, answers to Reply-To or From.
    responder = smarthost_factory("--answer", f"127.0.0.1:{port}")
    daemon = ConfiguredDaemon(tmp_path, port, smarthost_port=responder.port,
                              auto_mail_limit=LIMIT)
    daemon.start()
    try:
        for subject in ("first problem", "second problem"):
            daemon.send(mail(subject=subject))

        def quiet() -> bool:
            # The responder answers before its 250, so a mail marked sent has its answer
            # stored: no queued outbox row and no new inbox row means nothing is in flight.
            return daemon.inbox_settled() and not daemon.query(
                "SELECT 1 FROM outbox WHERE state = 'queued'")
        wait_for(quiet, timeout=60, what="the exchange with the autoresponder to stop")

        automatic = daemon.query(
            "SELECT rcpt_to, count(*) AS n, min(created_at) AS first, max(created_at) AS last "
            "FROM outbox WHERE automatic = 1 GROUP BY rcpt_to")
        total = daemon.query("SELECT count(*) AS n FROM outbox")[0]["n"]
        inbox = daemon.query("SELECT count(*) AS n FROM inbox")[0]["n"]
        print(f"\nloop storm: {inbox} mails in, {total} out "
              f"({', '.join(f'{r[0]}: {r[1]} automatic' for r in automatic)}), "
              f"{len(responder.received())} taken by the autoresponder; then quiet")
        assert all(r["n"] <= LIMIT for r in automatic)
        tickets = daemon.query("SELECT count(*) AS n FROM tickets")[0]["n"]
        # The first mail, TICKET_MAIL_LIMIT answers, and the one that is stored unanswered.
        assert inbox <= tickets * (TICKET_MAIL_LIMIT + 2)
        assert len(responder.received()) == total
    finally:
        daemon.stop()
