"""Sign a final message: DKIM-Signature headers (RFC 6376, RFC 8463) and an ARC set (RFC 8617),
made by dkimpy, prepended to the message bytes; an LRU cache so that the copies of one message
for many recipients are signed once.

Pure and CPU-bound (RSA signing, hashing a large body): call it from a thread, not the reactor.
One :class:`Signer` is safe to share between threads.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import dkim
import nacl.encoding
import nacl.signing
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from mqtwisted.signing.keys import ED25519, RSA, SigningError, SigningRequest

AUTHENTICATION_RESULTS = b"Authentication-Results"


class Signer:
    """Signs messages for ``host_name`` (the ARC authserv-id, ``srv_id``).

    ``cache_size``: how many signed messages' header blocks are kept (the blocks, not the
    messages); ``max_age``: seconds a cached block is reused, so that a retry hours later gets a
    fresh ``t=`` and an ``x=`` that has not run out.
    """

    def __init__(self, host_name: str, *, cache_size: int = 256, max_age: float = 3600.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.host_name = host_name
        self.cache_size = cache_size
        self.max_age = max_age
        self.clock = clock
        #: Signatures made (DKIM-Signature headers and ARC sets), for metrics and tests.
        self.signatures_made = 0
        #: relaxed/simple body hashes by body, shared by the signatures of one message and by the
        #: messages of a campaign whose bodies are the same (each recipient's headers differ)
        self.body_hashes = BodyHashes(cache_size)
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple, tuple[float, bytes]] = OrderedDict()
        self._in_flight: dict[tuple, threading.Lock] = {}

    def sign(self, message: bytes, requests: Sequence[SigningRequest],
             authentication_results: str | None = None) -> bytes:
        """``message`` with the signatures of ``requests`` prepended (``message`` itself if there
        are none).

        ``authentication_results``: the value of this host's inbound ``Authentication-Results``
        header (``"<host_name>; spf=pass ..."``), the input of an ARC seal when the message does not
        carry that header itself (when it does, the header wins); without either, the seal says
        ``<host_name>; none``.

        Raises :class:`SigningError` when any signature cannot be made.
        """
        requests = tuple(requests)
        if not requests:
            return message
        sealing = [r for r in requests if r.arc]
        if len(sealing) > 1:
            raise SigningError("more than one ARC seal asked for one message: "
                               + ", ".join(r.describe() for r in sealing))
        key = (hashlib.sha256(message).digest(), requests, authentication_results)
        block = self._cached(key)
        if block is None:
            block = self._sign_once(key, message, requests, authentication_results)
        return block + message

    def signed_if_cached(self, message: bytes, requests: Sequence[SigningRequest],
                         authentication_results: str | None = None) -> bytes | None:
        """What :meth:`sign` returns when the message's signatures are already cached, else None:
        no signing, only a SHA-256 of ``message``, so the caller may ask on a thread that must
        not block (another copy of a campaign's message was signed before)."""
        requests = tuple(requests)
        if not requests:
            return message
        block = self._cached((hashlib.sha256(message).digest(), requests, authentication_results))
        return None if block is None else block + message

    def _cached(self, key: tuple) -> bytes | None:
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                return None
            made, block = entry
            if self.clock() - made > self._lifetime(key[1]):
                del self._cache[key]
                return None
            self._cache.move_to_end(key)
            return block

    def _lifetime(self, requests: tuple[SigningRequest, ...]) -> float:
        expiries = [r.expire / 2 for r in requests if r.expire is not None]
        return min([self.max_age, *expiries])

    def _sign_once(self, key: tuple, message: bytes, requests: tuple[SigningRequest, ...],
                   authentication_results: str | None) -> bytes:
        # One thread signs; the others for the same message wait for its block instead of
        # hashing the same body again.
        with self._lock:
            flight = self._in_flight.setdefault(key, threading.Lock())
        try:
            with flight:
                block = self._cached(key)
                if block is not None:
                    return block
                made = self.clock()
                block = self._make_block(message, requests, authentication_results, int(made))
                with self._lock:
                    self._cache[key] = (made, block)
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
                return block
        finally:
            with self._lock:
                if self._in_flight.get(key) is flight:
                    del self._in_flight[key]

    def _make_block(self, message: bytes, requests: tuple[SigningRequest, ...],
                    authentication_results: str | None, now: int) -> bytes:
        linesep = line_ending(message)
        signatures = dkim_signatures(message, [r for r in requests if r.dkim], linesep, self.body_hashes)
        block = b"".join(signatures)
        for request in requests:
            if request.arc:
                arc_set = arc_seal(block + message, request, self.host_name, authentication_results,
                                   now, linesep)
                signatures.append(arc_set)
                block = arc_set + block
        with self._lock:
            self.signatures_made += len(signatures)
        return block


def line_ending(message: bytes) -> bytes:
    """The line ending of the message's first line: added headers must match the rest."""
    end = message.find(b"\n")
    return b"\n" if end > 0 and message[end - 1 : end] != b"\r" else b"\r\n"


class OpenSSLRSA:
    """Signs the SHA-256 digest dkimpy computed with RSASSA-PKCS1-v1_5 (RFC 8017) in OpenSSL,
    shaped as the Ed25519 signing key dkimpy calls (``pk.sign(digest).signature``)."""

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self.key = key

    def sign(self, digest: bytes) -> SimpleNamespace:
        return SimpleNamespace(signature=self.key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256())))


