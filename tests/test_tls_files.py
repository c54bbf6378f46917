"""The server's certificate files: read at start-up and at SIGHUP, where a file that cannot be
used is an error naming the option and the path, not a traceback at a client's STARTTLS."""

from __future__ import annotations

import pytest

from mqtwisted.options import ConfigError
from mqtwisted.tls import ServerTLS, make_self_signed, server_tls

BROKEN = b"-----BEGIN CERTIFICATE-----\nnotbase64\n-----END CERTIFICATE-----\n"


def test_an_unusable_certificate_file_stops_the_start_naming_it(tmp_path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_self_signed(str(cert), str(key), "mx.test")
    cert.write_bytes(cert.read_bytes() + BROKEN)  # a fullchain whose intermediate is damaged
    options = {"smtp-certificate": str(cert), "smtp-key": str(key)}
    with pytest.raises(ConfigError, match=f"^--smtp-certificate {cert} / --smtp-key {key}: "):
        server_tls(options)
    with pytest.raises(ConfigError, match="No such file"):
        server_tls({"smtp-certificate": str(tmp_path / "gone.pem"), "smtp-key": str(key)})


def test_a_reload_with_unusable_files_keeps_the_certificate_in_use(tmp_path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_self_signed(str(cert), str(key), "mx.test")
    tls = ServerTLS(str(cert), str(key))
    before = tls.context()
    bad = tmp_path / "bad.pem"
    bad.write_bytes(BROKEN)
    with pytest.raises(ValueError, match=str(bad)):
        tls.reload(str(bad), str(key))
    assert tls.context() is before and tls.cert_path == str(cert)
    tls.reload()  # the same files again: read anew
    assert tls.context() is not before and tls.getContext() is not None
