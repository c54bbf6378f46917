"""C plugins: loading beside Python plugins, the header, and the MQ_* functions through the
plugin runner (the hook contract over real SMTP is in test_plugins_e2e, for both languages)."""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted

from mqtwisted import api, testing
from mqtwisted.pluginloader import PluginError, load_plugins
from tests.conftest import in_thread, send_mail
from tests.test_plugins_support import C_MISSING, build_c_plugin, c_plugin, write_plugins

pytestmark = pytest.mark.skipif(C_MISSING is not None, reason=str(C_MISSING))


def test_header_declares_this_api_version_and_the_command_prints_its_directory():
    out = subprocess.run(
        [sys.executable, "-m", "mqtwisted.cli", "plugin-header"], capture_output=True, text=True, check=True
    ).stdout.strip()
    header = (Path(out) / "mqtwisted.h").read_text()
    assert f"#define MQ_API_VERSION {api.MQ_API_VERSION}\n" in header
    assert "void MQ_setResponse(MQ_Connection *connection, int code, const char *text, const char *enhanced);" in header


def test_c_and_python_plugins_load_in_one_alphabetical_order(tmp_path):
    d = write_plugins(tmp_path / "p", {"a.py": "", "c.py": ""})
    c_plugin(d, "b", "MQ_EXPORT bool mq_smtp_in_rcptto(MQ_Context *x, MQ_Connection *c, MQ_Address *a) { return false; }")
    c_plugin(d, "_off", "")  # disabled like a Python plugin
    plugins = load_plugins(str(d))
    assert [p.name for p in plugins] == ["a", "b", "c"]
    assert plugins[1].path == str(d / "b.so")
    assert plugins[1].hook("mq_smtp_in_rcptto") is not None and plugins[1].hook("mq_smtp_in_data") is None


def test_wrong_version_stops_loading_with_the_file_named(tmp_path):
    c_plugin(tmp_path / "p", "old", "", version="999")
    with pytest.raises(PluginError) as e:
        load_plugins(str(tmp_path / "p"))
    message = str(e.value)
    assert str(tmp_path / "p" / "old.so") in message and "999" in message
    assert f"implements version {api.MQ_API_VERSION}" in message


def test_missing_version_and_unsupported_symbol_are_named(tmp_path):
    d = tmp_path / "p"
    c_plugin(d, "bare", "", version="MQ_API_VERSION")
    (d / "bare.c").write_text((d / "bare.c").read_text().replace("mq_version", "mq_other"))
    build_c_plugin(d / "bare.c", d / "bare.so")
    with pytest.raises(PluginError, match="'bare'.*mq_version"):
        load_plugins(str(d))
    (d / "bare.so").unlink()
    c_plugin(d, "evloop", "struct ev_loop *MQ_ev(MQ_Context *);\nvoid *use(MQ_Context *c) { return MQ_ev(c); }")
    with pytest.raises(PluginError) as e:
        load_plugins(str(d))
    assert "evloop.so" in str(e.value) and "MQ_ev" in str(e.value) and "libev" in str(e.value)