class _SignerSteps:
    """dkimpy's signers with two changes in ``gen_header``, the public step that turns the tag
    list into the signed header (dkimpy's ``sign`` has no parameter for either):

    - an ``x=`` tag after ``t=`` when ``expire`` is set (RFC 6376 §3.5: later than ``t=``);
    - the RSA signature made by OpenSSL: dkimpy computes RSA with Python integers, about ten
      times slower, which would make signing the larger part of a delivery's CPU time.  Its
      Ed25519 branch signs the digest it computed with whatever ``pk.sign`` it is given, so the
      step runs as that branch with :class:`OpenSSLRSA` as the key; the ``a=`` tag is already
      in the tag list and the digest is SHA-256 for both algorithms.

    tests/test_dkim.py checks both (x= signed and honoured, OpenSSL called, every signature
    verified by dkimpy, OpenDKIM and Mail::DKIM) and fails if dkimpy changes this step.
    """

    expire: int | None = None
    rsa: rsa.RSAPrivateKey | None = None
    signature_algorithm: bytes

    def gen_header(self, fields: list[tuple[bytes, bytes]], include_headers: Sequence[bytes],
                   canon_policy: Any, header_name: bytes, pk: Any, standardize: bool = False) -> bytes:
        steps: Any = super()
        if self.expire is not None and header_name == b"DKIM-Signature":
            fields = list(fields)
            at = next(i for i, (tag, _) in enumerate(fields) if tag == b"t")
            fields.insert(at + 1, (b"x", str(int(fields[at][1]) + self.expire).encode("ascii")))
        if self.rsa is None or self.signature_algorithm != RSA.encode():
            return steps.gen_header(fields, include_headers, canon_policy, header_name, pk, standardize)
        self.signature_algorithm = ED25519.encode()
        try:
            return steps.gen_header(fields, include_headers, canon_policy, header_name,
                                    OpenSSLRSA(self.rsa), standardize)
        finally:
            self.signature_algorithm = RSA.encode()


class _ARC(_SignerSteps, dkim.ARC):
    pass


class _DKIM(_SignerSteps, dkim.DKIM):
    def signature(self, request: SigningRequest, body_hashes: BodyHashes) -> bytes:
        """dkimpy's ``DKIM.sign``, step for step (its checks, its tags in its order, its
        ``gen_header``), with two costs left out: the private key is the one read at start-up
        (``sign`` parses the PEM with dkimpy's ASN.1 code in Python at every call, a fifth of a
        2 KB message's signing), and the body hash comes from ``body_hashes`` (one
        canonicalization per body, not per signature and recipient).  The message was parsed
        once, when this object was made, for all of its signatures."""
        self.signature_algorithm = request.algorithm.encode()
        self.expire, self.rsa = request.expire, request.key.rsa
        policy = dkim.CanonicalizationPolicy.from_c_value(request.canonicalization.encode())
        include = tuple(h.lower() for h in _headers(self, request))
        if b"from" not in include:
            raise dkim.ParameterError("The From header field MUST be signed")
        for name in set(include) & self.should_not_sign:
            raise dkim.ParameterError(f"The {name.decode()} header field SHOULD NOT be signed")
        self.hasher = dkim.HASH_ALGORITHMS[self.signature_algorithm]
        self.include_headers = include
        domain = request.domain.encode()
        fields = [
            (b"v", b"1"), (b"a", self.signature_algorithm), (b"c", policy.to_c_value()), (b"d", domain),
            (b"i", b"@" + domain), (b"q", b"dns/txt"), (b"s", request.selector.encode()),
            (b"t", str(int(time.time())).encode("ascii")), (b"h", b" : ".join(include)),
            (b"bh", body_hashes.get(self.body, policy)),
            # As dkimpy does: b= folds onto a line of its own, so the other tags keep their folding.
            (b"b", b"0" * 60),
        ]
        return b"DKIM-Signature: " + self.gen_header(fields, include, policy, b"DKIM-Signature",
                                                     _private_key(request))


def dkim_signatures(message: bytes, requests: Sequence[SigningRequest], linesep: bytes = b"\r\n",
                    body_hashes: BodyHashes | None = None) -> list[bytes]:
    """The ``DKIM-Signature:`` header lines (each ending in ``linesep``) of ``requests`` for
    ``message``, in their order."""
    if not requests:
        return []
    body_hashes = body_hashes if body_hashes is not None else BodyHashes(len(requests))
    try:
        signer = _DKIM(message, linesep=linesep)
    except Exception as e:
        raise SigningError(f"DKIM signing with {requests[0].describe()} failed: {e}") from e
    signatures = []
    for request in requests:
        try:
            signatures.append(signer.signature(request, body_hashes))
        except Exception as e:  # any failure must stop the message, never let it go unsigned
            raise SigningError(f"DKIM signing with {request.describe()} failed: {e}") from e
    return signatures


