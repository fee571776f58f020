"""The checks check-in-container.sh runs inside the booted container, as a oneshot unit.

It drives the installed supportd units with systemctl (systemd is PID 1 here), prints one
`PASS name: detail` or `FAIL name: detail` line per check, writes them to RESULTS, and exits
with the number of failures. Only the system python3 and the standard library are used; all
traffic is on the container's own loopback.
"""

from __future__ import annotations

import email
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

RESULTS = Path("/var/log/supportd-check/results.txt")
CONFIG = Path("/etc/supportd/supportd.toml")
OUTBOX = Path("/var/lib/supportd/outbox/new")
DROP_IN = Path("/run/systemd/system/supportd.service.d/check-watchdog.conf")
SMTP_PORT = 2525  # smtp.listen in the shipped supportd.toml
SOCKET_PORT = 25  # ListenStream= in the shipped supportd.socket
STATUS = re.compile(r"^\d+ mails today, \d+ open tickets, outbox \d+ queued")

lines: list[str] = []


def report(ok: bool, name: str, detail: str) -> bool:
    line = f"{'PASS' if ok else 'FAIL'} {name}: {detail}"
    print(line, flush=True)
    lines.append(line)
    return ok


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def show(prop: str, unit: str = "supportd.service") -> str:
    return run("systemctl", "show", "-p", prop, "--value", unit).stdout.strip()


