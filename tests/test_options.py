"""``--config``: every option from a MailerQ-style file, the command line winning, and errors that
name the file, the line and the key (also as a real ``twistd mqmta`` start that fails)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mqtwisted.options import OPTIONS, ConfigError, MQOptions
from tests.realmta import TWISTD, env


def parse(*args: str) -> MQOptions:
    o = MQOptions()
    o.parseOptions(list(args))
    return o


def write(tmp_path, text: str) -> str:  # noqa: ANN001
    path = tmp_path / "mqmta.conf"
    path.write_text(text)
    return str(path)


def test_file_values_apply_and_command_line_wins(tmp_path):
    conf = write(
        tmp_path,
        "# a comment\n"
        "smtp-port: 2600, 2601\n"
        "\n"
        "hostname: mx.example.org\n"
        "smtp-auth-plaintext: on\n"
        "retry-interval: 60,120\n"
        "www-port:\n",
    )
    o = parse("--config", conf, "--smtp-port=2700")
    assert o["smtp-port"] == [2700]  # command line wins
    assert o["hostname"] == "mx.example.org"  # file wins over the default
    assert o["smtp-auth-plaintext"] is True
    assert o["retry-interval"] == [60.0, 120.0]
    assert o["www-port"] is None  # empty: off
    assert o["smtp-timeout"] == 300.0  # neither: the default
    # Every spelling of --config is found, including the prefixes getopt accepts.
    for args in (["--config=" + conf], ["-c", conf], ["-c" + conf], ["--conf", conf]):
        assert parse(*args)["hostname"] == "mx.example.org", args
    # The option after --config wins as well as the one before it.
    assert parse("--hostname=cli.test", "--config", conf)["hostname"] == "cli.test"


def test_every_option_can_come_from_the_file(tmp_path):
    lines = []
    for name, default, _, _ in OPTIONS:
        value = default if default else ""
        if name == "smtp-certificate":
            continue  # goes with smtp-key; both empty by default
        lines.append(f"{name}: {value}")
    o = parse("--config", write(tmp_path, "\n".join(lines) + "\n"))
    defaults = parse()
    for name, *_ in OPTIONS:
        assert o[name] == defaults[name], name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hostname: a\nsmtp-prot: 25\n", ":2: unknown key 'smtp-prot'"),
        ("\n\nsmtp-port: twenty-five\n", ":3: key 'smtp-port': bad value 'twenty-five'"),
        ("smtp-port: 70000\n", ":1: key 'smtp-port': bad value '70000': port 70000 out of range"),
        ("delivery: maybe\n", ":1: key 'delivery': bad value 'maybe': expected on or off"),
        ("smtp-extract: sometimes\n", ":1: key 'smtp-extract'"),
        ("smtp-timeout: -1\n", ":1: key 'smtp-timeout'"),
        ("just words\n", ":1: expected 'key: value'"),
        ("config: other.conf\n", ":1: unknown key 'config'"),
    ],
)
def test_errors_name_file_line_and_key(tmp_path, text, message):
    conf = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        parse("--config", conf)
    assert str(e.value).startswith(conf + ":")
    assert message in str(e.value)


def test_bad_command_line_value_names_the_option(tmp_path):
    with pytest.raises(ConfigError, match="--smtp-maxsize: bad value 'big'"):
        parse("--smtp-maxsize=big")
    with pytest.raises(ConfigError, match="cannot read config file"):
        parse("--config", str(tmp_path / "missing.conf"))


def test_real_twistd_start_fails_with_the_message(tmp_path):
    conf = write(tmp_path, "smtp-port: 2525\nsmtp-maxsize: lots\n")
    proc = subprocess.run(
        [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "mqmta", "--config", conf],
        env=env(), cwd=str(tmp_path), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert f"{conf}:2: key 'smtp-maxsize': bad value 'lots'" in out
    assert "SMTPFactory starting" not in out  # nothing listened


class _Recording(dict):
    """Options that note every name looked up."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key).replace("_", "-"))
        return super().__contains__(key)


def test_every_option_delivery_reads_is_declared() -> None:
    from mqtwisted.delivery import DeliveryOptions
    from mqtwisted.delivery.options import option_names

    declared = {name for name, *_ in OPTIONS}
    opts = _Recording()
    DeliveryOptions.from_options(opts)
    assert opts.asked, "from_options read no option"
    assert sorted(opts.asked - declared) == []
    assert sorted(set(option_names()) - declared) == []
    for name, default, _coerce, help_ in OPTIONS:
        if name in opts.asked:
            assert default is not None and help_, name


def test_delivery_defaults_are_the_declared_ones() -> None:
    from mqtwisted.delivery import DeliveryOptions

    assert DeliveryOptions.from_options({}) == DeliveryOptions()
    parsed = DeliveryOptions.from_options(parse("--hostname", "h.example"))
    assert parsed == DeliveryOptions(helo="h.example", data_dir=os.path.abspath("mqmta-data"))


def test_client_options(tmp_path) -> None:
    from mqtwisted.delivery import DeliveryOptions
    from tests.tlsca import CA

    ca = CA().bundle(tmp_path / "ca.pem")
    o = DeliveryOptions.from_options(parse("--smtp-client-timeout", "12", "--connect-timeout", "4",
                                           "--smtp-client-security", "verified", "--smtp-client-ca", ca,
                                           "--retry", "later", "--dsn", "bounces"))
    assert (o.timeout, o.connect_timeout, o.security, o.tls_ca) == (12, 4, "verified", ca)
    assert o.queues["retry"] == "later" and o.queues["dsn"] == "bounces" and o.queues["results"] == "results"
    with pytest.raises(ConfigError, match="smtp-client-security"):
        parse("--smtp-client-security", "sometimes")


def test_tls_ca_and_its_old_name(tmp_path) -> None:
    from mqtwisted.delivery import DeliveryOptions
    from tests.tlsca import CA

    ca = CA().bundle(tmp_path / "ca.pem")
    for flag in ("--tls-ca", "--smtp-client-ca"):
        o = parse(flag, ca)
        assert o["tls-ca"] == o["smtp-client-ca"] == ca
        assert DeliveryOptions.from_options(o).tls_ca == ca
    assert DeliveryOptions.from_options({"smtp-client-ca": ca}).tls_ca == ca
    other = CA().bundle(tmp_path / "other.pem")
    with pytest.raises(ConfigError, match="old name of --tls-ca"):
        parse("--tls-ca", ca, "--smtp-client-ca", other)
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"--tls-ca: .*bad.pem: not a PEM certificate bundle"):
        parse("--tls-ca", str(tmp_path / "bad.pem"))
    with pytest.raises(ConfigError, match=r"--tls-ca: .*missing.pem: cannot read"):
        parse("--tls-ca", str(tmp_path / "missing.pem"))
    o = DeliveryOptions.from_options(parse("--mta-sts", "off", "--dane", "off", "--mta-sts-port", "8443"))
    assert (o.mta_sts, o.dane, o.mta_sts_port) == (False, False, 8443)
