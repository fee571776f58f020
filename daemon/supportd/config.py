"""Config: the TOML file read into frozen dataclasses; every error names file, key and reason."""

from __future__ import annotations

import os
import secrets
import tomllib
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

T = TypeVar("T")
TransportName = Literal["maildir", "smtp", "mx"]


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


@dataclass(frozen=True)
class SupportConfig:
    addresses: tuple[str, ...]
    name: str
    subject_prefix: str
    default_group: str
    auto_mail_limit: int
    hmac_key: bytes
    trusted_authserv_ids: frozenset[str]


@dataclass(frozen=True)
class SmtpConfig:
    listen: Listen
    lmtp_listen: Listen | None
    hostname: str
    max_message_size: int


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
class Config:
    path: Path
    support: SupportConfig
    smtp: SmtpConfig
    store_path: Path
    outbound: OutboundConfig
    groups: tuple[Group, ...]
    agents: tuple[Agent, ...]
    accounts: tuple[Account, ...]
    agent_by_email: dict[str, Agent] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "agent_by_email", {a.email: a for a in self.agents})

    def account_for(self, email: str) -> str | None:
        """The account whose domain the address belongs to (accounts are keyed by domain)."""
        domain = email.rpartition("@")[2].lower()
        return next((a.name for a in self.accounts if domain in a.domains), None)

    def agents_in(self, group: str) -> tuple[Agent, ...]:
        return tuple(a for a in self.agents if group in a.groups)


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

    def secret(self, name: str, base: Path, *, create_missing: bool) -> str | None:
        """A secret from `<name>_file` (a path) or `<name>_env` (an environment variable)."""
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
        if not path.exists() and create_missing:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32) + "\n")
        try:
            value = path.read_text().strip()
        except OSError as e:
            if not create_missing and not path.exists():
                return "(created by supportd run)"
            self.error(f"{name}_file", f"cannot read {path}: {e.strerror}")
            return None
        if not value:
            self.error(f"{name}_file", f"{path} is empty")
        return value or None


def load_config(path: Path, *, create_missing_secrets: bool = True) -> Config:
    """Load and check `path`; raises ConfigInvalid listing every error found."""
    file = str(path)
    errors: list[ConfigError] = []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigInvalid([ConfigError(file, "(file)", f"cannot read: {e.strerror}")]) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigInvalid([ConfigError(file, "(syntax)", str(e))]) from e
    except UnicodeDecodeError as e:
        raise ConfigInvalid([ConfigError(file, "(file)", f"not UTF-8: {e}")]) from e
    base = path.resolve().parent
    top = _Reader(file, errors, data, "")

    support = top.child("support", top.table_of("support"))
    addresses = tuple(
        support.email("addresses", a) for a in support.strings("addresses", ("support@localhost",))
    )
    if not addresses:
        support.error("addresses", "must name at least one support address")
    hmac_key = support.secret("hmac_key", base, create_missing=create_missing_secrets)
    if hmac_key is None:
        support.error("hmac_key_file", "set hmac_key_file or hmac_key_env: reply tokens need a key")
    elif len(hmac_key) < 16:
        support.error("hmac_key_file", "the key is too short: use at least 16 random characters")
    prefix = support.string("subject_prefix", "Support")
    if not prefix or any(c in prefix for c in "[]#\r\n"):
        support.error("subject_prefix", f"must be non-empty without [ ] # or newlines: {prefix!r}")
    support_cfg = SupportConfig(
        addresses=addresses,
        name=_one_line(support.string("name", "Support")),
        subject_prefix=prefix,
        default_group=support.string("default_group", "tier1"),
        auto_mail_limit=support.integer("auto_mail_limit", 3, minimum=1),
        hmac_key=(hmac_key or "").encode(),
        trusted_authserv_ids=frozenset(
            s.lower() for s in support.strings("trusted_authserv_ids", ())
        ),
    )
    support.finish()

    smtp = top.child("smtp", top.table_of("smtp"))
    smtp_cfg = SmtpConfig(
        listen=smtp.listen("listen", "127.0.0.1:2525") or Listen("127.0.0.1", 2525),
        lmtp_listen=smtp.listen("lmtp_listen", None),
        hostname=smtp.string("hostname", "localhost"),
        max_message_size=smtp.integer("max_message_size", 25 * 1024 * 1024, minimum=1024),
    )
    smtp.finish()

    store = top.child("store", top.table_of("store"))
    store_path = store.path("path", "var/supportd.sqlite3", base)
    store.finish()

    outbound_cfg = _outbound(top, base, create_missing_secrets)

    groups = []
    for i, table in enumerate(top.tables("groups")):
        g = top.child(f"groups[{i}]", table)
        name = g.string("name", "")
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            g.error("name", f"must be a word of letters, digits, - or _, not {name!r}")
        groups.append(Group(name=name, description=g.string("description", "")))
        g.finish()
    group_names = {g.name for g in groups}
    if support_cfg.default_group not in group_names:
        support.error("default_group", f"names no [[groups]] entry: {support_cfg.default_group!r}")

    agents = []
    for i, table in enumerate(top.tables("agents")):
        a = top.child(f"agents[{i}]", table)
        email = a.email("email", a.string("email", ""))
        agent_groups = a.strings("groups", (support_cfg.default_group,))
        for unknown in sorted(set(agent_groups) - group_names):
            a.error("groups", f"names no [[groups]] entry: {unknown!r}")
        if email in addresses:
            a.error("email", f"{email} is a support address, it cannot also be an agent")
        agents.append(Agent(email=email, name=_one_line(a.string("name", email)),
                            groups=agent_groups))
        a.finish()
    seen: set[str] = set()
    for i, agent in enumerate(agents):
        if agent.email in seen:
            errors.append(ConfigError(file, f"agents[{i}].email", f"{agent.email} listed twice"))
        seen.add(agent.email)

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
    top.finish()

    if errors:
        raise ConfigInvalid(errors)
    return Config(
        path=path, support=support_cfg, smtp=smtp_cfg, store_path=store_path,
        outbound=outbound_cfg, groups=tuple(groups), agents=tuple(agents),
        accounts=tuple(accounts),
    )


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
            password=s.secret("password", base, create_missing=False),
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


def _one_line(text: str) -> str:
    """Config text that goes into headers: never a raw CR or LF."""
    return " ".join(text.split())
