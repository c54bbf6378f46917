"""--smtp-auth file:// credentials: crypt(3) hashes made by other tools, verified without ``crypt``.

The hashes below were made by libxcrypt 4.4.33's crypt(3) (what ``mkpasswd`` calls) and by
``openssl passwd``, not by the code under test, so a verifier that agrees only with itself fails.
"""

from __future__ import annotations

import smtplib
import subprocess
import sys

import pytest

from mqtwisted import auth
from mqtwisted.auth import AuthConfigError, PasswordChecker, load_checker
from tests.conftest import free_port, wait_port
from tests.realmta import env

# (scheme, password, hash of that password)
KNOWN = [
    ("sha512-crypt", "s3cret", "$6$0123456789abcdef$QaL63Cx/fSzlgAogrcSGcy5hvrsSg1dlthiou8XkG8WRUEyaU5DtBqyHZd0wrQ/HXIgQDRNcrS5yWC8NAJjy21"),  # openssl passwd -6
    ("sha512-crypt", "s3cret", "$6$rounds=5000$sqV6bsV8g8UO9kVC$FXoeIoJBishxnx.OxNKMHfjNwyFZDu5.PgHfh.W958s7r2Wbj3TgRfocq0UADKoRvkRBmr5C9ZjP.n9b1RwPr/"),
    ("sha512-crypt", "pässwörd", "$6$rounds=5000$sqV6bsV8g8UO9kVC$Ta1zF5fEneRUtvSXAdwgrmsKSeDbge2HvBXpqWC2U3ecm9tLDrqe6fP8G89Md1UWvobYdo7yRs/Pu6TkMMuvu1"),
    ("sha256-crypt", "s3cret", "$5$0123456789abcdef$UawnY.fsyDwvn1flGQBkjiQE6c7MQoo5NA3rQ2nhK/8"),  # openssl passwd -5
    ("sha256-crypt", "s3cret", "$5$rounds=5000$.3OhBbPchg16YC9v$17QIhMiuAUbEljsymOXtHWD422RCf2TsXVqZ57a9pUB"),
    ("bcrypt", "s3cret", "$2b$04$tOcz4mmreS/91bR7gnX1BO0wyHortpXdlV5XIypIMi8JgzgBtnFOS"),
    ("bcrypt", "s3cret", "$2y$04$tOcz4mmreS/91bR7gnX1BO0wyHortpXdlV5XIypIMi8JgzgBtnFOS"),
    ("bcrypt", "s3cret", "$2a$04$tOcz4mmreS/91bR7gnX1BO0wyHortpXdlV5XIypIMi8JgzgBtnFOS"),
    ("bcrypt", "pässwörd", "$2b$04$tOcz4mmreS/91bR7gnX1BOzBSI0nzS.DIOUW.69G7CZnGh4cC2esG"),
    ("yescrypt", "s3cret", "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$8c0O2L8gFA3jUVvwMFdXpZKM78kTwpdGJswaLb6IRr/"),
    ("yescrypt", "pässwörd", "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$UAi3w.V1khOnmiQzfq00d7LaG6KfSe9MVbNef5kSs64"),
]


def users_file(tmp_path, *hashes: str) -> str:
    path = tmp_path / "users"
    path.write_text("# users\n\n" + "".join(f"u{i}:{h}\n" for i, h in enumerate(hashes)), encoding="utf-8")
    return f"file://{path}"


@pytest.mark.parametrize(("scheme", "password", "digest"), KNOWN)
def test_file_auth_checks_crypt_hashes(tmp_path, scheme, password, digest):
    check = load_checker(users_file(tmp_path, digest))
    assert auth.scheme_of(digest).name == scheme
    assert check("u0", password)
    assert not check("u0", password + "x") and not check("u0", "") and not check("u0", password[:-1])
    assert not check("u1", password)


def test_bcrypt_reads_the_first_72_bytes_as_crypt3_does(tmp_path):
    # libxcrypt's hash of 72 x's; crypt(3) gives the same for any longer password with that start
    check = load_checker(users_file(tmp_path, "$2b$04$tOcz4mmreS/91bR7gnX1BOp4yc4dMLxJgR01fE1aChehiTirjZrOW"))
    assert check("u0", "x" * 72) and check("u0", "x" * 72 + "tail")
    assert not check("u0", "x" * 71)


@pytest.mark.parametrize(("scheme", "password", "digest"), [KNOWN[0], KNOWN[3], KNOWN[5], KNOWN[9]])
def test_a_password_crypt3_cannot_take_is_refused_not_raised(scheme, password, digest):
    assert PasswordChecker(hashed={"u": digest})("u", "s3c\0ret") is False


