"""Loading plugin modules: a directory's ``*.py`` files, packages and ``*.so`` C plugins (made
into modules by :mod:`mqtwisted.cplugins`), in one alphabetical order, each under a name of its
own and checked for ``mq_version()``.  A plugin that cannot load
stops the MTA from starting (:class:`PluginError` says which file and why).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from collections.abc import Callable
from types import ModuleType
from typing import Any

import attrs
from twisted.logger import Logger

from mqtwisted import api
from mqtwisted import hooks as hook_names

log = Logger()


class PluginError(Exception):
    """A plugin could not be loaded; the MTA must not start."""


@attrs.define(eq=False)
class Plugin:
    name: str
    path: str
    module: ModuleType

    def hook(self, name: str) -> Callable[..., Any] | None:
        fn = getattr(self.module, name, None)
        return fn if callable(fn) else None


def _module_name(name: str) -> str:
    return "mqtwisted_plugin_" + "".join(c if c.isalnum() else "_" for c in name)


def load_plugin(path: str) -> Plugin:
    """Import one plugin (a ``*.py`` file, a package directory or a ``*.so``) and check its
    ``mq_version``."""
    base = os.path.basename(path.rstrip(os.sep))
    name = base[:-3] if base.endswith((".py", ".so")) else base
    modname = _module_name(name)
    if base.endswith(".so"):
        return check_plugin(Plugin(name, path, _load_shared_object(path, name, modname)))
    try:
        if os.path.isdir(path):
            spec = importlib.util.spec_from_file_location(
                modname, os.path.join(path, "__init__.py"), submodule_search_locations=[path]
            )
        else:
            spec = importlib.util.spec_from_file_location(modname, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        # In sys.modules before it runs: packages' relative imports and dataclasses need that.
        sys.modules[modname] = module
        spec.loader.exec_module(module)
    except BaseException as e:
        sys.modules.pop(modname, None)
        raise PluginError(
            f"plugin {name!r} ({path}) failed to import:\n{traceback.format_exc()}"
        ) from e
    return check_plugin(Plugin(name, path, module))


def _load_shared_object(path: str, name: str, modname: str) -> ModuleType:
    # Imported here: cffi and a C compiler are needed only where C plugins are.
    try:
        from mqtwisted.cplugins import NativeError, load_c_plugin
    except ImportError as e:
        raise PluginError(f"plugin {name!r} ({path}) is a C plugin, which needs cffi: {e}") from e
    try:
        return load_c_plugin(path, modname)
    except (NativeError, OSError) as e:
        raise PluginError(f"plugin {name!r} ({path}) failed to load: {e}") from e


def plugin_from_module(module: ModuleType, name: str | None = None) -> Plugin:
    """A plugin from an already imported module (a plugin author's own tests use this)."""
    name = name or module.__name__.rpartition(".")[2]
    return check_plugin(Plugin(name, getattr(module, "__file__", None) or name, module))


def check_plugin(plugin: Plugin) -> Plugin:
    """Raise :class:`PluginError` unless ``mq_version()`` returns ``MQ_API_VERSION``."""
    name, path = plugin.name, plugin.path
    version_fn = plugin.hook(hook_names.VERSION)
    if version_fn is None:
        raise PluginError(f"plugin {name!r} ({path}) defines no mq_version()")
    try:
        version = version_fn()
    except Exception as e:
        raise PluginError(
            f"plugin {name!r} ({path}): mq_version() raised:\n{traceback.format_exc()}"
        ) from e
    if version != api.MQ_API_VERSION:
        raise PluginError(
            f"plugin {name!r} ({path}) was written for plugin API version {version!r}, "
            f"but this MTA implements version {api.MQ_API_VERSION}"
        )
    return plugin


def plugin_paths(directory: str) -> list[str]:
    """The plugins in ``directory``, in alphabetical order of file name."""
    if not os.path.isdir(directory):
        raise PluginError(f"plugin directory {directory!r} does not exist")
    paths = []
    for entry in sorted(os.listdir(directory)):
        if entry.startswith((".", "_")):
            continue  # __pycache__, editor droppings, disabled plugins
        path = os.path.join(directory, entry)
        if entry.endswith((".py", ".so")) and os.path.isfile(path):
            paths.append(path)
        elif os.path.isfile(os.path.join(path, "__init__.py")):
            paths.append(path)
    return paths


def load_plugins(directory: str) -> list[Plugin]:
    plugins = [load_plugin(p) for p in plugin_paths(directory)]
    for p in plugins:
        log.info("loaded plugin {name} from {path}", name=p.name, path=p.path)
    return plugins
