"""Config: the TOML file read into frozen dataclasses; every error names file, key and reason."""

from __future__ import annotations

import ipaddress
import os
import secrets
import tomllib
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from supportd.mail.addresses import Addresses
from supportd.mail.headers import one_line as _one_line

T = TypeVar("T")
TransportName = Literal["maildir", "smtp", "mx"]
ImapTls = Literal["implicit", "starttls", "none"]
ImapAfter = Literal["move", "seen"]


@dataclass(frozen=True)
class ConfigError:
    file: str
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.reason}"


class ConfigInvalid(Exception):
    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @property
    def is_loopback(self) -> bool:
        """Reachable from this machine only: "localhost" or a loopback address."""
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: it may resolve to anything
            return False


@dataclass(frozen=True)
class SupportConfig:
    addresses: tuple[str, ...]
    name: str
    subject_prefix: str
    default_group: str
    auto_mail_limit: int
    hmac_key: bytes
    trusted_authserv_ids: frozenset[str]
    max_participants_per_mail: int = 20  # cc a mail may add; the rest are kept in it
    notification_excerpt_bytes: int = 256 * 1024  # of the mail in an agent's notice


@dataclass(frozen=True)
class SmtpConfig:
    listen: Listen
    lmtp_listen: Listen | None
    hostname: str
    max_message_size: int
    shutdown_grace: int = 5         # seconds open sessions may go on after SIGTERM
    shutdown_timeout: int = 60      # seconds until sessions still in DATA are cut off
    max_recipients: int = 100       # RCPTs in one transaction; more get 452 4.5.3
    max_invalid_recipients: int = 20  # unknown RCPTs in one connection; then 421 4.7.0
    max_sessions: int = 200         # open SMTP and LMTP sessions; more get 421 4.7.0
    # Whether the listener sits behind the MTA whose Authentication-Results are trusted.
    trust_authentication_results: bool = False
    lmtp_trust_authentication_results: bool = False


@dataclass(frozen=True)
class SmarthostConfig:
    host: str
    port: int
    starttls: bool
    tls_verify: bool
    username: str | None
    password: str | None


@dataclass(frozen=True)
class OutboundConfig:
    transport: TransportName
    maildir: Path
    templates: Path
    max_attempts: int
    smarthost: SmarthostConfig | None


@dataclass(frozen=True)
class Agent:
    email: str
    name: str
    groups: tuple[str, ...]


@dataclass(frozen=True)
class Group:
    name: str
    description: str


@dataclass(frozen=True)
class Account:
    name: str
    domains: tuple[str, ...]


@dataclass(frozen=True)
class ImapConfig:
    """One watched mailbox ([[imap]]); the XOAUTH2 token file is re-read at each login."""

    name: str
    host: str
    port: int
    tls: ImapTls
    tls_verify: bool
    tls_ca_file: Path | None
    user: str
    password: str | None
    xoauth2_token_file: Path | None
    folder: str
    after: ImapAfter
    move_to: str
    poll_interval: float
    idle_renew: float
    batch_size: int
    trust_authentication_results: bool = False  # the provider's MTA stamps what it delivers


@dataclass(frozen=True)
class HttpConfig:
    listen: Listen | None           # None: no HTTP server (/healthz, /metrics)


@dataclass(frozen=True)
class Config:
    path: Path
    support: SupportConfig
    smtp: SmtpConfig
    store_path: Path
    outbound: OutboundConfig
    groups: tuple[Group, ...]
    agents: tuple[Agent, ...]
    accounts: tuple[Account, ...]
    imap: tuple[ImapConfig, ...] = ()
    http: HttpConfig = HttpConfig(listen=None)
    agent_by_email: dict[str, Agent] = field(init=False, repr=False, compare=False)
    addresses: Addresses = field(init=False, repr=False, compare=False)  # "is it ours?"

    def __post_init__(self) -> None:
        object.__setattr__(self, "agent_by_email", {a.email: a for a in self.agents})
        object.__setattr__(self, "addresses", Addresses(
            support=frozenset(self.support.addresses), hmac_key=self.support.hmac_key,
            agents=tuple(self.agent_by_email)))

    def account_for(self, email: str) -> str | None:
        """The account whose domain the address belongs to (accounts are keyed by domain)."""
        domain = email.rpartition("@")[2].lower()
        return next((a.name for a in self.accounts if domain in a.domains), None)

    def agents_in(self, group: str) -> tuple[Agent, ...]:
        return tuple(a for a in self.agents if group in a.groups)

    def trusts_authentication_results(self, source: str) -> bool:
        """Whether mail from intake `source` ("smtp", "lmtp", "imap:<name>", an inbox row's
        source) came through a listener declared to sit behind the MTA that writes the
        trusted Authentication-Results; from anywhere else the header is the sender's."""
        if source == "smtp":
            return self.smtp.trust_authentication_results
        if source == "lmtp":
            return self.smtp.lmtp_trust_authentication_results
        kind, _, name = source.partition(":")
        return kind == "imap" and any(
            mailbox.name == name and mailbox.trust_authentication_results
            for mailbox in self.imap)


