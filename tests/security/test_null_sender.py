"""Finding 4: `MAIL FROM:<>` is the null sender, however the client spells it.

aiosmtpd hands the null reverse-path over as the string "<>" (its address parser keeps the
brackets of an empty angle-addr), so intake must turn it into the null sender itself.
"""

from __future__ import annotations

import email.policy
import smtplib

import pytest

from tests.integration.conftest import Daemon, mail

# A vacation notice that carries none of the headers that mark automatic mail: only its
# null envelope sender says a machine sent it (RFC 3834 §3.3 asks responders to use <>).
VACATION = mail(sender="carol@customer.example", subject="Away until Monday",
                body="I am on vacation until Monday and will read your mail then.")


@pytest.mark.parametrize("command", ["MAIL FROM:<>", "MAIL FROM: <>"])
def test_vacation_mail_from_the_null_sender_is_not_answered(daemon: Daemon, command: str) -> None:
    """Finding 4: a vacation mail sent with the null reverse-path (`MAIL FROM:<>` or
    `MAIL FROM: <>`) gets no acknowledgement and no agent is notified; the ticket's events
    say it came from the null sender."""
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=15) as client:
        client.ehlo()
        assert client.docmd(command)[0] == 250
        assert client.rcpt("support@example.com")[0] == 250
        assert client.data(VACATION.as_bytes(policy=email.policy.SMTP))[0] == 250

    assert daemon.no_new_mail() == []
    assert "not answered: null_sender: sent from the null envelope sender <>" in daemon.events(1)
    assert daemon.query("SELECT mail_from FROM inbox")[0]["mail_from"] == ""
