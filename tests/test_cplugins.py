"""C plugins: loading beside Python plugins, the header, and the MQ_* functions through the
plugin runner (the hook contract over real SMTP is in test_plugins_e2e, for both languages)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mqtwisted import api
from mqtwisted.pluginloader import PluginError, load_plugins
from tests.test_plugins_support import C_MISSING, c_plugin, write_plugins

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
    from tests.test_plugins_support import build_c_plugin

    build_c_plugin(d / "bare.c", d / "bare.so")
    with pytest.raises(PluginError, match="'bare'.*mq_version"):
        load_plugins(str(d))
    (d / "bare.so").unlink()
    c_plugin(d, "evloop", "struct ev_loop *MQ_ev(MQ_Context *);\nvoid *use(MQ_Context *c) { return MQ_ev(c); }")
    with pytest.raises(PluginError) as e:
        load_plugins(str(d))
    assert "evloop.so" in str(e.value) and "MQ_ev" in str(e.value) and "libev" in str(e.value)


def test_python_plugins_alone_load_nothing_of_the_c_side(tmp_path):
    d = write_plugins(tmp_path / "p", {"a.py": ""})
    code = (
        "import sys; from mqtwisted.pluginloader import load_plugins; "
        f"load_plugins({str(d)!r}); "
        "assert not any(m.startswith(('mqtwisted.cplugins', 'cffi')) for m in sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