def dkim_signature(message: bytes, request: SigningRequest, linesep: bytes = b"\r\n") -> bytes:
    """The ``DKIM-Signature:`` header line (ending in ``linesep``) of ``request`` for ``message``."""
    return dkim_signatures(message, [request], linesep)[0]


@functools.lru_cache(maxsize=64)
def _ed25519_key(seed: bytes) -> Any:
    return nacl.signing.SigningKey(seed, encoder=nacl.encoding.Base64Encoder)


def _private_key(request: SigningRequest) -> Any:
    """What ``gen_header`` signs with: for RSA nothing (the key read into OpenSSL, see
    :class:`_SignerSteps`), for Ed25519 the seed read once into PyNaCl, as dkimpy's ``sign`` does."""
    if request.algorithm == ED25519:
        return _ed25519_key(request.key.secret)
    if request.key.rsa is None:
        raise SigningError(f"{request.describe()}: the RSA key was not read into OpenSSL")
    return None


class BodyHashes:
    """``bh=`` values by body and canonicalization (an LRU of ``size``), safe between threads.
    Keyed by the SHA-256 of the raw body: hashing it costs a small part of canonicalizing it."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._lock = threading.Lock()
        self._hashes: OrderedDict[tuple[bytes, bytes], bytes] = OrderedDict()

    def get(self, body: bytes, policy: Any) -> bytes:
        key = (hashlib.sha256(body).digest(), policy.to_c_value().split(b"/")[1])
        with self._lock:
            found = self._hashes.get(key)
            if found is not None:
                self._hashes.move_to_end(key)
                return found
        value = base64.b64encode(hashlib.sha256(policy.canonicalize_body(body)).digest())
        with self._lock:
            self._hashes[key] = value
            while len(self._hashes) > self.size:
                self._hashes.popitem(last=False)
        return value


def arc_seal(message: bytes, request: SigningRequest, srv_id: str,
             authentication_results: str | None, now: int, linesep: bytes = b"\r\n") -> bytes:
    """The ARC set (``ARC-Seal``, ``ARC-Message-Signature``, ``ARC-Authentication-Results``) that
    ``srv_id`` adds to ``message`` with the key of ``request``."""
    if request.algorithm != RSA:
        # dkimpy seals with rsa-sha256 only, and RFC 8617 defines no other algorithm.
        raise SigningError(f"ARC sealing with {request.describe()}: ARC needs an RSA key")
    try:
        source = _with_results(message, srv_id, authentication_results, linesep)
        sealer = _ARC(source, signature_algorithm=RSA.encode(), linesep=linesep)
        sealer.rsa = request.key.rsa
        headers = sealer.sign(request.selector.encode(), request.domain.encode(), request.key.secret,
                              srv_id.encode(), include_headers=_headers(sealer, request), timestamp=now)
    except Exception as e:  # any failure must stop the message, never let it go unsealed
        raise SigningError(f"ARC sealing with {request.describe()} failed: {e}") from e
    if not headers:
        # dkimpy ends the chain when the message carries ARC sets but the results name no
        # arc= verdict on them: sealing without knowing the chain's state would be a false claim.
        raise SigningError(
            f"ARC sealing with {request.describe()}: the message carries an ARC chain but the "
            f"Authentication-Results of {srv_id} give no arc= result for it (verify inbound mail)"
        )
    return b"".join(headers)


def _with_results(message: bytes, srv_id: str, results: str | None, linesep: bytes) -> bytes:
    """``message`` with an ``Authentication-Results`` header of ``srv_id`` to seal: the one it
    has, else ``results``, else ``none`` (RFC 8601 §2.2: no method was applied)."""
    if results is not None and results.split(";", 1)[0].strip() != srv_id:
        raise SigningError(f"ARC: the Authentication-Results {results!r} are not {srv_id}'s")
    if any(_results_of(value, srv_id) for name, value in dkim.rfc822_parse(message)[0]
           if name == AUTHENTICATION_RESULTS):
        return message
    value = results.encode() if results is not None else srv_id.encode() + b"; none"
    return AUTHENTICATION_RESULTS + b": " + value + linesep + message


def _results_of(value: bytes, srv_id: str) -> bool:
    return value.split(b";", 1)[0].strip() == srv_id.encode()


def _headers(signer: dkim.DomainSigner, request: SigningRequest) -> list[bytes]:
    if request.headers is not None:
        return [h.encode() for h in request.headers]
    chosen = [h.lower() for h in signer.default_sign_headers()]
    return chosen + [h.encode() for h in request.extra_headers if h.encode() not in chosen]
