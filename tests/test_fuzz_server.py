"""Stateful property-based fuzzing of the SMTP server, in memory.

A hypothesis state machine plays a hostile client against one session of our server (through
``tests.smtpdialog.ours``): valid, malformed and binary command lines, DATA bodies with dots,
bare CR/LF and over-long lines, STARTTLS (the handshake is simulated with
``handshakeCompleted()``) and AUTH PLAIN/LOGIN exchanges, all pipelined and cut into packets at
random places.  After every packet an independent *walker* re-reads the whole byte stream the
client sent and lines it up with the replies received, and checks:

* the server never raised out of ``dataReceived`` and logged no failure (an internal error is
  answered 451 and logged: that would hide a bug, so it fails the test too);
* every complete command line got exactly one reply, in order, and nothing else did: DATA body
  lines, AUTH continuation lines (they get their own 334/235/5xx), and whatever was pipelined
  behind STARTTLS (discarded, no reply);
* an accepted message (250 at the end of DATA) was stored exactly as sent, dot-unstuffed, and a
  refused one was not stored; bare CR/LF, over-long lines and oversize bodies are refused;
* nothing is relayed that the relay rules refuse: a non-local recipient from an untrusted peer that
  has not authenticated is never answered 250 nor handed to the queue.

The walker decides *how* to read the stream (command line, body, AUTH continuation) from the
replies themselves (354 starts a body, 334 continues AUTH, 220 to STARTTLS discards the rest of
the packet), and checks each reply is one its line may get; so the model stays small while the
alignment it checks is exact.
"""

from __future__ import annotations

import base64
import random
import re

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from twisted.internet import defer
from twisted.logger import globalLogPublisher

from mqtwisted import hooks
from mqtwisted.auth import load_checker
from mqtwisted.connection import Reply
from mqtwisted.smtp.config import AUTH_LINE, COMMAND_LINE, PATH_LINE
from mqtwisted.smtp.policy import RelayPolicy
from tests.smtpdialog import ours

MAX_LINE = 1000
MAX_SIZE = 4000
TRUSTED_PEER = "127.0.0.1"
UNTRUSTED_PEER = "203.0.113.9"
LOCAL = "local.test"


class _Ctx:
    """A TLS context stand-in: the in-memory transport records startTLS and never calls it."""


class RandomHooks:
    """A HookRunner that answers at once with a verdict chosen by a seeded RNG: pass, refuse
    (4xx/5xx), or the 451 a raising plugin gets."""

    HOOKS = {hooks.IN_MAILFROM, hooks.IN_RCPTTO, hooks.IN_DATA, hooks.IN_AUTHENTICATE}

    def __init__(self, seed: int, delayed: bool = False) -> None:
        self.rng = random.Random(seed)
        #: delayed: verdicts wait in ``pending`` until the test releases them, while the client
        #: goes on sending (the server must buffer, keep order, and discard at STARTTLS right)
        self.delayed = delayed
        self.pending: list[tuple[defer.Deferred, Reply | None]] = []

    def connection_closed(self, conn: object) -> None:
        pass

    def defines(self, hook: str) -> bool:
        return hook in self.HOOKS

    def release(self, n: int) -> None:
        for _ in range(n):
            if not self.pending:
                return
            d, verdict = self.pending.pop(0)
            d.callback(verdict)

    def run(self, hook: str, conn, *args) -> defer.Deferred:
        verdict = self._verdict()
        if not self.delayed:
            return defer.succeed(verdict)
        d: defer.Deferred = defer.Deferred()
        self.pending.append((d, verdict))
        return d

    def _verdict(self) -> Reply | None:
        roll = self.rng.random()
        if roll < 0.7:
            return None
        if roll < 0.8:
            return Reply(450, "try later", "4.7.1")
        if roll < 0.9:
            return Reply(550, "no", "5.7.1")
        # What PluginRunner answers for a plugin that raised (it never errbacks).
        return Reply(451, "Local error in processing", "4.3.0")


# -- what the client sends -------------------------------------------------------------------------

def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