class _Reader:
    """Reads typed values out of one TOML table, collecting errors instead of stopping."""

    def __init__(self, file: str, errors: list[ConfigError], table: dict[str, Any], prefix: str):
        self.file, self.errors, self.table, self.prefix = file, errors, table, prefix
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, reason: str) -> None:
        self.errors.append(ConfigError(self.file, self.key(name), reason))

    def get(self, name: str, kind: type[T], default: T, what: str) -> T:
        self.seen.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        # bool is an int in Python; a port of `true` is still a mistake.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.error(name, f"must be {what}, not {value!r}")
            return default
        return value

    def string(self, name: str, default: str) -> str:
        return self.get(name, str, default, "a string")

    def integer(self, name: str, default: int, *, minimum: int = 0) -> int:
        value = self.get(name, int, default, "an integer")
        if value < minimum:
            self.error(name, f"must be at least {minimum}, not {value}")
            return default
        return value

    def boolean(self, name: str, default: bool) -> bool:
        return self.get(name, bool, default, "true or false")

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(name, list, list(default), "a list of strings")
        if not all(isinstance(v, str) for v in value):
            self.error(name, f"must be a list of strings, not {value!r}")
            return default
        return tuple(value)

    def table_of(self, name: str) -> dict[str, Any]:
        return self.get(name, dict, {}, "a table")

    def tables(self, name: str) -> list[dict[str, Any]]:
        value = self.get(name, list, [], "an array of tables ([[" + name + "]])")
        if not all(isinstance(v, dict) for v in value):
            self.error(name, "must be an array of tables ([[" + name + "]])")
            return []
        return value

    def child(self, name: str, table: dict[str, Any]) -> _Reader:
        return _Reader(self.file, self.errors, table, self.key(name))

    def finish(self) -> None:
        for name in sorted(set(self.table) - self.seen):
            self.error(name, "unknown key (a typo?)")

    def path(self, name: str, default: str, base: Path) -> Path:
        return (base / self.string(name, default)).resolve()

    def listen(self, name: str, default: str | None) -> Listen | None:
        text = self.string(name, default or "")
        if not text:
            return None
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            self.error(name, f"must be HOST:PORT with a port from 1 to 65535, not {text!r}")
            return None
        return Listen(host.strip("[]"), int(port))

    def email(self, name: str, value: str) -> str:
        _, address = parseaddr(value)
        if "@" not in address or address != value.strip() or any(c in value for c in "\r\n "):
            self.error(name, f"must be a plain address like user@example.com, not {value!r}")
        return value.strip().lower()

    def secret(self, name: str, base: Path, *, generate: Literal["no", "check", "yes"] = "no"
               ) -> str | None:
        """A secret from `<name>_file` (a path) or `<name>_env` (an environment variable).

        `generate`: whether a missing file is a key supportd makes itself ("yes" makes it,
        "check" only accepts that `supportd run` will); passwords are never made up.
        """
        file = self.string(f"{name}_file", "")
        env = self.string(f"{name}_env", "")
        if file and env:
            self.error(f"{name}_file", f"give {self.key(name + '_file')} or "
                       f"{self.key(name + '_env')}, not both")
        if env:
            value = os.environ.get(env, "")
            if not value:
                self.error(f"{name}_env", f"environment variable {env} is not set or empty")
            return value or None
        if not file:
            return None
        path = (base / file).resolve()
        if not path.exists() and generate == "check":
            return secrets.token_hex(32)  # stands in for the key `supportd run` will create
        if not path.exists() and generate == "yes":
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32) + "\n")
        try:
            value = path.read_text().strip()
        except OSError as e:
            self.error(f"{name}_file", f"cannot read {path}: {e.strerror}")
            return None
        if not value:
            self.error(f"{name}_file", f"{path} is empty")
        return value or None


