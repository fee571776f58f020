"""Config: the shipped defaults load; every error names file, key and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from supportd.cli import main
from supportd.config import ConfigInvalid, Listen, load_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "supportd.toml"
    path.write_text(text)
    return path


def errors(path: Path) -> list[str]:
    with pytest.raises(ConfigInvalid) as invalid:
        load_config(path)
    return [str(e) for e in invalid.value.errors]


def test_shipped_defaults_load(tmp_path: Path) -> None:
    # A copy, so the test neither needs nor creates the real var/hmac.key.
    path = write(tmp_path, (REPO / "supportd.toml").read_text())
    config = load_config(path)
    assert config.support.addresses == ("support@example.com",)
    assert (config.smtp.listen.host, config.smtp.listen.port) == ("127.0.0.1", 2525)
    assert [a.email for a in config.agents_in("tier1")] == ["alice@example.com"]
    assert config.store_path == tmp_path / "var" / "supportd.sqlite3"
    assert config.outbound.transport == "maildir"
    assert config.outbound.maildir == tmp_path / "var" / "outbox"
    assert (tmp_path / "var" / "hmac.key").stat().st_mode & 0o777 == 0o600


def test_every_error_names_file_key_and_reason(tmp_path: Path) -> None:
    path = write(tmp_path, """
[support]
addresses = ["not an address"]
hmac_key_env = "SUPPORTD_TEST_UNSET_VARIABLE"
default_group = "nobody"
[smtp]
listen = "127.0.0.1:99999"
max_mesage_size = 10
[[agents]]
email = "alice@example.com"
groups = ["ghosts"]
""")
    found = errors(path)
    assert f"{path}: support.addresses: must be a plain address like user@example.com, " \
           "not 'not an address'" in found
    assert f"{path}: support.hmac_key_env: environment variable SUPPORTD_TEST_UNSET_VARIABLE " \
           "is not set or empty" in found
    assert f"{path}: smtp.listen: must be HOST:PORT with a port from 1 to 65535, " \
           "not '127.0.0.1:99999'" in found
    assert f"{path}: smtp.max_mesage_size: unknown key (a typo?)" in found
    assert f"{path}: agents[0].groups: names no [[groups]] entry: 'ghosts'" in found
    assert f"{path}: support.default_group: names no [[groups]] entry: 'nobody'" in found


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    [error] = errors(write(tmp_path, "[support\n"))
    assert error.startswith(f"{tmp_path / 'supportd.toml'}: (syntax): ")
    assert "line 1" in error


def test_secret_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPPORTD_KEY", "k" * 32)
    config = load_config(write(tmp_path, '[support]\nhmac_key_env = "SUPPORTD_KEY"\n'
                                         '[[groups]]\nname = "tier1"\n'))
    assert config.support.hmac_key == b"k" * 32


def test_short_secret_is_refused(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("short")
    found = errors(write(tmp_path, '[support]\nhmac_key_file = "key"\n[[groups]]\nname = "t"\n'
                                   ))
    assert any("too short" in e for e in found)


def test_check_config_prints_errors_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[smtp]\nlisten = 25\n")
    assert main(["check-config", "--config", str(path)]) == 2
    assert f"{path}: smtp.listen: must be a string, not 25" in capsys.readouterr().err


def test_check_config_accepts_the_shipped_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(REPO / "supportd.toml")]) == 0
    assert "OK" in capsys.readouterr().out


def test_example_site_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPPORTD_SMTP_PASSWORD", "secret")
    config = load_config(REPO / "config" / "example-site.toml", create_missing_secrets=False)
    assert config.outbound.smarthost is not None
    assert config.outbound.smarthost.password == "secret"
    assert config.account_for("bob@customer-corp.example") == "Customer Corp"


def test_missing_password_file_is_an_error_even_when_only_checking(tmp_path: Path) -> None:
    path = write(tmp_path, '[support]\nhmac_key_env = "HOME"\n[[groups]]\nname = "tier1"\n'
                           '[outbound]\ntransport = "smtp"\n[outbound.smtp]\nhost = "h"\n'
                           'password_file = "nope"\n')
    with pytest.raises(ConfigInvalid) as invalid:
        load_config(path, create_missing_secrets=False)
    assert f"{path}: outbound.smtp.password_file: cannot read {tmp_path / 'nope'}: " \
           "No such file or directory" in [str(e) for e in invalid.value.errors]


MINIMAL = '[support]\nhmac_key_file = "hmac.key"\ntrusted_authserv_ids = ["mx.example.com"]\n' \
          '[[groups]]\nname = "tier1"\n'
IMAP = '[[imap]]\nname = "{name}"\nhost = "imap.example.com"\nuser = "u"\n' \
       'password_env = "HOME"\nafter = "seen"\n{extra}\n'


def test_smtp_limits_have_defaults_and_bounds(tmp_path: Path) -> None:
    smtp = load_config(write(tmp_path, MINIMAL)).smtp
    assert (smtp.max_recipients, smtp.max_invalid_recipients, smtp.max_sessions) == (100, 20, 200)
    found = errors(write(tmp_path, MINIMAL + "[smtp]\nmax_recipients = 50\nmax_sessions = 0\n"))
    assert f"{tmp_path / 'supportd.toml'}: smtp.max_recipients: must be at least 100, " \
           "not 50" in found
    assert any(e.endswith("smtp.max_sessions: must be at least 1, not 0") for e in found)


def test_authentication_results_are_trusted_per_listener(tmp_path: Path) -> None:
    """Finding 2: nothing is trusted unless a listener says so; then only that listener."""
    plain = load_config(write(tmp_path, MINIMAL + IMAP.format(name="provider", extra="")))
    assert not any(plain.trusts_authentication_results(source)
                   for source in ("smtp", "lmtp", "imap:provider", "cli"))
    config = load_config(write(tmp_path, MINIMAL
                               + '[smtp]\nlmtp_listen = "127.0.0.1:2424"\n'
                               + "lmtp_trust_authentication_results = true\n"
                               + IMAP.format(name="provider",
                                             extra="trust_authentication_results = true")
                               + IMAP.format(name="other", extra="")))
    trusted = [source for source in ("smtp", "lmtp", "imap:provider", "imap:other",
                                     "imap:nobody", "provider") if
               config.trusts_authentication_results(source)]
    assert trusted == ["lmtp", "imap:provider"]


@pytest.mark.parametrize(("listen", "key"), [
    ('listen = "0.0.0.0:25"\ntrust_authentication_results = true',
     "smtp.trust_authentication_results"),
    ('lmtp_listen = "[2001:db8::1]:2424"\nlmtp_trust_authentication_results = true',
     "smtp.lmtp_trust_authentication_results"),
    ('listen = "mx.example.com:25"\ntrust_authentication_results = true',
     "smtp.trust_authentication_results"),
])
def test_trust_on_a_listener_others_can_reach_is_an_error(
    tmp_path: Path, listen: str, key: str
) -> None:
    """Finding 2: a config that would believe anyone's Authentication-Results cannot load."""
    [error] = errors(write(tmp_path, MINIMAL + f"[smtp]\n{listen}\n"))
    assert error.startswith(f"{tmp_path / 'supportd.toml'}: {key}: smtp.")
    assert "is not a loopback address: anyone who can connect there can write" in error