hosts = st.sampled_from(["c.test", "[127.0.0.1]", "x", "a b", "", "é.test", "h" * 300])
local_parts = st.sampled_from(["a", "b.c", '"q u"', "", "x" * 70, "ü", "a..b"])
domains = st.sampled_from([LOCAL, "example.org", "EXAMPLE.org", "LOCAL.TEST", "[10.0.0.1]", "", "local.test."])
addresses = st.builds(lambda lp, d: f"{lp}@{d}" if d else lp, local_parts, domains)
mail_params = st.lists(
    st.sampled_from(["SIZE=100", "SIZE=99999999", "SIZE=x", "BODY=8BITMIME", "BODY=BAD", "BODY=BINARYMIME", "SMTPUTF8",
                     "RET=HDRS", "ENVID=a+2Bb", "FOO=1", "AUTH=<>", "=", "SIZE="]),
    max_size=3,
)
rcpt_params = st.lists(
    st.sampled_from(["NOTIFY=SUCCESS,FAILURE", "NOTIFY=NEVER,DELAY", "ORCPT=rfc822;b+40x.org", "ORCPT=x", "X=1"]),
    max_size=2,
)
verbs_case = st.sampled_from([str.upper, str.lower, str.title])


LONG_LINES = [
    b"NOOP " + b"x" * 600 + b"\r\n",
    b"MAIL FROM:<" + b"a" * 1100 + b"@x.org>\r\n",
    b"X" * (AUTH_LINE + 100) + b"\r\n",
    b"A" * AUTH_LINE + b"\r\n",
]


def _line(text: str | bytes) -> bytes:
    return (text.encode("utf-8") if isinstance(text, str) else text) + b"\r\n"


commands = st.one_of(
    st.builds(lambda v, h: _line(v("EHLO") + " " + h), verbs_case, hosts),
    st.builds(lambda h: _line("HELO " + h), hosts),
    st.builds(lambda v, a, p: _line(" ".join([v("MAIL") + " FROM:<" + a + ">", *p])), verbs_case, addresses, mail_params),
    st.just(_line("MAIL FROM:<>")),
    st.builds(lambda v, a, p: _line(" ".join([v("RCPT") + " TO:<" + a + ">", *p])), verbs_case, addresses, rcpt_params),
    st.builds(lambda a: _line("RCPT TO:" + a), addresses),
    st.sampled_from([_line(c) for c in ["DATA", "DATA x", "RSET", "NOOP", "NOOP hi", "HELP", "VRFY x", "VRFY",
                                        "STARTTLS", "STARTTLS now", "AUTH", "AUTH CRAM-MD5", "BDAT 10 LAST",
                                        "BDAT 0 LAST", "BDAT 3", "BDAT x", "BDAT 5 LAST now",
                                        "EXPN x", "XYZZY", "", " ", "MAIL", "RCPT", "MAIL FROM", "RCPT TO:"]]),
    st.sampled_from([
        b"AUTH PLAIN " + b64("\0u\0p") + b"\r\n",
        b"AUTH PLAIN " + b64("\0u\0wrong") + b"\r\n",
        b"AUTH PLAIN !!!\r\n",
        b"AUTH PLAIN\r\n",
        b"AUTH LOGIN\r\n",
        b"AUTH LOGIN " + b64("u") + b"\r\n",
        b64("u") + b"\r\n",
        b64("p") + b"\r\n",
        b64("\0u\0p") + b"\r\n",
        b"*\r\n",
        b"=\r\n",
    ]),
    # binary and malformed lines
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"") + b"\r\n"),
    st.binary(max_size=20).map(lambda b: b + b"\n"),  # bare-LF-terminated command
    st.sampled_from([b"\xc3\xa9HLO x\r\n", b"\xff\xfe\r\n", b"NOOP\x00x\r\n", b"NO\rOP\r\n", b"\x1b[A\r\n"]),
    st.sampled_from(LONG_LINES),
)

body_pieces = st.sampled_from([
    b"Subject: t\r\n", b"\r\n", b"hello\r\n", b".\r\n", b"..\r\n", b".leading dot\r\n", b"x.\r\n",
    b"bare\nlf\r\n", b"bare\rcr\r\n", b"\n.\r\n", b"\r\n.\n", b"RSET\r\n", b"MAIL FROM:<e@example.org>\r\n",
    b"y" * 998 + b"\r\n", b"z" * 999 + b"\r\n", b"\xff\x00binary\r\n", b"w" * 1500, b"no end",
])
bodies = st.lists(body_pieces, max_size=8).map(b"".join)


