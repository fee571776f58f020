"""Disk full: the store's filesystem fills up; SMTP says 451 4.3.0, nothing is half-written.

The store lives on its own small tmpfs (mounting needs root, which CI has), so the filesystem
really is full: SQLite gets ENOSPC/SQLITE_FULL exactly as on a full disk.
"""

from __future__ import annotations

import email.policy
import os
import smtplib
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import mail
from tests.reliability.conftest import ConfiguredDaemon, free_port, wait_for

BODY = "All of our servers return 502 since noon.\n" * 500


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a size-limited tmpfs needs root")
def test_full_store_disk_answers_451_and_keeps_every_accepted_mail(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(store)], check=True)
    daemon = ConfiguredDaemon(tmp_path, free_port(), store_file="store/supportd.sqlite3")
    try:
        daemon.start()
        accepted, refused = [], []
        for i in range(400):
            message_id = f"<full-{i}@customer.example>"
            with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
                client.ehlo()
                client.mail("carol@customer.example")
                client.rcpt("support@example.com")
                code, reply = client.data(mail(message_id=message_id, body=BODY).as_bytes(
                    policy=email.policy.SMTP))
            if code == 250:
                accepted.append(message_id)
            else:
                refused.append(message_id)
                assert (code, reply[:5]) == (451, b"4.3.0"), (code, reply)
            if len(refused) >= 5:
                break
        assert refused, "the store never filled up"
        assert daemon.process is not None and daemon.process.poll() is None, daemon.log()[-2000:]

        # Room again: the refused mails come back (as an MTA retries) and are taken.
        subprocess.run(["mount", "-o", "remount,size=64m", str(store)], check=True)
        for message_id in refused:
            daemon.send(mail(message_id=message_id, body=BODY))
        wait_for(daemon.inbox_settled, timeout=60, what="inbox processed after the disk freed")
        # The outbox worker lived through the full disk too, and sends everything queued.
        wait_for(lambda: not daemon.query("SELECT 1 FROM outbox WHERE state != 'sent'"),
                 timeout=60, what="every outbound mail sent after the disk freed")

        db = sqlite3.connect(store / "supportd.sqlite3")
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = daemon.query("SELECT i.dedupe_key, i.state, count(m.id) AS entries FROM inbox i "
                            "LEFT JOIN messages m ON m.inbox_id = i.id GROUP BY i.id")
        stored = sorted(r["dedupe_key"].removeprefix("mid:").partition(" ")[0] for r in rows)
        print(f"\ndisk full: {len(accepted)} accepted, {len(refused)} answered 451 4.3.0 "
              f"then accepted on retry; {sum(r['state'] == 'done' for r in rows)} done, "
              f"integrity ok")
        assert stored == sorted(m.strip("<>") for m in accepted + refused)
        assert all(r["state"] == "done" and r["entries"] == 1 for r in rows)
    finally:
        daemon.stop()
        subprocess.run(["umount", "-l", str(store)], check=False)