def load_config(path: Path, *, create_missing_secrets: bool = True) -> Config:
    """Load and check `path`; raises ConfigInvalid listing every error found."""
    file = str(path)
    errors: list[ConfigError] = []
    top = _Reader(file, errors, _read_toml(path), "")
    base = path.resolve().parent
    support = _support(top, base, create_missing_secrets)
    smtp = _smtp(top)
    http = _http(top)
    store_path = _store(top, base)
    outbound = _outbound(top, base, create_missing_secrets)
    groups = _groups(top, support)
    agents = _agents(top, support, groups)
    accounts = _accounts(top)
    imap = _imap(top, base)
    _trust_needs_ids(top, support, smtp, imap)
    top.finish()
    if errors:
        raise ConfigInvalid(errors)
    return Config(
        path=path, support=support, smtp=smtp, store_path=store_path, outbound=outbound,
        groups=groups, agents=agents, accounts=accounts, imap=imap, http=http,
    )


def _read_toml(path: Path) -> dict[str, Any]:
    file = str(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigInvalid([ConfigError(file, "(file)", f"cannot read: {e.strerror}")]) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigInvalid([ConfigError(file, "(syntax)", str(e))]) from e
    except UnicodeDecodeError as e:
        raise ConfigInvalid([ConfigError(file, "(file)", f"not UTF-8: {e}")]) from e


def _support(top: _Reader, base: Path, create_missing_secrets: bool) -> SupportConfig:
    support = top.child("support", top.table_of("support"))
    addresses = tuple(
        support.email("addresses", a) for a in support.strings("addresses", ("support@localhost",))
    )
    if not addresses:
        support.error("addresses", "must name at least one support address")
    hmac_key = support.secret("hmac_key", base,
                              generate="yes" if create_missing_secrets else "check")
    if hmac_key is None:
        support.error("hmac_key_file", "set hmac_key_file or hmac_key_env: reply tokens need a key")
    elif len(hmac_key) < 16:
        support.error("hmac_key_file", "the key is too short: use at least 16 random characters")
    prefix = support.string("subject_prefix", "Support")
    if not prefix or any(c in prefix for c in "[]#\r\n"):
        support.error("subject_prefix", f"must be non-empty without [ ] # or newlines: {prefix!r}")
    config = SupportConfig(
        addresses=addresses,
        name=_one_line(support.string("name", "Support")),
        subject_prefix=prefix,
        default_group=support.string("default_group", "tier1"),
        auto_mail_limit=support.integer("auto_mail_limit", 3, minimum=1),
        hmac_key=(hmac_key or "").encode(),
        trusted_authserv_ids=frozenset(
            s.lower() for s in support.strings("trusted_authserv_ids", ())
        ),
        max_participants_per_mail=support.integer("max_participants_per_mail", 20, minimum=1),
        notification_excerpt_bytes=support.integer("notification_excerpt_bytes", 256 * 1024,
                                                   minimum=1024),
    )
    support.finish()
    return config


def _smtp(top: _Reader) -> SmtpConfig:
    smtp = top.child("smtp", top.table_of("smtp"))
    config = SmtpConfig(
        listen=smtp.listen("listen", "127.0.0.1:2525") or Listen("127.0.0.1", 2525),
        lmtp_listen=smtp.listen("lmtp_listen", None),
        hostname=smtp.string("hostname", "localhost"),
        max_message_size=smtp.integer("max_message_size", 25 * 1024 * 1024, minimum=1024),
        shutdown_grace=smtp.integer("shutdown_grace", 5),
        shutdown_timeout=smtp.integer("shutdown_timeout", 60, minimum=1),
        # RFC 5321 §4.5.3.1.8: a server must take at least 100 recipients per mail.
        max_recipients=smtp.integer("max_recipients", 100, minimum=100),
        max_invalid_recipients=smtp.integer("max_invalid_recipients", 20, minimum=1),
        max_sessions=smtp.integer("max_sessions", 200, minimum=1),
        trust_authentication_results=smtp.boolean("trust_authentication_results", False),
        lmtp_trust_authentication_results=smtp.boolean(
            "lmtp_trust_authentication_results", False),
    )
    if config.shutdown_grace > config.shutdown_timeout:
        smtp.error("shutdown_grace", f"must not exceed smtp.shutdown_timeout "
                   f"({config.shutdown_timeout}), not {config.shutdown_grace}")
    for key, listen_key, listen, trusted in (
        ("trust_authentication_results", "listen", config.listen,
         config.trust_authentication_results),
        ("lmtp_trust_authentication_results", "lmtp_listen", config.lmtp_listen,
         config.lmtp_trust_authentication_results),
    ):
        if trusted and listen is not None and not listen.is_loopback:
            smtp.error(key, f"smtp.{listen_key} {listen.host}:{listen.port} is not a loopback "
                       f"address: {OPEN_LISTENER}")
    smtp.finish()
    return config


# Why trusting Authentication-Results on a listener others can reach is refused.
OPEN_LISTENER = ("anyone who can connect there can write that header into their own mail; "
                 "trust it only on a listener that only your MTA reaches, such as "
                 "lmtp_listen = \"127.0.0.1:2424\"")


def _trust_needs_ids(top: _Reader, support: SupportConfig, smtp: SmtpConfig,
                     imap: tuple[ImapConfig, ...]) -> None:
    """A listener that trusts Authentication-Results needs an authserv-id to trust."""
    if support.trusted_authserv_ids:
        return
    trusting = [key for key, trusted in (
        ("smtp.trust_authentication_results", smtp.trust_authentication_results),
        ("smtp.lmtp_trust_authentication_results", smtp.lmtp_trust_authentication_results),
        *((f"imap[{i}].trust_authentication_results", m.trust_authentication_results)
          for i, m in enumerate(imap)),
    ) if trusted]
    for key in trusting:
        top.error(key, "is true, but support.trusted_authserv_ids is empty: name the "
                  "authserv-id your MTA writes in its Authentication-Results")


def _http(top: _Reader) -> HttpConfig:
    http = top.child("http", top.table_of("http"))
    config = HttpConfig(listen=http.listen("listen", None))
    http.finish()
    return config


def _store(top: _Reader, base: Path) -> Path:
    store = top.child("store", top.table_of("store"))
    path = store.path("path", "var/supportd.sqlite3", base)
    store.finish()
    return path


def _groups(top: _Reader, support: SupportConfig) -> tuple[Group, ...]:
    groups = []
    for i, table in enumerate(top.tables("groups")):
        g = top.child(f"groups[{i}]", table)
        name = g.string("name", "")
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            g.error("name", f"must be a word of letters, digits, - or _, not {name!r}")
        groups.append(Group(name=name, description=g.string("description", "")))
        g.finish()
    if support.default_group not in {g.name for g in groups}:
        top.error("support.default_group",
                  f"names no [[groups]] entry: {support.default_group!r}")
    return tuple(groups)


def _agents(top: _Reader, support: SupportConfig,
            groups: tuple[Group, ...]) -> tuple[Agent, ...]:
    group_names = {g.name for g in groups}
    agents = []
    for i, table in enumerate(top.tables("agents")):
        a = top.child(f"agents[{i}]", table)
        email = a.email("email", a.string("email", ""))
        agent_groups = a.strings("groups", (support.default_group,))
        for unknown in sorted(set(agent_groups) - group_names):
            a.error("groups", f"names no [[groups]] entry: {unknown!r}")
        if email in support.addresses:
            a.error("email", f"{email} is a support address, it cannot also be an agent")
        agents.append(Agent(email=email, name=_one_line(a.string("name", email)),
                            groups=agent_groups))
        a.finish()
    seen: set[str] = set()
    for i, agent in enumerate(agents):
        if agent.email in seen:
            top.error(f"agents[{i}].email", f"{agent.email} listed twice")
        seen.add(agent.email)
    return tuple(agents)


def _accounts(top: _Reader) -> tuple[Account, ...]:
    accounts = []
    for i, table in enumerate(top.tables("accounts")):
        a = top.child(f"accounts[{i}]", table)
        accounts.append(Account(
            name=a.string("name", ""),
            domains=tuple(d.lower() for d in a.strings("domains", ())),
        ))
        if not accounts[-1].name:
            a.error("name", "is required")
        a.finish()
    return tuple(accounts)


def _outbound(top: _Reader, base: Path, create_missing_secrets: bool) -> OutboundConfig:
    out = top.child("outbound", top.table_of("outbound"))
    transport = out.string("transport", "maildir")
    if transport not in ("maildir", "smtp", "mx"):
        out.error("transport", f"must be one of maildir, smtp, mx; not {transport!r}")
        transport = "maildir"
    smarthost = None
    table = out.table_of("smtp")
    if table or transport == "smtp":
        s = out.child("smtp", table)
        host = s.string("host", "")
        if not host:
            s.error("host", "is required when outbound.transport is smtp")
        smarthost = SmarthostConfig(
            host=host,
            port=s.integer("port", 587, minimum=1),
            starttls=s.boolean("starttls", True),
            tls_verify=s.boolean("tls_verify", True),
            username=s.string("username", "") or None,
            password=s.secret("password", base),
        )
        s.finish()
    config = OutboundConfig(
        transport=cast(TransportName, transport),
        maildir=out.path("maildir", "var/outbox", base),
        templates=out.path("templates", "templates", base),
        max_attempts=out.integer("max_attempts", 10, minimum=1),
        smarthost=smarthost,
    )
    out.finish()
    return config


def _imap(top: _Reader, base: Path) -> tuple[ImapConfig, ...]:
    mailboxes: list[ImapConfig] = []
    for i, table in enumerate(top.tables("imap")):
        m = top.child(f"imap[{i}]", table)
        name = m.string("name", "")
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            m.error("name", f"must be a word of letters, digits, - or _, not {name!r}")
        elif name in {c.name for c in mailboxes}:
            m.error("name", f"{name!r} is already the name of another [[imap]] mailbox")
        host = m.string("host", "")
        if not host:
            m.error("host", "is required")
        tls = m.string("tls", "implicit")
        if tls not in ("implicit", "starttls", "none"):
            m.error("tls", f"must be implicit, starttls or none; not {tls!r}")
            tls = "implicit"
        # Turning certificate checks off names the host, so a changed host is checked again.
        no_verify = m.string("tls_no_verify_host", "")
        if no_verify and no_verify != host:
            m.error("tls_no_verify_host", f"{no_verify!r} is not this mailbox's host {host!r}")
        ca_file = m.string("tls_ca_file", "")
        ca_path = (base / ca_file).resolve() if ca_file else None
        if ca_path is not None and not ca_path.is_file():
            m.error("tls_ca_file", f"{ca_path} is not a readable file")
        user = m.string("user", "")
        if not user:
            m.error("user", "is required")
        password = m.secret("password", base)
        token_file = m.string("xoauth2_token_file", "")
        token_path = (base / token_file).resolve() if token_file else None
        if token_path is not None and password is not None:
            m.error("xoauth2_token_file", "give a password or an XOAUTH2 token file, not both")
        elif token_path is None and not {"password_file", "password_env"} & table.keys():
            m.error("password_file", "set password_file, password_env or xoauth2_token_file")
        after = m.string("after", "move")
        if after not in ("move", "seen"):
            m.error("after", f"must be move or seen; not {after!r}")
            after = "move"
        folder = m.string("folder", "INBOX")
        move_to = m.string("move_to", "")
        if after == "move" and not move_to:
            m.error("move_to", "is required when after = \"move\" (the folder for stored mail)")
        elif after == "move" and move_to == folder:
            m.error("move_to", f"must differ from folder {folder!r}")
        poll_interval = m.integer("poll_seconds", 60, minimum=1)
        idle_renew = m.integer("idle_seconds", 25 * 60, minimum=1)
        if idle_renew >= 29 * 60:
            # RFC 2177 §3: servers may log out a client idle for 30 minutes.
            m.error("idle_seconds", f"must be under 1740 (29 minutes), not {idle_renew}")
        mailboxes.append(ImapConfig(
            name=name, host=host,
            port=m.integer("port", 993 if tls == "implicit" else 143, minimum=1),
            tls=cast(ImapTls, tls), tls_verify=not no_verify, tls_ca_file=ca_path,
            user=user, password=password, xoauth2_token_file=token_path,
            folder=folder, after=cast(ImapAfter, after), move_to=move_to,
            poll_interval=float(poll_interval), idle_renew=float(idle_renew),
            batch_size=m.integer("batch_size", 100, minimum=1),
            trust_authentication_results=m.boolean("trust_authentication_results", False),
        ))
        m.finish()
    return tuple(mailboxes)