HOOK = {450, 451, 550}  # what RandomHooks may answer for a hooked command
#: Every reply a command may get, by verb ("" = not a command at all).  421 (too many errors)
#: is handled before this table.
ALLOWED: dict[str, set[int]] = {
    "": {500},
    "NOOP": {250}, "HELP": {214}, "RSET": {250}, "QUIT": {221},
    "VRFY": {252, 501},
    "EHLO": {250, 501}, "HELO": {250, 501},
    "STARTTLS": {220, 454, 503, 501},
    "AUTH": {334, 235, 535, 538, 502, 503, 504, 501} | HOOK,
    "MAIL": {250, 501, 503, 552, 553, 555} | HOOK,
    "RCPT": {250, 501, 503, 452, 553, 554, 555} | HOOK,
    "DATA": {354, 503, 501},
    "BDAT": {250, 503, 501, 552, 550, 554, 451} | HOOK, "EXPN": {502, 503}, "ETRN": {502, 503},
    "TURN": {502, 503},
}


def _verb(line: bytes) -> str:
    """The verb the server must see in ``line``; "" when the line is no command (too long for
    its kind, not UTF-8, control characters, not a verb of letters) or an unknown one."""
    head = line[:5].upper()
    limit = AUTH_LINE if head.startswith(b"AUTH") else PATH_LINE if head in (b"MAIL ", b"RCPT ") else COMMAND_LINE
    if len(line) + 2 > limit:
        return ""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    if any(c < " " and c != "\t" for c in text) or "\x7f" in text:
        return ""
    verb = text.partition(" ")[0]
    if not re.fullmatch(r"[A-Za-z]{1,16}", verb):
        return ""
    return verb.upper() if verb.upper() in ALLOWED else ""


class _Waiting(Exception):
    """The replies ran out where the server may still be deciding (a hook verdict is pending)."""


def walk(stream: bytes, tls_cuts: list[int], replies: list[tuple[int, list[str]]], peer_trusted: bool,
         complete: bool = True):
    """Line the client's bytes up with the server's replies; return what was learnt.

    ``tls_cuts``: for each STARTTLS accepted, how much of the stream the server had received when
    it did (what it had buffered beyond the STARTTLS line is discarded, unanswered).  With
    ``complete`` False (a hook verdict pending) the replies may stop early.

    Raises AssertionError when a complete line got no reply, a reply has no line, or a reply is
    not one its line may get.
    """
    try:
        return _walk(stream, tls_cuts, replies, peer_trusted, complete)
    except _Waiting as partial:
        return partial.args[0], False


class Chunked(bytes):
    """A message sent with BDAT: its octets as sent (no end marker, no dot-stuffing)."""

    binary = False


_BDAT = re.compile(rb"BDAT ([0-9]{1,20})(?: +(LAST))? *", re.IGNORECASE)


