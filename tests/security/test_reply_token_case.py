"""Finding 11: a reply token is compared the same way at RCPT and in processing."""

from __future__ import annotations

from tests.integration.conftest import Daemon, body_text, mail


def test_agent_token_in_upper_case_is_the_agents_token(daemon: Daemon) -> None:
    """Finding 11: Alice's mail reaches supportd with her reply address upper-cased in the
    envelope only (a gateway that upper-cases, or her token as a Bcc), her headers naming
    support@. RCPT accepted it before and still does; now processing finds the same token:
    her `#status solved`, with no other way to thread or authenticate, solves ticket 1
    instead of opening a new unauthenticated ticket."""
    daemon.send(mail(sender="carol@customer.example"))
    note = next(m for m in daemon.new_mail(2) if m["To"] == "alice@example.com")
    shouted = str(note["Reply-To"]).upper()

    refused = daemon.send(mail(sender="alice@example.com", subject="done",
                               body="#status solved\n\nFixed."), to=[shouted])

    assert refused == {}  # every recipient accepted at RCPT
    [relay] = daemon.new_mail(1)
    assert relay["To"] == "carol@customer.example" and "Fixed." in body_text(relay)
    assert daemon.ticket(1)["status"] == "solved"
    assert daemon.query("SELECT count(*) AS n FROM tickets")[0]["n"] == 1
