"""The sendmail macros a milter is told before each command (SMFIC_MACRO), named as sendmail and
Postfix name them, so that rspamd, OpenDKIM and the rest find what they look for.

Each stage sends its usual set (Postfix's ``milter_*_macros`` defaults, trimmed to what mqmta
knows) unless the milter asked for a list of its own (SMFIR_SETSYMLIST in its negotiation).
A macro without a value (no TLS, not authenticated) is left out, as sendmail does.
"""

from __future__ import annotations

from mqtwisted.connection import Connection
from mqtwisted.milter import protocol as mp

#: The macros each stage sends when the milter did not choose.
STAGE_MACROS: dict[bytes, tuple[str, ...]] = {
    mp.CONNECT: ("j", "_", "v", "{daemon_name}", "{daemon_addr}", "{daemon_port}", "{if_addr}",
                 "{client_addr}", "{client_port}", "{client_name}", "{client_ptr}"),
    mp.HELO: ("{tls_version}", "{cipher}", "{cert_subject}", "{cert_issuer}"),
    mp.MAIL: ("i", "{auth_type}", "{auth_authen}", "{mail_mailer}", "{mail_host}", "{mail_addr}"),
    mp.RCPT: ("i", "{rcpt_mailer}", "{rcpt_host}", "{rcpt_addr}"),
    mp.DATA: ("i",),
    mp.EOH: ("i",),
    mp.BODYEOB: ("i",),
}


def connection_macros(conn: Connection, hostname: str) -> dict[str, str | None]:
    """What is known from the moment the client connected, plus TLS and AUTH once they happened."""
    client_name = "localhost" if conn.remote_ip in ("127.0.0.1", "::1") else "unknown"
    subject = issuer = None
    cert = conn.peer_certificate
    if cert is not None:
        try:
            subject = "/" + "/".join(f"{k.decode()}={v.decode()}" for k, v in cert.get_subject().get_components())
            issuer = "/" + "/".join(f"{k.decode()}={v.decode()}" for k, v in cert.get_issuer().get_components())
        except Exception:  # not an OpenSSL X509: leave the macros out
            subject = issuer = None
    return {
        "j": hostname,
        "_": f"{client_name} [{conn.remote_ip}]",
        "v": "mqmta",
        "{daemon_name}": "mqmta",
        "{daemon_addr}": conn.local_ip or None,
        "{daemon_port}": str(conn.local_port) if conn.local_port else None,
        "{if_addr}": conn.local_ip or None,
        "{client_addr}": conn.remote_ip or None,
        "{client_port}": str(conn.remote_port) if conn.remote_ip else None,
        "{client_name}": client_name,
        "{client_ptr}": client_name,
        "{tls_version}": conn.tls_version if conn.secure else None,
        "{cipher}": conn.tls_cipher if conn.secure else None,
        "{cert_subject}": subject,
        "{cert_issuer}": issuer,
        "{auth_type}": conn.auth_mechanism if conn.authenticated else None,
        "{auth_authen}": conn.user if conn.authenticated else None,
    }


def address_macros(prefix: str, address: str, local: bool) -> dict[str, str | None]:
    """``{mail_*}`` or ``{rcpt_*}`` for one envelope address."""
    return {
        f"{{{prefix}_addr}}": address,
        f"{{{prefix}_host}}": address.rpartition("@")[2] or None,
        f"{{{prefix}_mailer}}": "local" if local else "smtp",
    }


def for_stage(cmd: bytes, known: dict[str, str | None], wanted: tuple[str, ...] | None) -> dict[str, str]:
    """The macros to send before ``cmd``: those the milter wants (else the stage's usual ones)
    that have a value, named as sendmail names them (``j``, ``{client_addr}``, whichever way
    the milter spelt them)."""
    out: dict[str, str] = {}
    for name in wanted if wanted is not None else STAGE_MACROS.get(cmd, ()):
        bare = name.strip("{}")
        key = bare if len(bare) == 1 else f"{{{bare}}}"
        value = known.get(key)
        if value is not None:
            out[key] = value
    return out