def _walk(stream, tls_cuts, replies, peer_trusted, complete):
    pos, r = 0, 0
    mode = "command"  # or "auth" (continuation lines) or "body"
    authenticated = False
    closed = False
    bodies_seen: list[tuple[bytes, int]] = []
    chunks: list[bytes] = []  # the BDAT chunks of the open transaction
    binary = False  # its MAIL said BODY=BINARYMIME

    tls_cuts = list(tls_cuts)

    def take(what: bytes) -> tuple[int, list[str]]:
        nonlocal r
        if r >= len(replies) and not complete:
            raise _Waiting(bodies_seen)
        assert r < len(replies), f"no reply to {what[:60]!r} (line {pos})"
        reply = replies[r]
        r += 1
        return reply

    while pos < len(stream) and not closed:
        if mode == "body":
            prefixed = b"\r\n" + stream[pos:]
            i = prefixed.find(b"\r\n.\r\n")
            if i < 0:
                break  # the body goes on: no reply is due yet
            wire = stream[pos:pos + i]
            pos += i + 3
            code, _ = take(b"<end of data>")
            bodies_seen.append((wire, code))
            mode = "command"
            assert code in (250, 451, 450, 550, 552, 554, 421), f"end of data answered {code}"
            if code == 421:
                closed = True
            continue
        end = stream.find(b"\n", pos)
        if end < 0:
            # Unfinished line: answered early only when already longer than any line may be.
            if len(stream) - pos > AUTH_LINE:
                code, _ = take(stream[pos:pos + 60])
                assert code in (500, 421), code
                closed = code == 421
            break
        line = stream[pos:end]
        line = line[:-1] if line.endswith(b"\r") else line
        pos = end + 1
        if mode == "command" and _verb(line) == "BDAT":
            m = _BDAT.fullmatch(line)
            if m is not None and len(stream) - pos < int(m.group(1)):
                break  # its chunk is still coming: no reply is due yet
        code, text = take(line)
        if code == 421:
            closed = True  # too many errors (or a timeout): nothing more is read
            break
        if mode == "auth":
            assert code in (334, 235, 501, 535, 500, 450, 550, 451), (line[:60], code)
            mode = "auth" if code == 334 else "command"
            authenticated = authenticated or code == 235
            continue
        verb = _verb(line)
        if verb == "BDAT":
            m = _BDAT.fullmatch(line)
            if m is None:
                assert code == 501, (line, code)
                closed = True  # the chunk's end is unknown: the session ends
                break
            size, last = int(m.group(1)), m.group(2) is not None
            chunk, pos = stream[pos:pos + size], pos + size
        assert code in ALLOWED.get(verb, {500}), f"{line[:60]!r} answered {code} {text}"
        if verb == "BDAT":
            if code == 250 and not last:
                chunks.append(chunk)
            elif code != 503 and code not in HOOK or last and code != 503:
                message = Chunked(b"".join(chunks) + chunk)
                message.binary = binary
                bodies_seen.append((message, code))
                chunks = []
            continue
        if verb in ("MAIL", "RSET", "EHLO", "HELO") and code == 250 or code == 220:
            chunks = []
            binary = verb == "MAIL" and b"BODY=BINARYMIME" in line.upper()
        if code == 354:
            mode = "body"
        elif code == 334:
            mode = "auth"
        elif code == 235:
            authenticated = True
        elif code == 220:
            pos = max(pos, tls_cuts.pop(0))  # RFC 3207 §4.2: what was pipelined behind it is gone
        elif code == 221:
            closed = True
        elif verb == "RCPT" and code == 250:
            m = re.search(rb"<([^<>]*)>", line)
            address = m.group(1) if m else line.partition(b":")[2].split()[0]
            domain = address.rpartition(b"@")[2].lower().rstrip(b".")
            if domain != LOCAL.encode():
                assert peer_trusted or authenticated, f"relayed to {address!r} for an untrusted peer"
    assert r == len(replies), f"{len(replies) - r} replies too many: {replies[r:r + 3]}"
    return bodies_seen, closed


def expected_outcome(wire: bytes, binary: bool = False) -> tuple[bytes, bool]:
    """The stored MIME for a DATA body as sent on the wire (or BDAT chunks as sent), and
    whether it must be refused."""
    mime = wire if isinstance(wire, Chunked) else (b"\r\n" + wire).replace(b"\r\n.", b"\r\n")[2:]
    if binary or getattr(wire, "binary", False):
        return mime, len(mime) > MAX_SIZE
    pairs = wire.count(b"\r\n")
    bare = wire.count(b"\n") != pairs or wire.count(b"\r") != pairs
    long_line = any(len(x) + 1 > MAX_LINE for x in wire.split(b"\n"))
    return mime, bare or long_line or b"\0" in wire or len(mime) > MAX_SIZE


