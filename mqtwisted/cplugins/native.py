"""The native side: one cffi FFI (ABI mode) declaring the hooks, the shim's table and the few
libfastjson functions mqmta calls; building and loading the shim that exports ``MQ_*``.

The shim is C source shipped with the package (``shim.c``).  It is compiled with the system's C
compiler the first time a process loads a C plugin, into a private temporary directory, and loaded
with ``RTLD_GLOBAL`` so that every plugin loaded afterwards finds ``MQ_*`` there.  Nothing here is
imported (and no compiler is needed) unless a ``*.so`` plugin is present.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from importlib import resources
from typing import Any

import cffi

HOOK_TYPES = {
    "mq_version": "int(void)",
    "mq_initialize": "void(void)",
    "mq_cleanup": "void(void)",
    "mq_context_initialize": "void(MQ_Context *)",
    "mq_context_cleanup": "void(MQ_Context *)",
    "mq_smtp_in_connect": "bool(MQ_Context *, MQ_Connection *)",
    "mq_smtp_in_secure": "bool(MQ_Context *, MQ_Connection *)",
    "mq_smtp_in_authenticate": (
        "bool(MQ_Context *, MQ_Connection *, const char *, size_t, const char *, size_t)"
    ),
    "mq_smtp_in_mailfrom": "bool(MQ_Context *, MQ_Connection *, MQ_Address *)",
    "mq_smtp_in_rcptto": "bool(MQ_Context *, MQ_Connection *, MQ_Address *)",
    "mq_smtp_in_data": "bool(MQ_Context *, MQ_Connection *, const char *, size_t)",
    "mq_smtp_in_message": "bool(MQ_Context *, MQ_Connection *, MQ_Message *)",
    "mq_smtp_in_close": "bool(MQ_Context *, MQ_Connection *)",
    "mq_smtp_out_data": "bool(MQ_Context *, MQ_Connection *, MQ_Message *)",
    "mq_smtp_out_sent": "bool(MQ_Context *, MQ_Connection *, MQ_Message *)",
}

#: The table of shim.c, field for field.
SHIM_TABLE = """
struct mq_shim {
    void (*control)(uintptr_t, int);
    int (*file_descriptor)(uintptr_t);
    size_t (*send)(uintptr_t, const void *, size_t);
    bool (*flag)(uintptr_t, int);
    void (*set_flag)(uintptr_t, int, bool);
    void *(*data)(uintptr_t, int);
    void (*set_data)(uintptr_t, int, void *);
    void (*set_response)(uintptr_t, int, const char *, const char *);
    uintptr_t (*start_timer)(uintptr_t, float, void (*)(void *), void *);
    void (*timer)(uintptr_t, int, float);
    uintptr_t (*io_watch)(uintptr_t, int, int, void (*)(MQ_IOWatcher *, int, int, void *), void *);
    void (*io_unwatch)(uintptr_t);
    struct fjson_object *(*json)(uintptr_t);
    uintptr_t (*envelope)(uintptr_t);
    const char *(*string)(uintptr_t, int);
    void (*set_string)(uintptr_t, int, const char *, size_t);
    void (*log)(int, const char *);
};
void mq_shim_install(const struct mq_shim *);
"""

FJSON = """
struct fjson_object *fjson_tokener_parse(const char *);
const char *fjson_object_to_json_string_ext(struct fjson_object *, int);
int fjson_object_put(struct fjson_object *);
void fjson_object_object_add(struct fjson_object *, const char *, struct fjson_object *);
"""

ffi = cffi.FFI()
ffi.cdef(
    """
typedef struct MQ_Context MQ_Context;
typedef struct MQ_Connection MQ_Connection;
typedef struct MQ_Address MQ_Address;
typedef struct MQ_Message MQ_Message;
typedef struct MQ_Timer MQ_Timer;
typedef struct MQ_IOWatcher MQ_IOWatcher;
struct fjson_object;
"""
    + "".join(f"{t.split('(', 1)[0]} {n}({t.split('(', 1)[1]};\n" for n, t in HOOK_TYPES.items())
    + SHIM_TABLE
    + FJSON
)


class NativeError(Exception):
    """The shim could not be built or loaded, or a library is missing."""


def header_dir() -> str:
    """The directory holding ``mqtwisted.h`` (for ``cc -I``)."""
    return str(resources.files("mqtwisted") / "include")


def compiler() -> list[str]:
    """The C compiler command: ``$CC``, else ``cc``."""
    return shlex.split(os.environ.get("CC", "")) or ["cc"]


_lock = threading.Lock()
_shim: Any = None


def shim() -> Any:
    """The loaded shim library (built on first use in this process)."""
    global _shim
    with _lock:
        if _shim is None:
            _shim = _build_and_load()
        return _shim


def _build_and_load() -> Any:
    cc = compiler()
    if shutil.which(cc[0]) is None:
        raise NativeError(
            f"C plugins need a C compiler to build mqmta's MQ_* library; {cc[0]!r} was not found "
            "(install gcc, or set CC)"
        )
    source = resources.files("mqtwisted.cplugins") / "shim.c"
    workdir = tempfile.mkdtemp(prefix="mqmta-shim-")
    try:
        out = os.path.join(workdir, "libmqmta_shim.so")
        with resources.as_file(source) as src:
            cmd = [*cc, "-shared", "-fPIC", "-O2", "-I", header_dir(), "-o", out, str(src)]
            done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise NativeError(f"building the MQ_* library failed: {' '.join(cmd)}\n{done.stderr}")
        # The mapping outlives the file: the directory can go at once.
        return ffi.dlopen(out, ffi.RTLD_NOW | ffi.RTLD_GLOBAL)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


_fjson: Any = None


def fjson() -> Any:
    """libfastjson (MQ_json), loaded on first use; the plugin that asked for it links it too."""
    global _fjson
    with _lock:
        if _fjson is None:
            for name in ("libfastjson.so.4", "libfastjson.so"):
                try:
                    _fjson = ffi.dlopen(name, ffi.RTLD_NOW | ffi.RTLD_GLOBAL)
                    break
                except OSError:
                    continue
            else:
                raise NativeError("MQ_json needs libfastjson (libfastjson.so.4), which is not installed")
        return _fjson
