"""DKIM signing and ARC sealing of outgoing mail, with dkimpy.

What to sign with comes from one of two places, both read into :class:`SigningRequest` values:

- a message's ``dkim`` property (MailerQ's format): :func:`parse_dkim_property`;
- otherwise the ``--dkim-keys`` file: :func:`load_keys_file` at start-up, then
  :meth:`KeyTable.for_message` picks the keys of the message's ``From:`` domain (RSA and
  Ed25519 both when the domain has both), so that the signature aligns for DMARC.

:func:`signing_requests` makes that choice for a message; :class:`Signer` then signs the final
message bytes, after every header edit, and returns them with the ``DKIM-Signature`` headers (and
an ARC set when asked) prepended; a message for many recipients is signed once (an LRU cache keyed
by a digest of the bytes).

The contract with delivery:

- signing is pure and CPU-bound, with no Twisted, queue or SMTP import: run
  :meth:`Signer.sign` in a thread (``deferToThread``), never on the reactor thread;
- it raises :class:`SigningError` when any asked-for signature cannot be made; delivery then
  sends nothing and records a temporary failure with the exception's text in ``results``,
  so that a message that should be signed is never sent unsigned;
- :class:`DkimPropertyError` is a ``dkim`` property that can never be used (bad key, unknown
  field); retrying does not help;
- a keys file that cannot be read or holds an unusable key raises ``ConfigError`` (file, line
  and key named) from :func:`load_keys_file`, which stops the start-up.

docs/architecture.rst shows where this sits among the layers and threads.
"""

from mqtwisted.signing.dkimproperty import DkimPropertyError, parse_dkim_property, signing_requests
from mqtwisted.signing.keygen import KeyPair, generate_key_pair, write_key_pair, zone_entry
from mqtwisted.signing.keys import (
    ALGORITHMS,
    CANONICALIZATIONS,
    ED25519,
    RSA,
    KeyFormatError,
    SigningError,
    SigningKey,
    SigningRequest,
    read_private_key,
)
from mqtwisted.signing.keysfile import KeyTable, from_domain, load_keys_file
from mqtwisted.signing.signer import Signer

__all__ = [
    "ALGORITHMS", "CANONICALIZATIONS", "ED25519", "RSA", "DkimPropertyError", "KeyFormatError",
    "KeyPair", "KeyTable", "Signer", "SigningError", "SigningKey", "SigningRequest", "from_domain",
    "generate_key_pair", "load_keys_file", "parse_dkim_property", "read_private_key",
    "signing_requests", "write_key_pair", "zone_entry",
]