@pytest.mark.parametrize("listen", ['"127.0.0.1:2424"', '"[::1]:2424"', '"localhost:2424"'])
def test_trust_on_a_loopback_listener_is_accepted(tmp_path: Path, listen: str) -> None:
    config = load_config(write(tmp_path, MINIMAL + f"[smtp]\nlmtp_listen = {listen}\n"
                               "lmtp_trust_authentication_results = true\n"))
    assert config.trusts_authentication_results("lmtp")


def test_trust_without_a_trusted_authserv_id_is_an_error(tmp_path: Path) -> None:
    text = MINIMAL.replace('trusted_authserv_ids = ["mx.example.com"]\n', "")
    [error] = errors(write(tmp_path, text + "[smtp]\ntrust_authentication_results = true\n"))
    assert error == (f"{tmp_path / 'supportd.toml'}: smtp.trust_authentication_results: is "
                     "true, but support.trusted_authserv_ids is empty: name the authserv-id "
                     "your MTA writes in its Authentication-Results")


def test_example_site_trusts_only_its_loopback_lmtp_listener(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding 2: the example site listens on 0.0.0.0:25 and trusts mx.example.com: as
    shipped, only the LMTP listener Postfix delivers to on 127.0.0.1 is believed."""
    monkeypatch.setenv("SUPPORTD_SMTP_PASSWORD", "secret")
    config = load_config(REPO / "config" / "example-site.toml", create_missing_secrets=False)
    assert config.smtp.listen == Listen("0.0.0.0", 25)
    assert not config.trusts_authentication_results("smtp")
    assert config.trusts_authentication_results("lmtp")
