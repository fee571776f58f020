"""Crashes: a real Postfix relays mail while supportd is SIGKILLed; nothing lost or doubled.

`SUPPORTD_CRASH_MAILS` sets how many mails Postfix relays (2000 by default, as `make bench`).
"""

from __future__ import annotations

import os
import smtplib
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import mail
from tests.reliability.conftest import ConfiguredDaemon, Smarthost, free_port, wait_for
from tests.reliability.postfix import PrivatePostfix, postfix_missing

MAILS = int(os.environ.get("SUPPORTD_CRASH_MAILS", "2000"))


def hand_to_postfix(port: int, message_ids: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        for i, message_id in enumerate(message_ids):
            client.send_message(mail(subject=f"crash test {i}", message_id=f"<{message_id}>",
                                     body=f"Mail number {i} of the crash test."))


@pytest.mark.skipif(postfix_missing() is not None, reason=postfix_missing() or "")
def test_three_sigkills_while_postfix_relays_lose_and_double_nothing(tmp_path: Path) -> None:
    daemon = ConfiguredDaemon(tmp_path, free_port())
    # Postfix first: when it cannot start, no supportd (and its worker) is left running.
    relay = PrivatePostfix(port=free_port(), relay_to=daemon.port)
    relay.start()
    sent = [f"crash-{i}@customer.example" for i in range(MAILS)]
    sender = threading.Thread(target=hand_to_postfix, args=(relay.port, sent))
    try:
        daemon.start()
        wait_for(lambda: _listening(relay.port), what="Postfix to listen")
        sender.start()
        for kill in (1, 2, 3):
            # Each kill lands mid-stream: Postfix is relaying and processing lags behind.
            target = kill * MAILS // 4
            wait_for(lambda: _inbox_count(daemon) >= target,  # noqa: B023 - called at once
                     timeout=120, what=f"{target} mails in the inbox")
            daemon.kill()
            daemon.start()
            relay.flush()
        sender.join(timeout=120)
        wait_for(relay.queue_is_empty, timeout=240, what="Postfix's queue to drain")
        wait_for(daemon.inbox_settled, timeout=240, what="every inbox row processed")

        rows = daemon.query(
            "SELECT i.dedupe_key, i.state, count(m.id) AS entries FROM inbox i "
            "LEFT JOIN messages m ON m.inbox_id = i.id GROUP BY i.id")
        stored = [r["dedupe_key"].removeprefix("mid:").partition(" ")[0] for r in rows]
        entries = dict(zip(stored, (r["entries"] for r in rows), strict=True))
        lost = set(sent) - set(stored)
        doubled = [k for k, n in entries.items() if n != 1] + \
            [k for k in set(stored) if stored.count(k) > 1]
        log = daemon.log()
        print(f"\ncrash test: {MAILS} mails relayed by Postfix, supportd SIGKILLed 3 times: "
              f"{len(lost)} lost, {len(doubled)} doubled, "
              f"{log.count('duplicate')} redelivered by Postfix and recognised, "
              f"{relay.log().count('status=deferred')} deferrals by Postfix")
        assert not lost
        assert not doubled
        assert set(stored) == set(sent)
        assert all(r["state"] == "done" for r in rows)
        assert daemon.query("SELECT count(*) AS n FROM message_ids WHERE message_id LIKE "
                            "'crash-%'")[0]["n"] == MAILS
    finally:
        try:
            daemon.stop()
        finally:
            relay.stop()


def test_acknowledgement_over_smtp_is_sent_twice_only_after_a_kill_between_send_and_record(
    tmp_path: Path, smarthost_factory: Callable[..., Smarthost]
) -> None:
    """RFC 1047: a kill after the smarthost took DATA but before its 250 was read repeats it.

    The smarthost queues the first mail and holds its reply; supportd is SIGKILLed then. On
    restart the row is still `queued`, so the same mail (same Message-ID) goes out once more,
    and never a third time.
    """
    host = smarthost_factory("--hold-first", "30")
    daemon = ConfiguredDaemon(tmp_path, free_port(), smarthost_port=host.port)
    daemon.start()
    try:
        daemon.send(mail(message_id="<held@customer.example>"))
        [first] = wait_for(host.received, what="the smarthost to take the first mail")
        daemon.kill()
        daemon.start()
        wait_for(lambda: not daemon.query("SELECT 1 FROM outbox WHERE state = 'queued'"),
                 what="outbox drained after the restart")
        received = host.received()
        ids = [r["message_id"] for r in received]
        print(f"\nkill between send and record: {len(received)} deliveries of 2 mails; "
              f"{first['message_id']} delivered {ids.count(first['message_id'])} times")
        assert ids.count(first["message_id"]) == 2  # the one in flight: repeated, same id
        assert len(set(ids)) == len(ids) - 1  # every other mail exactly once
        assert daemon.query("SELECT count(*) AS n FROM outbox WHERE state = 'sent'")[0]["n"] \
            == len(set(ids))
    finally:
        daemon.stop()


def test_maildir_delivery_recorded_after_a_kill_is_not_written_twice(tmp_path: Path) -> None:
    """The state a kill between Maildir write and `mark_sent` leaves: file there, row queued."""
    daemon = ConfiguredDaemon(tmp_path, free_port())
    daemon.start()
    try:
        daemon.send(mail())
        daemon.new_mail(2)
        daemon.stop()
        daemon.write("UPDATE effects SET state = 'queued', done_at = NULL WHERE kind = 'mail'")
        daemon.start()
        wait_for(lambda: not daemon.query("SELECT 1 FROM outbox WHERE state = 'queued'"),
                 what="outbox drained after the restart")
        assert len(daemon.outbox_files()) == 2
    finally:
        daemon.stop()


def _inbox_count(daemon: ConfiguredDaemon) -> int:
    return int(daemon.query("SELECT count(*) AS n FROM inbox")[0]["n"])


def _listening(port: int) -> bool:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=2):
            return True
    except OSError:
        return False
