"""`supportd ticket N`: the first door into a ticket that is not mail, through the same rules."""

from __future__ import annotations

from tests.integration.conftest import Daemon, body_text, mail


def test_the_ticket_command_solves_a_ticket_and_the_customer_hears_of_it(
        daemon: Daemon) -> None:
    daemon.send(mail())
    daemon.new_mail(2)

    done = daemon.cli("ticket", "1", "--status", "solved", "--assign", "bob@example.com",
                      "--note", "Fixed the proxy.", "--by", "alice@example.com")

    assert done.returncode == 0, done.stderr
    ticket = daemon.ticket(1)
    assert (ticket["status"], ticket["assignee"]) == ("solved", "bob@example.com")
    assert "status: new -> solved" in daemon.events(1)
    [notice] = daemon.new_mail(1)
    assert notice["To"] == "carol@customer.example" and "solved" in body_text(notice)
    note = daemon.query("SELECT kind, author, body FROM messages WHERE kind = 'note'")
    assert [tuple(n) for n in note] == [("note", "alice@example.com", "Fixed the proxy.")]


def test_a_refused_change_says_why_and_changes_nothing(daemon: Daemon) -> None:
    daemon.send(mail())
    daemon.new_mail(2)
    assert daemon.cli("ticket", "1", "--status", "solved").returncode == 0
    daemon.new_mail(1)
    events = daemon.events(1)

    refused = daemon.cli("ticket", "1", "--status", "pending", "--group", "nosuch")

    assert refused.returncode == 1
    assert "a solved ticket cannot become pending" in refused.stderr
    assert "no group 'nosuch'; groups: experts, tier1" in refused.stderr
    assert daemon.events(1) == events and daemon.ticket(1)["status"] == "solved"
    missing = daemon.cli("ticket", "7", "--status", "open")
    assert missing.returncode == 1 and "no such ticket" in missing.stderr
