"""IMAP intake (aioimaplib): watch one mailbox, store each mail raw, only then move or flag it.

Exactly once: mail is fetched by UID with BODY.PEEK[] (so nothing is marked read early),
committed to the inbox table, and only after that commit moved to `move_to` or flagged
`\\Seen`; then the last UID is remembered under the mailbox's UIDVALIDITY. A crash in between
fetches the mail again on restart and the inbox's Message-ID dedupe makes it the same row.

aioimaplib has no STARTTLS, leaves a command waiting forever when the connection drops
(aioimaplib issue #110) and never answers the error challenge of a refused XOAUTH2 token;
`ImapSession` adds these three, and nothing else, around it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import aioimaplib

from supportd.clock import Clock
from supportd.config import ImapConfig
from supportd.mail.parse import dedupe_key
from supportd.runner import Runner
from supportd.store.api import ImapPosition, Store

log = logging.getLogger("supportd.intake.imap")
T = TypeVar("T")

COMMAND_TIMEOUT = 60.0
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_FETCH_UID = re.compile(rb"\d+ FETCH \(.*\bUID (\d+)")
_LITERAL = re.compile(rb"\{(\d+)\}$")


class ImapError(Exception):
    """The server refused a command or the connection broke; the watcher reconnects."""


def uid_set(uids: Iterable[int]) -> str:
    """UIDs as an IMAP sequence set with ranges (RFC 3501 §9 sequence-set): 1:3,7."""
    ranges: list[list[int]] = []
    for uid in sorted(uids):
        if ranges and uid == ranges[-1][1] + 1:
            ranges[-1][1] = uid
        else:
            ranges.append([uid, uid])
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in ranges)


def fetched_mails(lines: list[Any]) -> list[tuple[int, bytes]]:
    """(UID, raw) pairs from the response lines of `UID FETCH ... (UID BODY.PEEK[])`.

    aioimaplib gives the line announcing a literal, then the literal as a bytearray, then the
    rest of the response; UID may be before or after the body (RFC 3501 §7.4.2), and unsolicited
    FETCH responses for flag changes carry no literal and are skipped.
    """
    mails: list[tuple[int, bytes]] = []
    pending: bytes | None = None
    uid: int | None = None
    for line in lines:
        if isinstance(line, bytearray):
            pending = bytes(line)
            continue
        if pending is not None:
            found = re.search(rb"\bUID (\d+)", line)
            if uid is None and found:
                uid = int(found.group(1))
            if uid is not None:
                mails.append((uid, pending))
            pending, uid = None, None
        head = _FETCH_UID.match(line)
        uid = int(head.group(1)) if head and _LITERAL.search(line) else None
    return mails


def tls_context(config: ImapConfig) -> ssl.SSLContext | None:
    if config.tls == "none":
        return None
    cafile = str(config.tls_ca_file) if config.tls_ca_file else None
    context = ssl.create_default_context(cafile=cafile)
    if not config.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class XOAuth2(aioimaplib.Command):  # type: ignore[misc]  # aioimaplib has no type hints
    """AUTHENTICATE XOAUTH2 with the SASL initial response (RFC 4959), answering a refusal.

    A refused token gets a `+ <base64 JSON error>` challenge and the server waits for an empty
    response before its NO (Google's XOAUTH2 protocol; RFC 7628 §3.2.3 for OAUTHBEARER).
    """

    def __init__(self, protocol: aioimaplib.IMAP4ClientProtocol, user: str, token: str) -> None:
        sasl = base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode())
        super().__init__("AUTHENTICATE", protocol.new_tag(), "XOAUTH2", sasl.decode(),
                         loop=protocol.loop)
        self.protocol = protocol
        self.refusal: str | None = None

    def flush(self) -> None:
        """aioimaplib calls this after a continuation line and at the end of every read."""
        lines = self.response.lines
        if self.refusal is not None or not lines or not lines[-1].startswith(b"+"):
            return  # answer the one challenge once: a second empty line would be a BAD command
        challenge = lines[-1].removeprefix(b"+").strip()
        try:
            self.refusal = base64.b64decode(challenge, validate=True).decode(errors="replace")
        except ValueError:  # not base64: show it as sent
            self.refusal = challenge.decode(errors="replace")
        self.protocol.transport.write(b"\r\n")


class ImapSession:
    """One logged-in connection; every command fails fast when the connection is lost."""

    def __init__(self, config: ImapConfig) -> None:
        self.config = config
        self._lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        context = tls_context(config) if config.tls == "implicit" else None
        self.imap = aioimaplib.IMAP4(config.host, config.port, timeout=COMMAND_TIMEOUT,
                                     conn_lost_cb=self._connection_lost, ssl_context=context)

    @classmethod
    async def open(cls, config: ImapConfig) -> ImapSession:
        session = cls(config)
        try:
            await session._call(session.imap.wait_hello_from_server())
            if config.tls == "starttls":
                await session._starttls()
            await session._login()
        except BaseException:
            session.close()
            raise
        return session

    @property
    def capabilities(self) -> set[str]:
        caps: set[str] = self.imap.protocol.capabilities
        return caps

    def _connection_lost(self, error: Exception | None) -> None:
        if not self._lost.done():
            self._lost.set_result(None)

    async def _call(self, step: Awaitable[T], limit: float | None = COMMAND_TIMEOUT) -> T:
        task: asyncio.Future[T] = asyncio.ensure_future(step)
        waiting: set[asyncio.Future[Any]] = {task, self._lost}
        done, _ = await asyncio.wait(waiting, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        if self._lost.done():
            raise ImapError("connection lost")
        raise ImapError(f"no answer within {limit:.0f}s")

    async def _ok(self, what: str, step: Awaitable[aioimaplib.Response],
                  limit: float | None = COMMAND_TIMEOUT) -> list[Any]:
        response = await self._call(step, limit)
        if response.result != "OK":
            text = b" ".join(line for line in response.lines if isinstance(line, bytes))
            raise ImapError(f"{what}: {response.result} {text.decode(errors='replace')}")
        lines: list[Any] = response.lines
        return lines

    async def _starttls(self) -> None:
        protocol = self.imap.protocol
        if "STARTTLS" not in protocol.capabilities:
            # Never fall back to plain text: the password would cross the wire in the clear.
            raise ImapError("the server does not offer STARTTLS")
        await self._ok("STARTTLS", protocol.execute(
            aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)))
        context = tls_context(self.config)
        assert context is not None
        protocol.transport = await self._call(asyncio.get_running_loop().start_tls(
            protocol.transport, protocol, context, server_hostname=self.config.host))
        # RFC 3501 §6.2.1: capabilities learnt before TLS must be discarded.
        await self._call(protocol.capability())

    async def _login(self) -> None:
        config = self.config
        if config.xoauth2_token_file is not None:
            # Re-read at every login: an outside tool refreshes the short-lived token.
            token = config.xoauth2_token_file.read_text().strip()
            protocol = self.imap.protocol
            command = XOAuth2(protocol, config.user, token)
            # Scrub the whole SASL string from aioimaplib's debug log: it holds the token.
            response = await self._call(protocol.execute(command, scrub=command.args[-1]))
            if response.result != "OK":
                said = response.lines[-1].decode(errors="replace")
                raise ImapError(f"XOAUTH2 login: {response.result} {said} (server: "
                                f"{command.refusal or 'no detail'}); the token in "
                                f"{config.xoauth2_token_file} was refused")
            protocol.state = aioimaplib.AUTH
        else:
            await self._ok("login", self.imap.login(config.user, config.password or ""))
        # RFC 3501 §6.2.3: capabilities may change on login; aioimaplib merges the old ones in.
        await self._call(self.imap.protocol.capability())

    async def select(self, folder: str, *, readonly: bool = False) -> tuple[int, int]:
        """(UIDVALIDITY, EXISTS) of `folder`, now selected; EXAMINE changes nothing."""
        name = aioimaplib.quoted(folder)
        lines = await self._ok(f"selecting {folder!r}", self.imap.examine(name) if readonly
                               else self.imap.select(name))
        found = next((m for line in lines if (m := _UIDVALIDITY.search(line))), None)
        if found is None:
            raise ImapError(f"selecting {folder!r}: the server sent no UIDVALIDITY")
        if readonly:  # aioimaplib leaves its state at AUTH after EXAMINE
            self.imap.protocol.state = aioimaplib.SELECTED
        exists = next((int(line.split()[0]) for line in lines
                       if isinstance(line, bytes) and line.endswith(b" EXISTS")), 0)
        return int(found.group(1)), exists

    async def folder_exists(self, folder: str) -> bool:
        lines = await self._ok("LIST", self.imap.list('""', aioimaplib.quoted(folder)))
        return any(line.startswith(b"(") for line in lines if isinstance(line, bytes))

    async def uids_after(self, last_uid: int) -> list[int]:
        """UIDs above `last_uid` not marked deleted, ascending."""
        lines = await self._ok("UID SEARCH", self.imap.uid_search(
            "UID", f"{last_uid + 1}:*", "UNDELETED", charset=None))
        words = b" ".join(line for line in lines[:-1] if isinstance(line, bytes)).split()
        # RFC 3501 §6.4.8: "n:*" always matches the highest UID, even one below n.
        return sorted(u for w in words if w.isdigit() and (u := int(w)) > last_uid)

    async def fetch(self, uids: list[int]) -> list[tuple[int, bytes]]:
        # No overall deadline: aioimaplib restarts its timeout whenever data arrives.
        lines = await self._ok("UID FETCH", self.imap.uid(
            "fetch", uid_set(uids), "(UID BODY.PEEK[])"), limit=None)
        return fetched_mails(lines)

    async def move(self, uids: list[int], folder: str) -> None:
        uids_text, target = uid_set(uids), aioimaplib.quoted(folder)
        if "MOVE" in self.capabilities:  # RFC 6851
            await self._ok(f"moving to {folder!r}", self.imap.uid("move", uids_text, target))
            return
        await self._ok(f"copying to {folder!r}", self.imap.uid("copy", uids_text, target))
        await self._ok("flagging \\Deleted", self.imap.uid(
            "store", uids_text, "+FLAGS.SILENT", r"(\Deleted)"))
        if "UIDPLUS" in self.capabilities:
            # RFC 4315 §2.1: expunge only these, never mail someone else marked \Deleted.
            await self._ok("UID EXPUNGE", self.imap.uid("expunge", uids_text))

    async def flag_seen(self, uids: list[int]) -> None:
        await self._ok("flagging \\Seen", self.imap.uid(
            "store", uid_set(uids), "+FLAGS.SILENT", r"(\Seen)"))

    async def idle(self, renew: float) -> None:
        """IDLE (RFC 2177) until the server reports a change or `renew` seconds pass."""
        idle = await self._call(self.imap.idle_start(timeout=renew))
        try:
            push = await self._call(self.imap.wait_server_push(timeout=renew + 5), None)
            if any(isinstance(line, bytes) and line.startswith(b"BYE") for line in push):
                raise ImapError("the server said " + b" ".join(push).decode(errors="replace"))
        finally:
            if self.imap.has_pending_idle() and not self._lost.done():
                self.imap.idle_done()
                await self._call(idle)

    async def logout(self) -> None:
        # Logging out is a courtesy; the server cleans up anyway.
        if self.imap.has_pending_idle() and not self._lost.done():
            self.imap.idle_done()  # stopped while IDLE was starting: LOGOUT would wait behind it
        with contextlib.suppress(ImapError, aioimaplib.AioImapException, OSError):
            await self._call(self.imap.logout(), limit=5)
        self.close()

    def close(self) -> None:
        transport = self.imap.protocol.transport
        if transport is not None:
            transport.close()


class MailboxWatcher(Runner):
    """Drains one [[imap]] mailbox into the inbox, then IDLEs or polls; reconnects forever.

    A step is one connection, watched until it breaks or the watcher stops; any failure
    is a reconnect after the runners' backoff. stop() returns once the batch in hand is
    stored and moved or flagged. Changed [[imap]] settings take effect at a restart."""

    retryable = (Exception,)
    retrying = "reconnecting"

    def __init__(self, config: ImapConfig, store: Store, clock: Clock, *,
                 on_accept: Callable[[], None]) -> None:
        super().__init__(f"imap={config.name}")
        self.config, self.store, self.clock, self.on_accept = config, store, clock, on_accept

    @property
    def source(self) -> str:
        return f"imap:{self.config.name}"

    async def step(self) -> float:
        c = self.config
        log.info("imap=%s connecting to %s:%d (tls %s)", c.name, c.host, c.port, c.tls)
        session = await ImapSession.open(c)
        try:
            await self._watch(session)
        finally:
            await session.logout()
        return 0.0

    async def _unless_stopped(self, step: Awaitable[None]) -> None:
        """Await `step`, or cancel it when stop() is called first."""
        task = asyncio.ensure_future(step)
        stopped = asyncio.ensure_future(self.stopped.wait())
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if task.done():
            task.result()  # an error while waiting (the connection broke) goes to run()
        else:
            task.cancel()
            await asyncio.wait({task})  # let it leave IDLE before logging out

    async def _watch(self, session: ImapSession) -> None:
        c = self.config
        uidvalidity, exists = await session.select(c.folder)
        position = await self.store.imap_position(c.name)
        if position is None or position.uidvalidity != uidvalidity:
            if position is not None:
                # RFC 3501 §2.3.1.1: old UIDs mean nothing now; dedupe keeps the rescan safe.
                log.warning("imap=%s UIDVALIDITY of %s changed from %d to %d: rescanning all "
                            "%d mails", c.name, c.folder, position.uidvalidity, uidvalidity,
                            exists)
            position = ImapPosition(uidvalidity, 0)
            await self.store.set_imap_position(c.name, position)
        idle = "IDLE" in session.capabilities
        log.info("imap=%s selected %s (%d mails, UIDVALIDITY %d, last stored UID %d); %s",
                 c.name, c.folder, exists, uidvalidity, position.last_uid,
                 f"IDLE, renewed every {c.idle_renew:.0f}s" if idle else
                 f"no IDLE: polling every {c.poll_interval:.0f}s")
        while not self.stopping:
            position = await self._drain(session, position)
            self.failures = 0
            await self._unless_stopped(session.idle(c.idle_renew) if idle
                                       else asyncio.sleep(c.poll_interval))

    async def _drain(self, session: ImapSession, position: ImapPosition) -> ImapPosition:
        c = self.config
        uids = await session.uids_after(position.last_uid)
        if len(uids) > c.batch_size:
            log.info("imap=%s backlog of %d mails: draining in batches of %d", c.name,
                     len(uids), c.batch_size)
        for start in range(0, len(uids), c.batch_size):
            batch = uids[start:start + c.batch_size]
            mails = await session.fetch(batch)
            # Started together, the accepts share one commit (the store's group commit).
            results = await asyncio.gather(*(
                self.store.accept(raw, key=dedupe_key(raw), source=self.source, mail_from=None,
                                  rcpt_to=(), at=self.clock.now())
                for _, raw in mails))
            self.on_accept()
            for (uid, raw), accepted in zip(mails, results, strict=True):
                log.info("inbox=%d %s uid=%d size=%d %s", accepted.inbox_id, self.source, uid,
                         len(raw), "duplicate" if accepted.duplicate else "stored")
            stored = [uid for uid, _ in mails]
            if stored and c.after == "move":
                await session.move(stored, c.move_to)
            elif stored:
                await session.flag_seen(stored)
            position = ImapPosition(position.uidvalidity, batch[-1])
            await self.store.set_imap_position(c.name, position)
            if len(uids) > c.batch_size:
                log.info("imap=%s drained %d of %d", c.name, start + len(batch), len(uids))
            if self.stopping:
                break
        return position


async def check_mailbox(config: ImapConfig, position: ImapPosition | None) -> list[str]:
    """What `supportd imap-check` reports about one mailbox; EXAMINE, so nothing changes."""
    session = await ImapSession.open(config)
    try:
        caps = session.capabilities
        uidvalidity, exists = await session.select(config.folder, readonly=True)
        if position is None or position.uidvalidity != uidvalidity:
            position = ImapPosition(uidvalidity, 0)
        waiting = len(await session.uids_after(position.last_uid))
        if config.after == "seen":
            after = "flag \\Seen"
        elif "MOVE" in caps:
            after = f"MOVE to {config.move_to!r}"
        else:
            after = f"COPY to {config.move_to!r}, \\Deleted" + (
                ", UID EXPUNGE" if "UIDPLUS" in caps else " (no UIDPLUS: left for the owner)")
        lines = [
            f"capabilities: {' '.join(sorted(caps))}",
            f"watching: {'IDLE' if 'IDLE' in caps else 'polling (no IDLE)'}; "
            f"after storing: {after}",
            f"{config.folder}: {exists} mails, {waiting} waiting "
            f"(UIDVALIDITY {uidvalidity}, last stored UID {position.last_uid})",
        ]
        if config.after == "move" and not await session.folder_exists(config.move_to):
            lines.append(f"PROBLEM: folder {config.move_to!r} does not exist: create it, or "
                         "stored mail cannot be moved and will be fetched again")
        return lines
    finally:
        await session.logout()
