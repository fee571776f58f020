"""A private Dovecot (Debian's dovecot-imapd) on a free loopback port, and a plain IMAP client.

The test side talks IMAP with the stdlib's imaplib: a second, independent implementation, so
a bug in how supportd uses aioimaplib cannot hide itself in the test's own client.
"""

from __future__ import annotations

import imaplib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

USER, PASSWORD = "support", "imap-secret"

# Dovecot 2.3's default post-login capabilities, minus what a test wants the server to lack.
CAPABILITIES = ("IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY "
                "THREAD=REFERENCES THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL "
                "CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 "
                "CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS "
                "BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE LITERAL+ "
                "NOTIFY SPECIAL-USE")

CONFIG = """\
protocols = imap
listen = 127.0.0.1
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
ssl = {ssl}
{ssl_files}
disable_plaintext_auth = no
auth_mechanisms = plain login{oauth2_mechanisms}
mail_location = maildir:{dir}/mail/%n
first_valid_uid = {uid}
default_internal_user = dovecot
default_login_user = dovenull
imap_capability = {capabilities}
# The process title shows the command in progress: tests see when a client IDLEs.
verbose_proctitle = yes
{oauth2}passdb {{
  driver = passwd-file
  # XOAUTH2 hands the token to the passdb as a password: never check it against this file.
  # `none`: lookups without a login (doveadm, the static userdb's user check) still work.
  mechanisms = plain login none
  args = scheme=PLAIN username_format=%n {dir}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={dir}/mail/%n
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
}}
"""

# XOAUTH2 and OAUTHBEARER checked by an oauth2 passdb against a token introspection endpoint
# (RFC 7662; Dovecot 2.3 `introspection_mode = post` sends the token as a form field).
OAUTH2 = """\
auth_failure_delay = 0
# Off: Dovecot's growing delay after refused logins (auth penalty); tests retry on purpose.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {dir}/dovecot-oauth2.conf.ext
}}
"""

OAUTH2_EXT = """\
introspection_mode = post
introspection_url = {url}
username_attribute = username
active_attribute = active
active_value = true
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_certificate(folder: Path, host: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate for `host` (and 127.0.0.1); the test trusts it as its CA."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN={host}", "-addext", f"subjectAltName=DNS:{host},IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return cert, key


@dataclass
class Dovecot:
    capabilities: str = CAPABILITIES
    tls: bool = False
    port: int = field(default_factory=free_port)
    imaps_port: int = 0
    oauth2_introspection_url: str = ""  # set: XOAUTH2 logins are checked there
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="supportd-imap-")))
    process: subprocess.Popen[bytes] | None = None

    @property
    def cert(self) -> Path:
        return self.folder / "cert.pem"

    def start(self) -> None:
        if shutil.which("dovecot") is None:
            raise AssertionError("dovecot is not installed: `make test` installs dovecot-imapd")
        mail = pwd.getpwnam("mail")
        # Dovecot drops to the mail user, which must reach the Maildir below this folder.
        self.folder.chmod(0o755)
        ssl_files = ""
        if self.tls:
            cert, key = make_certificate(self.folder)
            ssl_files = f"ssl_cert = <{cert}\nssl_key = <{key}"
            self.imaps_port = free_port()
        oauth2 = ""
        if self.oauth2_introspection_url:
            oauth2 = OAUTH2.format(dir=self.folder)
            (self.folder / "dovecot-oauth2.conf.ext").write_text(
                OAUTH2_EXT.format(url=self.oauth2_introspection_url))
        (self.folder / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
        (self.folder / "mail").mkdir()
        os.chown(self.folder / "mail", mail.pw_uid, mail.pw_gid)
        (self.folder / "dovecot.conf").write_text(CONFIG.format(
            dir=self.folder, uid=mail.pw_uid, gid=mail.pw_gid, port=self.port,
            imaps_port=self.imaps_port, capabilities=self.capabilities,
            ssl="yes" if self.tls else "no", ssl_files=ssl_files, oauth2=oauth2,
            oauth2_mechanisms=" xoauth2 oauthbearer" if oauth2 else ""))
        self.process = subprocess.Popen(
            ["dovecot", "-F", "-c", str(self.folder / "dovecot.conf")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_listening()
        except BaseException:
            self.stop()  # a Dovecot that never came up must not outlive the test
            raise

    def _wait_listening(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"dovecot did not start:\n{self.log()}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        shutil.rmtree(self.folder, ignore_errors=True)

    def log(self) -> str:
        path = self.folder / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def idling(self) -> bool:
        """True when a session of the test user sits in IDLE (seen in its process title)."""
        title = f"[{USER} 127.0.0.1 IDLE]".encode()
        return any(title in cmdline for cmdline in self._children())

    def _children(self) -> Iterator[bytes]:
        """The command lines of the master's children, read from /proc (no procps needed)."""
        assert self.process is not None
        for proc in Path("/proc").iterdir():
            try:
                # /proc/PID/stat is "pid (comm) state ppid ...".
                ppid = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
                if ppid == self.process.pid:
                    yield (proc / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue  # not a process, or it ended while we looked

    def doveadm(self, *args: str) -> str:
        return subprocess.run(
            ["doveadm", "-c", str(self.folder / "dovecot.conf"), *args],
            check=True, capture_output=True, text=True).stdout

    @contextmanager
    def client(self) -> Iterator[ImapClient]:
        imap = imaplib.IMAP4("127.0.0.1", self.port, timeout=30)
        imap.login(USER, PASSWORD)
        try:
            yield ImapClient(imap)
        finally:
            imap.logout()


@dataclass
class ImapClient:
    imap: imaplib.IMAP4

    def append(self, raw: bytes, folder: str = "INBOX") -> None:
        status, detail = self.imap.append(folder, "", None, raw)
        assert status == "OK", detail

    def create(self, folder: str) -> None:
        status, detail = self.imap.create(folder)
        assert status == "OK", detail

    def uids(self, folder: str = "INBOX", criteria: str = "ALL") -> list[int]:
        status, detail = self.imap.select(folder, readonly=True)
        assert status == "OK", detail
        status, data = self.imap.uid("SEARCH", criteria)
        assert status == "OK", data
        return [int(u) for u in (data[0] or b"").split()]

    def uidvalidity(self, folder: str = "INBOX") -> int:
        status, data = self.imap.status(folder, "(UIDVALIDITY)")
        assert status == "OK", data
        found = re.search(rb"UIDVALIDITY (\d+)", data[0] or b"")
        assert found, data
        return int(found.group(1))
