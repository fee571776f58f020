"""XOAUTH2 against a real Dovecot whose oauth2 passdb asks a fake introspection endpoint."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import free_port, wait_for
from tests.integration.dovecot import USER, Dovecot
from tests.integration.oauth2 import IntrospectionServer
from tests.integration.test_imap import ImapDaemon, raw_mail

TOKEN_FILE = 'xoauth2_token_file = "imap.token"'


@pytest.fixture
def oauth2() -> Iterator[IntrospectionServer]:
    with IntrospectionServer(USER).running() as server:
        yield server


@pytest.fixture
def dovecot(oauth2: IntrospectionServer) -> Iterator[Dovecot]:
    server = Dovecot(oauth2_introspection_url=oauth2.url)
    server.start()
    try:
        with server.client() as client:
            client.create("Done")
        yield server
    finally:
        server.stop()  # also when creating the folder failed


@pytest.fixture
def watcher(tmp_path: Path, dovecot: Dovecot) -> Iterator[ImapDaemon]:
    """The daemon, configured but not started, logging in with the token in imap.token."""
    d = ImapDaemon(tmp_path, free_port(), imap={"port": dovecot.port, "credential": TOKEN_FILE})
    yield d
    d.stop()


def refusals(log: str) -> list[tuple[float, int]]:
    """(delay, attempt) of each reconnect after a refused token, from the daemon's log."""
    return [(float(delay), int(attempt)) for delay, attempt in re.findall(
        r"XOAUTH2 login: NO .*? was refused; reconnecting in ([\d.]+)s \(attempt (\d+)\)", log)]


def test_xoauth2_login_turns_an_appended_mail_into_a_ticket(
        watcher: ImapDaemon, dovecot: Dovecot, oauth2: IntrospectionServer) -> None:
    oauth2.accept_only("token-1")
    (watcher.folder / "imap.token").write_text("token-1\n")
    watcher.start()
    wait_for(dovecot.idling, what="the watcher to log in and IDLE")
    with dovecot.client() as client:
        client.append(raw_mail(1))
    wait_for(lambda: watcher.tickets() == 1, what="a ticket from the appended mail")
    assert watcher.ticket(1)["subject"] == "Problem 1"
    assert oauth2.tokens_asked() == ["token-1"]


def test_a_token_rotated_in_the_file_is_used_at_the_next_login(
        watcher: ImapDaemon, dovecot: Dovecot, oauth2: IntrospectionServer) -> None:
    oauth2.accept_only("token-1")
    (watcher.folder / "imap.token").write_text("token-1\n")
    watcher.start()
    wait_for(dovecot.idling, what="the first login")

    # The outside tool refreshes the file; the provider revokes the old token and cuts the
    # session, as providers do when a token expires.
    (watcher.folder / "imap.token").write_text("token-2\n")
    oauth2.accept_only("token-2")
    dovecot.doveadm("kick", USER)
    wait_for(lambda: oauth2.tokens_asked() == ["token-1", "token-2"], what="a second login")
    wait_for(dovecot.idling, what="the watcher to IDLE again")
    with dovecot.client() as client:
        client.append(raw_mail(1))
    wait_for(lambda: watcher.tickets() == 1, what="a ticket after the rotation")
    assert "ImapError: the server said BYE" in watcher.log()
    assert not refusals(watcher.log()), "the old token must not be tried again"


def test_a_refused_token_is_logged_and_retried_with_backoff(
        watcher: ImapDaemon, dovecot: Dovecot, oauth2: IntrospectionServer) -> None:
    oauth2.accept_only("fresh")
    token_file = watcher.folder / "imap.token"
    token_file.write_text("expired\n")
    with dovecot.client() as client:
        client.append(raw_mail(1))
    watcher.start()
    wait_for(lambda: len(refusals(watcher.log())) >= 2, what="two refused logins")
    (first, attempt1), (second, attempt2) = refusals(watcher.log())[:2]
    assert (attempt1, attempt2) == (1, 2)
    assert 0.5 <= first <= 1.0 <= second <= 2.0, "the delay doubles, with jitter"
    log = watcher.log()
    assert ('XOAUTH2 login: NO [AUTHENTICATIONFAILED] Authentication failed. (server: '
            '{"status":"401","schemes":"bearer","scope":"mail"}); the token in '
            f"{token_file} was refused") in log
    assert "Traceback" not in log
    assert "BAD" not in log, "the error challenge is answered with exactly one empty line"
    assert watcher.tickets() == 0

    token_file.write_text("fresh\n")
    wait_for(lambda: watcher.tickets() == 1, what="a ticket once the token is fresh")
    assert oauth2.tokens_asked()[-1] == "fresh"
    assert set(oauth2.tokens_asked()) == {"expired", "fresh"}


def test_imap_check_logs_in_with_the_token_and_reports_a_refused_one(
        watcher: ImapDaemon, dovecot: Dovecot, oauth2: IntrospectionServer) -> None:
    with dovecot.client() as client:
        client.append(raw_mail(1))
    oauth2.accept_only("token-1")
    watcher.write_config()
    (watcher.folder / "imap.token").write_text("token-1\n")
    result = watcher.cli("imap-check", "main")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "INBOX: 1 mails, 1 waiting" in result.stdout

    oauth2.accept_only()
    result = watcher.cli("imap-check", "main")
    assert result.returncode == 1
    assert "PROBLEM: ImapError: XOAUTH2 login: NO [AUTHENTICATIONFAILED]" in result.stdout
    assert oauth2.tokens_asked() == ["token-1", "token-1"]
    with dovecot.client() as client:
        assert client.uids("INBOX", "UNSEEN") == [1], "checking changes nothing"