def test_without_a_compiler_python_plugins_load_and_a_c_plugin_is_refused_by_name(tmp_path):
    python_only = write_plugins(tmp_path / "py", {"a.py": ""})
    with_c = tmp_path / "c"
    c_plugin(with_c, "native", "")
    code = (
        "import sys; from mqtwisted.pluginloader import PluginError, load_plugins\n"
        f"assert [p.name for p in load_plugins({str(python_only)!r})] == ['a']\n"
        f"try: load_plugins({str(with_c)!r})\n"
        "except PluginError as e: print(e)\n"
    )
    env = {**os.environ, "CC": "no-such-cc"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert str(with_c / "native.so") in out.stdout and "C compiler" in out.stdout and "'no-such-cc'" in out.stdout


def test_python_plugins_alone_load_nothing_of_the_c_side(tmp_path):
    d = write_plugins(tmp_path / "p", {"a.py": ""})
    code = (
        "import sys; from mqtwisted.pluginloader import load_plugins; "
        f"load_plugins({str(d)!r}); "
        "assert not any(m.startswith(('mqtwisted.cplugins', 'cffi')) for m in sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- MQ_* through the plugin runner -----------------------------------------------------------------


@pytest.fixture
def runners():
    started = []

    def start(directory: Path, threads: int = 1, timeout: float = 5.0) -> testing.HookRunner:
        runner = testing.hook_runner(str(directory), threads=threads, timeout=timeout)
        started.append(runner)
        return runner

    yield start
    for r in started:
        pytest_twisted.blockon(r.stop())


def lines(logged: list[dict], plugin: str) -> list[str]:
    """What ``plugin`` logged with MQ_log, in order."""
    return [e["text"] for e in logged if e.get("plugin") == plugin and "text" in e]


MESSAGE = """
MQ_EXPORT bool mq_smtp_in_message(MQ_Context *ctx, MQ_Connection *conn, MQ_Message *m)
{
    char line[1024];
    MQ_Envelope *envelope = MQ_envelope(m);
    const char *sender = envelope != NULL ? MQ_email(envelope) : "no envelope";
    snprintf(line, sizeof line, "%s %s %d %s", sender != NULL ? sender : "NULL", MQ_recipient(m),
             MQ_local(m), MQ_mime(m));
    MQ_log(MQ_INFO, line);
    struct fjson_object *json = MQ_json(m), *recipient;
    fjson_object_object_add(json, "from-c", fjson_object_new_int(42));
    fjson_object_object_del(json, "drop-me");
    MQ_setRecipient(m, "new@example.org", 15);
    fjson_object_object_get_ex(json, "recipient", &recipient);  /* the setter shows in the tree */
    MQ_log(MQ_INFO, fjson_object_get_string(recipient));
    MQ_setEnvelope(m, "env@example.org", 15);
    MQ_setMime(m, "Subject: c\\r\\n\\r\\nbody\\r\\n", 20);
    MQ_setLocal(m, true);
    return false;
}
"""


@pytest_twisted.inlineCallbacks
def test_message_functions_and_json_edits_reach_the_document(tmp_path, runners, logged):
    c_plugin(tmp_path / "p", "msg", MESSAGE)
    runner = runners(tmp_path / "p")
    document = {
        "envelope": "a@example.com", "recipient": "b@example.com", "mime": "Subject: s\r\n\r\nhi\r\n",
        "local": False, "drop-me": 1, "tags": ["x"],
    }  # fmt: skip
    message = testing.incoming_message(document)
    assert (yield runner.run("mq_smtp_in_message", testing.test_connection(), message)) is None
    assert lines(logged, "msg") == ["a@example.com b@example.com 0 Subject: s\r\n\r\nhi\r\n", "new@example.org"]
    assert api.MQ_recipient(message) == "new@example.org" and api.MQ_envelope(message) == "env@example.org"
    assert api.MQ_mime(message) == b"Subject: c\r\n\r\nbody\r\n" and api.MQ_local(message)
    assert document["from-c"] == 42 and "drop-me" not in document and document["tags"] == ["x"]

    # on an outgoing message the setters change what is sent, not the JSON
    outgoing = testing.outgoing_message({"envelope": "", "recipient": "b@example.com", "mime": "M\r\n"})
    assert (yield runner.run("mq_smtp_in_message", testing.test_connection(), outgoing)) is None
    assert lines(logged, "msg")[2].startswith("NULL b@example.com 0 M")  # the null sender: NULL
    assert outgoing.wire_recipient == "new@example.org" and outgoing.document["recipient"] == "b@example.com"
    assert outgoing.wire_mime == b"Subject: c\r\n\r\nbody\r\n" and outgoing.document["mime"] == "M\r\n"


LATER = """
static void later(void *data)
{
    void **args = data;
    struct fjson_object *json = MQ_json(args[1]);   /* the tree opened in the hook, still valid */
    fjson_object_object_add(json, "edited-in", fjson_object_new_string("timer"));
    MQ_continue(args[0]);
    free(args);
}

MQ_EXPORT bool mq_smtp_in_message(MQ_Context *ctx, MQ_Connection *conn, MQ_Message *m)
{
    fjson_object_object_add(MQ_json(m), "edited-in", fjson_object_new_string("hook"));
    void **args = malloc(2 * sizeof *args);
    args[0] = conn;
    args[1] = m;
    MQ_startTimer(ctx, 0.05f, later, args);
    return true;
}
"""


@pytest_twisted.inlineCallbacks
def test_json_edits_are_written_back_when_control_comes_back_from_a_timer(tmp_path, runners):
    c_plugin(tmp_path / "p", "later", LATER)
    write_plugins(tmp_path / "p", {"z_after.py": 'def mq_smtp_in_message(ctx, conn, m):\n    CALLS.append(mq.MQ_json(m).get("edited-in"))\n'})
    runner = runners(tmp_path / "p")
    message = testing.incoming_message({"recipient": "b@example.com"})
    assert (yield runner.run("mq_smtp_in_message", testing.test_connection(), message)) is None
    assert message.document["edited-in"] == "timer"
    after = next(p.module for p in runner.runner.plugins if p.name == "z_after")
    assert after.CALLS == ["timer"]  # the next plugin saw the edits


DATA = """
MQ_EXPORT bool mq_smtp_in_mailfrom(MQ_Context *ctx, MQ_Connection *conn, MQ_Address *address)
{
    char line[128];
    uintptr_t seen = (uintptr_t)MQ_connectionData(conn), here = (uintptr_t)MQ_contextData(ctx);
    snprintf(line, sizeof line, "%lu %lu", (unsigned long)seen, (unsigned long)here);
    MQ_log(MQ_INFO, line);
    MQ_setConnectionData(conn, (void *)(seen + 1));
    MQ_setContextData(ctx, (void *)(here + 10));
    return false;
}
"""


@pytest_twisted.inlineCallbacks
def test_connection_and_context_data_are_kept_per_plugin(tmp_path, runners, logged):
    c_plugin(tmp_path / "p", "a", DATA)
    c_plugin(tmp_path / "p", "b", DATA)
    runner = runners(tmp_path / "p")
    conn = testing.test_connection()
    for _ in range(2):
        yield runner.run("mq_smtp_in_mailfrom", conn, "s@example.com")
    assert lines(logged, "a") == lines(logged, "b") == ["0 0", "1 10"]
    assert conn.data == {"a": 2, "b": 2} and conn.context.data == {"a": 20, "b": 20}


LOG = """
MQ_EXPORT void mq_initialize(void)
{
    MQ_log(MQ_CRIT, "crit");
    MQ_log(MQ_WARN, "warn");
    MQ_log(MQ_INFO, "info");
    MQ_log(-1, "odd");
}
"""


def test_log_priorities_are_mailerqs(tmp_path, runners, logged):
    from twisted.logger import LogLevel

    c_plugin(tmp_path / "p", "talk", LOG)
    runners(tmp_path / "p")
    events = [e for e in logged if e.get("plugin") == "talk"]
    assert [(e["log_level"], e["text"]) for e in events] == [
        (LogLevel.critical, "crit"), (LogLevel.warn, "warn"), (LogLevel.info, "info"),
        (LogLevel.info, "(invalid priority) odd"),
    ]  # fmt: skip
    assert all(e["log_namespace"] == "mqtwisted.plugin.talk" for e in events)


TIMERS = """
static MQ_Timer *kept;

static void fired(void *data)
{
    MQ_log(MQ_INFO, data == NULL ? "stopped one fired" : "reset one fired");
    if (data != NULL) MQ_continue(data);
}

MQ_EXPORT bool mq_smtp_in_rcptto(MQ_Context *ctx, MQ_Connection *conn, MQ_Address *address)
{
    if (kept != NULL) {
        MQ_stopTimer(kept);   /* it fired: MailerQ calls that illegal, mqmta logs and ignores it */
        return false;
    }
    MQ_stopTimer(MQ_startTimer(ctx, 0.05f, fired, NULL));
    kept = MQ_startTimer(ctx, 0.05f, fired, conn);
    MQ_resetTimer(kept, 0.2f);
    return true;
}
"""


@pytest_twisted.inlineCallbacks
def test_timers_stop_reset_and_a_stale_handle_is_harmless(tmp_path, runners, logged):
    c_plugin(tmp_path / "p", "timers", TIMERS)
    runner = runners(tmp_path / "p")
    conn = testing.test_connection()
    start = time.monotonic()
    assert (yield runner.run("mq_smtp_in_rcptto", conn, "r@example.com")) is None
    assert time.monotonic() - start >= 0.19
    assert lines(logged, "timers") == ["reset one fired"]
    assert (yield runner.run("mq_smtp_in_rcptto", conn, "r@example.com")) is None
    assert lines(logged, "timers")[-1] == "MQ_stopTimer/MQ_resetTimer on a timer that fired or was stopped"


WATCH = """
static void readable(MQ_IOWatcher *watcher, int fd, int events, void *conn)
{
    char buffer[64], line[128];
    ssize_t n = read(fd, buffer, sizeof buffer);
    snprintf(line, sizeof line, "%d %.*s", events, (int)(n > 0 ? n : 0), buffer);
    MQ_log(MQ_INFO, line);
    MQ_ioUnwatch(watcher);
    MQ_continue(conn);
}

MQ_EXPORT bool mq_smtp_in_data(MQ_Context *ctx, MQ_Connection *conn, const char *mime, size_t size)
{
    MQ_ioWatch(ctx, atoi(getenv("MQ_TEST_FD")), MQ_READ, readable, conn);
    return true;
}
"""


@pytest_twisted.inlineCallbacks
def test_io_watch_hands_control_back_when_the_descriptor_is_readable(tmp_path, runners, logged, monkeypatch):
    from twisted.internet import reactor

    read_end, write_end = os.pipe()
    monkeypatch.setenv("MQ_TEST_FD", str(read_end))
    try:
        c_plugin(tmp_path / "p", "watch", WATCH)
        runner = runners(tmp_path / "p")
        reactor.callLater(0.05, os.write, write_end, b"ping")
        assert (yield runner.run("mq_smtp_in_data", testing.test_connection(), b"M\r\n")) is None
        assert lines(logged, "watch") == [f"{api.MQ_READ} ping"]
    finally:
        os.close(read_end)
        os.close(write_end)


HOLD = """
#include <time.h>
MQ_EXPORT bool mq_smtp_in_rcptto(MQ_Context *ctx, MQ_Connection *conn, MQ_Address *address)
{
    if (strcmp(MQ_email(address), "hold@example.com") == 0) return true;  /* never handed back */
    if (strcmp(MQ_email(address), "spin@example.com") == 0) {
        struct timespec start, now;   /* busy, not asleep: only a released GIL lets others run */
        clock_gettime(CLOCK_MONOTONIC, &start);
        do clock_gettime(CLOCK_MONOTONIC, &now);
        while ((now.tv_sec - start.tv_sec) * 1000000000L + (now.tv_nsec - start.tv_nsec) < 600000000L);
    }
    return false;
}
"""


@pytest_twisted.inlineCallbacks
def test_held_and_busy_c_hooks_time_out_and_others_go_on(tmp_path, runners):
    c_plugin(tmp_path / "p", "hold", HOLD)
    runner = runners(tmp_path / "p", threads=2, timeout=0.3)
    reply = yield runner.run("mq_smtp_in_rcptto", testing.test_connection(), "hold@example.com")
    assert (reply.code, reply.enhanced) == (451, "4.4.7")
    spinning, other = testing.test_connection(), testing.test_connection()
    runner.runner.context_for(spinning)
    runner.runner.context_for(other)
    busy = runner.run("mq_smtp_in_rcptto", spinning, "spin@example.com")
    start = time.monotonic()
    # the C hook spins in one context thread without the GIL: the other context and the reactor go on
    assert (yield runner.run("mq_smtp_in_rcptto", other, "ok@example.com")) is None
    assert time.monotonic() - start < 0.3
    reply = yield busy
    assert (reply.code, reply.enhanced) == (451, "4.4.7")


# -- the examples in plugins/, in a whole MTA ---------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "plugins"
MSG = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"


@pytest.fixture
def mta_with(tmp_path):
    running = []

    def start(**examples: str):  # noqa: ANN202
        directory = tmp_path / "plugins"
        for stem, source in examples.items():
            build_c_plugin(EXAMPLES / source, directory / f"{stem}.so")
        d = testing.start_mta(str(tmp_path / "data"), plugin_directory=str(directory), threads="2")
        d.addCallback(lambda m: (running.append(m), m)[1])
        return d

    yield start
    for m in running:
        pytest_twisted.blockon(m.stop())


@pytest_twisted.inlineCallbacks
def test_blockdomain_example_refuses_only_blocked_domains(mta_with, monkeypatch, logged):
    monkeypatch.setenv("MQ_BLOCKED_DOMAINS", "spam.example,Junk.Example")
    mta = yield mta_with(blockdomain="blockdomain.c")
    rcpts = ["b@example.com", "x@junk.example", "y@spam.example"]
    refused = yield in_thread(send_mail, mta.port, msg=MSG, rcpts=rcpts)
    assert refused == {
        r: (550, b"5.7.1 Recipient's domain is blocked here") for r in ["x@junk.example", "y@spam.example"]
    }
    assert [d["recipient"] for d in (yield mta.documents())] == ["b@example.com"]
    assert lines(logged, "blockdomain") == [
        "refused x@junk.example: its domain is blocked", "refused y@spam.example: its domain is blocked",
    ]  # fmt: skip


@pytest_twisted.inlineCallbacks
def test_tarpit_example_holds_each_recipient_from_a_timer(mta_with, monkeypatch):
    monkeypatch.setenv("MQ_TARPIT_SECONDS", "0.1")
    mta = yield mta_with(tarpit="tarpit.c")
    start = time.monotonic()
    refused = yield in_thread(send_mail, mta.port, msg=MSG, rcpts=["b@example.com", "c@example.com"])
    assert refused == {} and time.monotonic() - start >= 0.3  # 0.1 s, then 0.2 s
    assert len((yield mta.documents())) == 2


@pytest_twisted.inlineCallbacks
def test_send_and_file_descriptor_on_the_real_socket(tmp_path, monkeypatch):
    c_plugin(
        tmp_path / "p",
        "greet",
        """
        #include <arpa/inet.h>
        #include <sys/socket.h>
        MQ_EXPORT bool mq_smtp_in_connect(MQ_Context *ctx, MQ_Connection *conn)
        {
            struct sockaddr_in peer;
            socklen_t size = sizeof peer;
            char line[128];
            getpeername(MQ_fileDescriptor(conn), (struct sockaddr *)&peer, &size);
            int n = snprintf(line, sizeof line, "220-your port is %d\\r\\n", ntohs(peer.sin_port));
            MQ_send(conn, line, n);
            return false;
        }
        """,
    )
    mta = yield testing.start_mta(str(tmp_path / "data"), plugin_directory=str(tmp_path / "p"))
    try:

        def greeting() -> tuple[bytes, int]:
            with smtplib.SMTP(timeout=10) as s:
                code, text = s.connect("127.0.0.1", mta.port)
                assert code == 220
                return text, s.sock.getsockname()[1]

        welcome, port = yield in_thread(greeting)
        assert welcome.splitlines()[0] == f"your port is {port}".encode()
    finally:
        yield mta.stop()


def test_loading_a_path_again_loads_it_afresh(tmp_path):
    # A reload (SIGHUP) must get a changed file's code and fresh globals, not the library
    # dlopen already has under that name.
    d = tmp_path / "p"
    c_plugin(d, "once", "", version="calls++ == 0 ? MQ_API_VERSION : 999", prelude="static int calls;\n")
    first = load_plugins(str(d))[0]
    assert first.hook("mq_smtp_in_data") is None
    again = load_plugins(str(d))[0]  # the same file: its own statics again, so mq_version passes
    assert again.module is not first.module
    replaced = c_plugin(tmp_path / "new", "once", "MQ_EXPORT bool mq_smtp_in_data(MQ_Context *x, MQ_Connection *c, const char *m, size_t n) { return false; }")
    os.replace(replaced, d / "once.so")
    assert load_plugins(str(d))[0].hook("mq_smtp_in_data") is not None