def wait_for(what: str, check: Callable[[], bool], deadline: float = 30.0) -> bool:
    """Poll `check` until it holds or `deadline` seconds pass (a condition, not a sleep)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.2)
    print(f"  timed out after {deadline:.0f}s waiting for {what}", flush=True)
    return False


def journal(*args: str) -> str:
    return run("journalctl", "-u", "supportd", "--no-pager", "-o", "cat", *args).stdout


def mail(subject: str, message_id: str, port: int = SMTP_PORT) -> None:
    message = EmailMessage()
    message["From"] = "Carol <carol@customer.example>"
    message["To"] = "support@example.com"
    message["Subject"] = subject
    message["Message-ID"] = message_id
    message.set_content("Sent by check-in-container.py.\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.send_message(message)


def tickets() -> str:
    return run("runuser", "-u", "supportd", "--", "/opt/supportd/bin/supportd",
               "--config", str(CONFIG), "tickets").stdout


def acknowledged(subject: str) -> bool:
    """An outbox mail to Carol whose subject carries `subject` (the acknowledgement)."""
    for path in OUTBOX.glob("*") if OUTBOX.is_dir() else []:
        sent = email.message_from_bytes(path.read_bytes())
        if subject in str(sent["Subject"]) and "carol@customer.example" in str(sent["To"]):
            return True
    return False


def http_get(path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:9187{path}", timeout=10) as response:
        return response.status, response.read().decode()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def check_start() -> bool:
    started = run("systemctl", "start", "supportd.service")  # Type=notify: returns on READY=1
    state = f"{show('ActiveState')}/{show('SubState')}"
    report(started.returncode == 0 and state == "active/running", "start",
           f"systemctl start rc={started.returncode}, {state} (READY=1 received)"
           + (f": {started.stderr.strip()}" if started.stderr.strip() else ""))
    status = run("systemctl", "status", "--no-pager", "supportd.service").stdout
    line = next((s.strip() for s in status.splitlines() if s.strip().startswith("Status:")), "")
    report(bool(STATUS.match(show("StatusText"))), "status", line or "no Status: line")
    pid = show("MainPID")
    proc = Path(f"/proc/{pid}/status").read_text()
    fields = dict(re.findall(r"^(\w+):\s*(.*)$", proc, re.M))
    uid_map = Path(f"/proc/{pid}/uid_map").read_text().split()
    # mountinfo(5): field 5 is the mount point, field 6 its options; the last "/" one is in force.
    roots = [m.split()[5] for m in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
             if m.split()[4] == "/"]
    root_ro = bool(roots) and roots[-1].split(",")[0] == "ro"
    ok = (fields.get("NoNewPrivs") == "1" and fields.get("Seccomp") == "2"
          and fields.get("CapEff") == "0" * 16 and uid_map[:3] != ["0", "0", "4294967295"]
          and root_ro)
    return report(ok, "hardening in force",
                  f"NoNewPrivs={fields.get('NoNewPrivs')} Seccomp={fields.get('Seccomp')} "
                  f"CapEff={fields.get('CapEff')} uid_map={' '.join(uid_map)} "
                  f"/ read-only={root_ro}")


def check_worker() -> bool:
    pid = show("MainPID")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if len(children) != 1:
        return report(False, "worker process", f"children of {pid}: {children}")
    child = children[0]
    command = Path(f"/proc/{child}/cmdline").read_text().replace("\0", " ").strip()

    def nice() -> int:
        return int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[16])

    wait_for("the worker to lower its priority", lambda: nice() == 10, deadline=10)
    seccomp = dict(re.findall(r"^(\w+):\s*(.*)$", Path(f"/proc/{child}/status").read_text(),
                              re.M)).get("Seccomp")
    return report(" worker " in f" {command} " and nice() == 10 and seccomp == "2",
                  "worker process", f"pid {child}, nice {nice()}, Seccomp={seccomp}: {command}")


def check_mail() -> bool:
    mail("Printer on fire", "<check-1@customer.example>")
    ticket = wait_for("ticket", lambda: "Printer on fire" in tickets())
    ack = wait_for("acknowledgement", lambda: acknowledged("Printer on fire"))
    report(ticket and ack, "mail -> ticket -> acknowledgement",
           f"ticket={ticket} acknowledgement in {OUTBOX}={ack}")
    entries = [json.loads(line) for line in run(
        "journalctl", "-u", "supportd", "--no-pager", "-o", "json").stdout.splitlines()]
    ticket_lines = [e for e in entries if "ticket=1 " in str(e.get("MESSAGE", ""))]
    report(bool(ticket_lines) and all(e.get("PRIORITY") == "6"
                                      and not str(e["MESSAGE"]).startswith("<")
                                      for e in ticket_lines),
           "journal priorities", f"{len(ticket_lines)} line(s) with ticket=1, all PRIORITY=6")
    try:
        health, _ = http_get("/healthz")
        _, metrics = http_get("/metrics")
    except OSError as error:
        return report(False, "healthz and metrics", str(error))
    return report(health == 200 and "supportd_mails_received_total" in metrics,
                  "healthz and metrics", f"/healthz {health}, /metrics "
                  f"{'has' if 'supportd_mails_received_total' in metrics else 'lacks'} "
                  "supportd_mails_received_total")


def check_reload() -> bool:
    pid = show("MainPID")
    good = CONFIG.read_text()
    session = smtplib.SMTP("127.0.0.1", SMTP_PORT, timeout=30)
    session.ehlo("check.example")
    CONFIG.write_text(good + '\n[[agents]]\nemail = "bob@example.com"\nname = "Bob"\n'
                      'groups = ["tier1"]\n')
    reloaded = run("systemctl", "reload", "supportd.service")
    applied = wait_for("reload line", lambda: "reloaded /etc/supportd/supportd.toml: 2 agents"
                       in journal())
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = (
        "carol@customer.example", "support@example.com", "Sent across a reload")
    message.set_content("The session was opened before the reload.\n")
    try:
        session.send_message(message)
        kept = True
    except smtplib.SMTPException as error:
        kept = False
        print(f"  session opened before the reload: {error}", flush=True)
    session.quit()
    report(reloaded.returncode == 0 and applied and kept and show("MainPID") == pid, "reload",
           f"systemctl reload rc={reloaded.returncode} {reloaded.stderr.strip()}".rstrip()
           + f", new config applied={applied}, SMTP session kept={kept}, "
           f"same PID={show('MainPID') == pid}")
    CONFIG.write_text(good.replace("auto_mail_limit = 3", 'auto_mail_limit = "three"'))
    rejected = run("systemctl", "reload", "supportd.service")
    logged = wait_for("rejection",
                      lambda: "reload rejected, old config kept" in journal("-p", "err"))
    CONFIG.write_text(good)
    run("systemctl", "reload", "supportd.service")
    return report(rejected.returncode == 0 and logged and show("ActiveState") == "active"
                  and show("MainPID") == pid, "reload with a broken config",
                  f"rejected and logged at priority err={logged}, still active, same PID")


def check_watchdog() -> bool:
    pid, interval = show("MainPID"), show("WatchdogUSec")
    pings = {show("WatchdogTimestampMonotonic")}

    def two_more_pings() -> bool:
        pings.add(show("WatchdogTimestampMonotonic"))
        return len(pings) >= 3

    # Two fresh pings (15 s apart) prove the loop's pings arrive; the deadline passes WatchdogSec.
    alive = wait_for("two watchdog pings", two_more_pings, deadline=45)
    report(alive and show("MainPID") == pid and show("NRestarts") == "0", "watchdog pings",
           f"WatchdogSec={interval}, {len(pings) - 1} ping(s) seen, same PID, NRestarts=0")
    # A stuck loop (here: a stopped process) must be killed and restarted.
    DROP_IN.parent.mkdir(parents=True, exist_ok=True)
    DROP_IN.write_text("[Service]\nWatchdogSec=3s\nTimeoutAbortSec=3s\n")
    run("systemctl", "daemon-reload")
    run("systemctl", "restart", "supportd.service")
    stuck = show("MainPID")
    os.kill(int(stuck), signal.SIGSTOP)
    restarted = wait_for("a restart by the watchdog", lambda: show("MainPID") not in ("0", stuck)
                         and show("SubState") == "running", deadline=30)
    timeout_logged = "Watchdog timeout" in run("journalctl", "--no-pager", "-o", "cat",
                                               "-u", "supportd").stdout
    DROP_IN.unlink()
    run("systemctl", "daemon-reload")
    run("systemctl", "restart", "supportd.service")
    return report(restarted and timeout_logged, "watchdog restarts a stuck loop",
                  f"SIGSTOP under WatchdogSec=3s: restarted={restarted}, "
                  f"'Watchdog timeout' logged={timeout_logged}")


def check_stop() -> bool:
    idle = smtplib.SMTP("127.0.0.1", SMTP_PORT, timeout=30)
    idle.ehlo("check.example")
    began = time.monotonic()
    stopped = run("systemctl", "stop", "supportd.service")
    took = time.monotonic() - began
    try:
        told = idle.noop()[0] == 421
    except smtplib.SMTPServerDisconnected:
        told = True  # told 421 and closed before the NOOP
    drained = "supportd stopped: SMTP drained" in journal()
    return report(stopped.returncode == 0 and show("Result") == "success" and drained and told,
                  "stop", f"rc={stopped.returncode} Result={show('Result')} in {took:.1f}s "
                  f"(TimeoutStopSec {show('TimeoutStopUSec')}), idle session told 421={told}, "
                  f"'SMTP drained' logged={drained}")


def check_socket() -> bool:
    run("systemctl", "stop", "supportd.service")
    started = run("systemctl", "start", "supportd.socket")
    inactive = show("ActiveState") == "inactive"
    mail("Via the socket", "<check-2@customer.example>", port=SOCKET_PORT)
    ticket = wait_for("ticket via port 25", lambda: "Via the socket" in tickets())
    passed = "listening for SMTP on a socket from systemd" in journal()
    report(started.returncode == 0 and inactive and ticket and passed
           and show("SubState") == "running" and refused(SMTP_PORT),
           "socket activation", f"port {SOCKET_PORT} started supportd={ticket}, used the "
           f"passed socket={passed}, {SMTP_PORT} not bound={refused(SMTP_PORT)}")
    run("systemctl", "stop", "supportd.service")  # the socket stays and keeps listening
    mail("While stopped", "<check-3@customer.example>", port=SOCKET_PORT)
    again = wait_for("ticket after a stop", lambda: "While stopped" in tickets())
    return report(again and show("SubState") == "running", "socket keeps mail across a stop",
                  f"mail to port {SOCKET_PORT} while supportd was stopped restarted it "
                  f"and became a ticket={again}")


def check_exposure() -> bool:
    out = run("systemd-analyze", "security", "--no-pager", "supportd.service").stdout
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    score = float(found.group(1)) if found else None
    return report(score is not None and score < 3.0, "exposure",
                  f"systemd-analyze security (online) for supportd.service: {score}")


def attempt(check: Callable[[], bool]) -> bool:
    """Run one check; an exception is that check's failure, and the others still run."""
    try:
        return check()
    except Exception as error:
        return report(False, check.__name__.removeprefix("check_"),
                      f"{type(error).__name__}: {error}")


def main() -> int:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if shutil.which("systemctl") is None or not Path("/run/systemd/system").is_dir():
        report(False, "systemd", "not booted with systemd as PID 1")
    else:
        report(True, "systemd", run("systemctl", "--version").stdout.splitlines()[0]
               + f", system state {run('systemctl', 'is-system-running').stdout.strip()}")
        if attempt(check_start):
            for check in (check_worker, check_mail, check_reload, check_watchdog, check_stop):
                attempt(check)
        for check in (check_socket, check_exposure):
            attempt(check)
    failed = sum(line.startswith("FAIL") for line in lines)
    if failed:
        lines.append("--- journalctl -u supportd ---")
        lines.append(run("journalctl", "-u", "supportd", "--no-pager").stdout)
    RESULTS.write_text("\n".join(lines) + "\n")
    return failed


if __name__ == "__main__":
    sys.exit(main())
