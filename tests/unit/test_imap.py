"""IMAP intake's pure parts: [[imap]] config, FETCH response parsing, UID sets, backoff."""

from __future__ import annotations

from pathlib import Path

import pytest

from supportd.config import ConfigInvalid, load_config
from supportd.intake.imap import fetched_mails, uid_set
from supportd.runner import BACKOFF_MAX, backoff_delay

REPO = Path(__file__).resolve().parents[2]
BASE = (REPO / "supportd.toml").read_text()


def load(tmp_path: Path, imap: str) -> Path:
    (tmp_path / "imap.password").write_text("secret\n")
    path = tmp_path / "supportd.toml"
    path.write_text(BASE + "\n[[imap]]\n" + imap)
    return path


def errors(path: Path) -> list[str]:
    with pytest.raises(ConfigInvalid) as invalid:
        load_config(path)
    return [str(e) for e in invalid.value.errors]


def test_a_mailbox_with_defaults(tmp_path: Path) -> None:
    config = load_config(load(tmp_path, 'name = "support"\nhost = "imap.example.com"\n'
                                        'user = "support"\npassword_file = "imap.password"\n'
                                        'move_to = "Done"\n'))
    (box,) = config.imap
    assert (box.port, box.tls, box.tls_verify, box.folder, box.after) == (
        993, "implicit", True, "INBOX", "move")
    assert box.password == "secret"
    assert (box.poll_interval, box.idle_renew, box.batch_size) == (60.0, 1500.0, 100)


def test_every_imap_error_names_file_key_and_reason(tmp_path: Path) -> None:
    path = load(tmp_path, 'name = "a b"\nhost = "imap.example.com"\ntls = "ssl"\n'
                          'tls_no_verify_host = "other.example.com"\npassword_file = "nope"\n'
                          'idle_seconds = 1800\nfolders = "x"\n')
    found = errors(path)
    assert found == [
        f"{path}: imap[0].name: must be a word of letters, digits, - or _, not 'a b'",
        f"{path}: imap[0].tls: must be implicit, starttls or none; not 'ssl'",
        f"{path}: imap[0].tls_no_verify_host: 'other.example.com' is not this mailbox's host "
        "'imap.example.com'",
        f"{path}: imap[0].user: is required",
        f"{path}: imap[0].password_file: cannot read {tmp_path / 'nope'}: "
        "No such file or directory",
        f"{path}: imap[0].move_to: is required when after = \"move\" (the folder for stored mail)",
        f"{path}: imap[0].idle_seconds: must be under 1740 (29 minutes), not 1800",
        f"{path}: imap[0].folders: unknown key (a typo?)",
    ]


def test_password_and_token_file_exclude_each_other(tmp_path: Path) -> None:
    path = load(tmp_path, 'name = "a"\nhost = "h"\nuser = "u"\npassword_file = "imap.password"\n'
                          'xoauth2_token_file = "token"\nafter = "seen"\n')
    assert errors(path) == [f"{path}: imap[0].xoauth2_token_file: give a password or an "
                            "XOAUTH2 token file, not both"]


def test_fetch_response_with_uid_before_and_after_the_body() -> None:
    lines = [b"1 FETCH (UID 7 BODY[] {5}", bytearray(b"hello"), b")",
             b"2 FETCH (FLAGS (\\Seen) UID 8)",  # unsolicited flag change: no mail
             b"3 FETCH (BODY[] {3}", bytearray(b"abc"), b" UID 9)",
             b"Fetch completed."]
    assert fetched_mails(lines) == [(7, b"hello"), (9, b"abc")]


def test_uid_set_uses_ranges() -> None:
    assert uid_set([5, 1, 2, 3, 9, 10]) == "1:3,5,9:10"


def test_backoff_doubles_to_a_cap_with_jitter() -> None:
    assert [backoff_delay(n, 0.0) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert backoff_delay(1, 0.999) < 1.0
    assert backoff_delay(30, 0.999) <= BACKOFF_MAX