def test_auth_config_errors_name_the_problem(tmp_path):
    with pytest.raises(AuthConfigError, match="cannot read"):
        load_checker(f"file://{tmp_path}/missing")
    bad = tmp_path / "bad"
    bad.write_text("no-colon-here\n")
    with pytest.raises(AuthConfigError, match=f"{bad}:1"):
        load_checker(f"file://{bad}")
    with pytest.raises(AuthConfigError, match="unknown scheme"):
        load_checker("ldap://x")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("$1$abcdefgh$7.vq19w/w3Vm.hk1FOA7Q/", r"user 'ann': unsupported hash scheme \$1\$; use \$6\$ sha512-crypt"),
        ("$7$CU..../....abc$xyz", r"unsupported hash scheme \$7\$"),
        ("$2x$04$tOcz4mmreS/91bR7gnX1BO0wyHortpXdlV5XIypIMi8JgzgBtnFOS", r"unsupported hash scheme \$2x\$"),
        ("plain-secret", r"unsupported hash \(no \$id\$ prefix\)"),
        ("$6$0123456789abcdef$tooshort", "unusable sha512-crypt hash: malformed"),
        ("$5$0123456789abcdef$", "unusable sha256-crypt hash: it ends after the salt"),
        ("$2b$04$tooshort", "unusable bcrypt hash"),
        ("$y$j9T$F5Jx5fExrKuPp53xLKQ..1$tooshort", "unusable yescrypt hash: expected"),
    ],
)
def test_a_hash_it_cannot_verify_stops_loading_with_file_and_line(tmp_path, line, message):
    path = tmp_path / "users"
    path.write_text(f"# users\nbob:{KNOWN[0][2]}\nann:{line}\n")
    with pytest.raises(AuthConfigError, match=f"{path}:3: .*{message}") as e:
        load_checker(f"file://{path}")
    assert "plain-secret" not in str(e.value) and "tooshort" not in str(e.value)


@pytest.fixture
def fresh_yescrypt_probe():
    auth._yescrypt_unavailable.cache_clear()
    yield
    auth._yescrypt_unavailable.cache_clear()


def test_yescrypt_without_crypt_r_names_the_line_and_the_package(tmp_path, monkeypatch, fresh_yescrypt_probe):
    monkeypatch.setitem(sys.modules, "crypt_r", None)
    with pytest.raises(AuthConfigError, match=r"users:4: user 'u1': unusable yescrypt hash: .*crypt-r"):
        load_checker(users_file(tmp_path, KNOWN[0][2], KNOWN[9][2]))
    assert load_checker(users_file(tmp_path, KNOWN[0][2], KNOWN[5][2]))("u1", "s3cret")


def test_yescrypt_on_a_crypt_r_without_it_says_libxcrypt(tmp_path, monkeypatch, fresh_yescrypt_probe):
    import crypt_r

    # glibc's own crypt_r before libxcrypt answered a $y$ setting with "*0"
    monkeypatch.setattr(crypt_r, "crypt", lambda word, salt: "*0")
    with pytest.raises(AuthConfigError, match="users:4: .*does not compute yescrypt .*libxcrypt"):
        load_checker(users_file(tmp_path, KNOWN[0][2], KNOWN[9][2]))


# twistd in a process where ``import crypt`` fails, as on Python 3.13 (stdlib's and crypt-r's shim)
NO_CRYPT_TWISTD = """
import sys
sys.modules["crypt"] = sys.modules["_crypt"] = None
try:
    import crypt
except ImportError:
    pass
else:
    raise SystemExit("crypt is still importable")
sys.argv[0] = "twistd"
from twisted.scripts.twistd import run
run()
"""


def login(port: int, user: str, password: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo("client.test")
        try:
            code, text = s.login(user, password)
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code, e.smtp_error
        s.sendmail(f"{user}@example.com", ["r@example.com"], f"Subject: from {user}\r\n\r\nhi\r\n")
        return code, text


@pytest.mark.slow
def test_smtp_auth_with_each_scheme_when_crypt_is_unimportable(tmp_path):
    users = {scheme: (password, digest) for scheme, password, digest in KNOWN if password == "s3cret"}
    assert sorted(users) == ["bcrypt", "sha256-crypt", "sha512-crypt", "yescrypt"]
    path = tmp_path / "users"
    path.write_text("".join(f"{scheme}:{digest}\n" for scheme, (_, digest) in users.items()))
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    args = [sys.executable, "-c", NO_CRYPT_TWISTD, "-n", "--pidfile=", "mqmta", f"--data-dir={data}"]
    args += [f"--smtp-port={port}", "--www-port=", "--hostname=mx.test", "--delivery=off"]
    args += [f"--smtp-auth=file://{path}", "--smtp-auth-plaintext=on"]
    with open(tmp_path / "twistd.log", "wb") as log:
        proc = subprocess.Popen(args, env=env(), cwd=data, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_port(port, proc=proc)
            for scheme, (password, _) in users.items():
                assert login(port, scheme, password)[0] == 235, scheme
                assert login(port, scheme, password + "!")[0] == 535, scheme
            assert login(port, "nobody", "s3cret")[0] == 535
        finally:
            proc.terminate()
            proc.wait(30)
    stats = subprocess.run(
        [sys.executable, "-m", "mqtwisted.cli", "queue", "--data-dir", str(data), "stats"],
        capture_output=True, text=True, env=env(), timeout=60,
    )
    # one message per scheme, sent after its AUTH succeeded
    assert {line.split()[0]: int(line.split()[1]) for line in stats.stdout.splitlines()}["outbox"] == 4
