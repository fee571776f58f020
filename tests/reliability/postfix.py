"""A private Postfix relay on loopback, configured in a temporary folder (see TEST-SERVERS.md).

It accepts mail for example.com on its own SMTP port and relays it to supportd by SMTP or
LMTP; mail supportd does not take with a 250 stays queued and is retried every second.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

MASTER_CF = Path("/etc/postfix/master.cf")

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {folder}/queue
data_directory = {folder}/data
mail_owner = postfix
myhostname = relay.test
mydomain = test
myorigin = relay.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = example.com
transport_maps = inline:{{ example.com={transport}:[127.0.0.1]:{port} }}
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
local_recipient_maps =
maillog_file = {folder}/maillog
maillog_file_prefixes = /tmp, {folder}
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
smtp_connect_timeout = 2s
smtp_data_done_timeout = 30s
default_destination_concurrency_limit = 10
lmtp_destination_concurrency_limit = 10
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
"""


def postfix_missing() -> str | None:
    """Why a private Postfix cannot run here, or None when it can."""
    if shutil.which("postfix") is None or not MASTER_CF.exists():
        return "Postfix is not installed (make test installs the postfix package)"
    return None


class PrivatePostfix:
    def __init__(self, *, port: int, relay_to: int, lmtp: bool = False) -> None:
        # Its own folder: pytest's tmp_path is mode 0700 and Postfix drops to the postfix user.
        folder = Path(tempfile.mkdtemp(prefix="supportd-postfix-"))
        os.chmod(folder, 0o755)
        self.folder, self.port = folder, port
        self.conf = folder / "conf"
        self.conf.mkdir(parents=True)
        (folder / "queue").mkdir()  # `start` fills it in; it must exist first
        (folder / "data").mkdir()
        shutil.chown(folder / "data", "postfix")
        (self.conf / "main.cf").write_text(MAIN_CF.format(
            folder=folder, port=relay_to, transport="lmtp" if lmtp else "smtp"))
        # Listen on our port instead of 25, outside the chroot (no copied /etc files needed).
        master = re.sub(r"^smtp(\s+)inet(\s+)(\S+)(\s+)(\S+)(\s+)(\S+)",
                        rf"{port}\1inet\2\3\4\5\6n", MASTER_CF.read_text(), count=1, flags=re.M)
        (self.conf / "master.cf").write_text(master)

    def _postfix(self, *args: str) -> None:
        result = subprocess.run(["postfix", "-c", str(self.conf), *args],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"postfix {' '.join(args)} failed: {result.stdout}"
                               f"{result.stderr}\n{self.log()}")

    def start(self) -> None:
        try:
            self._postfix("start")
        except BaseException:
            # A master that came up before the failure must not outlive the test.
            with contextlib.suppress(RuntimeError):  # `postfix stop`: no master is running
                self.stop()
            raise

    def stop(self) -> None:
        try:
            self._postfix("stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def flush(self) -> None:
        """Retry deferred mail now instead of at the next queue run."""
        self._postfix("flush")

    def queue_is_empty(self) -> bool:
        result = subprocess.run(["postqueue", "-c", str(self.conf), "-p"],
                                capture_output=True, text=True, timeout=30)
        return "Mail queue is empty" in result.stdout

    def log(self) -> str:
        path = self.folder / "maillog"
        return path.read_text(errors="replace") if path.exists() else "(no maillog)"