class ServerFuzz(RuleBasedStateMachine):
    @initialize(
        trusted=st.booleans(),
        with_hooks=st.sampled_from(["none", "immediate", "delayed"]),
        implicit_tls=st.booleans(),
        seed=st.integers(0, 2**32 - 1),
    )
    def start(self, trusted: bool, with_hooks: str, implicit_tls: bool, seed: int) -> None:
        self.failures: list[dict] = []
        globalLogPublisher.addObserver(self._observe)
        self.peer_trusted = trusted
        self.hooks = RandomHooks(seed, delayed=with_hooks == "delayed") if with_hooks != "none" else None
        self.dialog, self.recorder = ours(
            peer=TRUSTED_PEER if trusted else UNTRUSTED_PEER,
            hooks=self.hooks,
            auth=load_checker("hardcoded://u:p"),
            tls=_Ctx(),
            relay=RelayPolicy(local_domains=frozenset({LOCAL})),
            max_line=MAX_LINE,
            max_size=MAX_SIZE,
            max_errors=30,
            max_recipients=5,
        )
        self.dialog._seen = 0  # re-read the greeting with everything else
        self.stream = b""
        self.tls_cuts: list[int] = []
        self.handshaken = False
        transport = self.dialog.transport
        start_tls = transport.startTLS

        def record_cut(ctx) -> None:
            self.tls_cuts.append(len(self.stream))  # everything received so far is discarded
            start_tls(ctx)

        transport.startTLS = record_cut
        if implicit_tls:
            # The SMTPS port: TLS before the first byte, so AUTH is offered at once.
            self.handshaken = True
            self.dialog.protocol.handshakeCompleted()

    def _observe(self, event: dict) -> None:
        if event.get("log_failure") is not None:
            self.failures.append(event)

    def teardown(self) -> None:
        globalLogPublisher.removeObserver(self._observe)

    def _send(self, data: bytes, cuts: list[int]) -> None:
        points = sorted({c % (len(data) + 1) for c in cuts} | {len(data)})
        start = 0
        for p in points:
            if p <= start:
                continue
            self.stream += data[start:p]
            self.dialog.send(data[start:p])  # must never raise
            start = p
            self._handshake()

    def _handshake(self) -> None:
        if getattr(self.dialog.transport, "tls_started", None) is not None and not self.handshaken:
            self.handshaken = True
            self.dialog.protocol.handshakeCompleted()

    @precondition(lambda self: not self.dialog.closed)
    @rule(cmds=st.lists(commands, min_size=1, max_size=6), cuts=st.lists(st.integers(0, 10**6), max_size=4))
    def pipeline(self, cmds: list[bytes], cuts: list[int]) -> None:
        self._send(b"".join(cmds), cuts)

    @precondition(lambda self: not self.dialog.closed)
    @rule(
        sender=st.sampled_from(["a@example.org", "", "bad"]),
        rcpts=st.lists(st.sampled_from(["u@local.test", "v@example.org", "w@LOCAL.TEST", "bad@"]), min_size=1, max_size=3),
        body=bodies,
        cuts=st.lists(st.integers(0, 10**6), max_size=6),
        ehlo=st.booleans(),
    )
    def transaction(self, sender, rcpts, body, cuts, ehlo) -> None:
        """A whole pipelined transaction: the likeliest way to reach DATA and store something."""
        data = b"EHLO c.test\r\n" if ehlo else b""
        data += _line(f"MAIL FROM:<{sender}>") + b"".join(_line(f"RCPT TO:<{r}>") for r in rcpts)
        data += b"DATA\r\n" + body + b"\r\n.\r\n"
        self._send(data, cuts)

    @precondition(lambda self: not self.dialog.closed)
    @rule(
        rcpts=st.lists(st.sampled_from(["u@local.test", "v@example.org", "bad@"]), min_size=1, max_size=2),
        body=bodies,
        splits=st.lists(st.integers(0, 10**4), max_size=4),
        binary=st.booleans(),
        cuts=st.lists(st.integers(0, 10**6), max_size=6),
    )
    def chunked(self, rcpts, body, splits, binary, cuts) -> None:
        """A whole pipelined transaction sent with BDAT chunks (binary or not), last one LAST."""
        data = _line("MAIL FROM:<a@example.org>" + (" BODY=BINARYMIME" if binary else ""))
        data += b"".join(_line(f"RCPT TO:<{r}>") for r in rcpts)
        points = sorted({p % (len(body) + 1) for p in splits})
        pieces = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
        for i, piece in enumerate(pieces):
            data += _line(f"BDAT {len(piece)}" + (" LAST" if i == len(pieces) - 1 else "")) + piece
        self._send(data, cuts)

    @precondition(lambda self: not self.dialog.closed)
    @rule(body=bodies, cuts=st.lists(st.integers(0, 10**6), max_size=6))
    def raw_body(self, body: bytes, cuts: list[int]) -> None:
        """Body bytes at any moment: commands if no DATA is open, a body if one is."""
        self._send(body, cuts)

    @precondition(lambda self: not self.dialog.closed)
    @rule(cuts=st.lists(st.integers(0, 10**6), max_size=3), behind=st.lists(commands, max_size=3))
    def starttls(self, cuts: list[int], behind: list[bytes]) -> None:
        self._send(b"EHLO c.test\r\nSTARTTLS\r\n" + b"".join(behind), cuts)

    @precondition(lambda self: not self.dialog.closed)
    @rule(
        mech=st.sampled_from(["plain", "login", "login-initial"]),
        good=st.booleans(),
        hostile=st.none() | st.sampled_from(LONG_LINES) | commands,
        then=st.lists(commands, max_size=3),
        cuts=st.lists(st.integers(0, 10**6), max_size=3),
    )
    def login(self, mech, good, hostile, then, cuts) -> None:
        """An AUTH exchange (meaningful only after STARTTLS), with anything behind it: continuation
        lines that are too long, garbage or commands are where AUTH and commands can get mixed up."""
        password = "p" if good else "nope"
        data = b"EHLO c.test\r\n"
        if mech == "plain":
            data += b"AUTH PLAIN\r\n" + b64(f"\0u\0{password}") + b"\r\n"
        elif mech == "login":
            data += b"AUTH LOGIN\r\n" + b64("u") + b"\r\n" + b64(password) + b"\r\n"
        else:
            data += b"AUTH LOGIN " + b64("u") + b"\r\n" + b64(password) + b"\r\n"
        if hostile is not None:
            # A continuation line replaced by anything at all (too long, binary, a command).
            data = data.rsplit(b"\r\n", 2)[0] + b"\r\n" + hostile
        self._send(data + b"".join(then), cuts)

    @precondition(lambda self: self.hooks is not None and bool(self.hooks.pending))
    @rule(n=st.integers(1, 3))
    def release(self, n: int) -> None:
        """Hook verdicts arrive (late, while more input waited in the buffer)."""
        self.hooks.release(n)
        self._handshake()

    @precondition(lambda self: self.dialog.closed)
    @rule(data=st.binary(min_size=1, max_size=50))
    def after_close(self, data: bytes) -> None:
        """Bytes after QUIT or a 421 are ignored, not answered (the walker stops at the close)."""
        before = len(self.dialog.transport.value())
        self.dialog.send(data + b"\r\n")
        assert len(self.dialog.transport.value()) == before

    @invariant()
    def replies_line_up(self) -> None:
        if not hasattr(self, "dialog"):
            return
        assert not self.failures, f"the server logged a failure: {self.failures[0].get('log_failure')}"
        self.dialog._seen = 0
        replies = self.dialog.replies()
        assert replies[0][0] == 220
        waiting = self.hooks is not None and bool(self.hooks.pending) and not self.dialog.closed
        bodies_seen, closed = walk(self.stream, self.tls_cuts, replies[1:], self.peer_trusted, not waiting)
        stored = [m for m in self.recorder.messages]
        accepted = [(wire, code) for wire, code in bodies_seen if code == 250]
        assert len(stored) == len(accepted), (len(stored), bodies_seen)
        for (wire, _code), (conn, envelope, mime) in zip(accepted, stored, strict=True):
            binary = (envelope.params.get("BODY") or "").upper() == "BINARYMIME"
            assert isinstance(wire, Chunked) or not binary, "BINARYMIME accepted with DATA"
            expected, refuse = expected_outcome(wire, binary)
            assert not refuse, f"accepted what must be refused: {wire[:200]!r}"
            assert mime == expected, (mime[:200], expected[:200])
            for rcpt in envelope.recipients:
                if not rcpt.local:
                    assert self.peer_trusted or conn.authenticated, f"queued a relay to {rcpt.address}"
        for wire, code in bodies_seen:
            if code != 250 and expected_outcome(wire)[1]:
                assert code in (550, 552, 421), (code, wire[:100])
        if closed:
            assert self.dialog.closed


ServerFuzz.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
TestServerFuzz = ServerFuzz.TestCase


# -- regressions the fuzz found, pinned as plain tests ----------------------------------------------


def test_overlong_auth_continuation_ends_the_exchange():
    """A continuation line too long for AUTH got 500, which ends AUTH for the client, but the
    server went on waiting for credentials and read the next command as one."""
    dialog, _ = ours(auth=load_checker("hardcoded://u:p"), auth_plaintext=True)
    dialog.send(b"EHLO c\r\nAUTH LOGIN\r\n" + b"A" * (AUTH_LINE + 10) + b"\r\nNOOP\r\n")
    assert dialog.codes() == [250, 334, 500, 250]
    dialog.send(b"AUTH PLAIN\r\n" + b"B" * AUTH_LINE + b"\r\nNOOP\r\n")
    assert dialog.codes() == [334, 500, 250]
