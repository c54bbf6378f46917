"""The layers of ``mqtwisted`` hold: read from the source with ``ast``, no module imported.

* no import cycle anywhere (imports at any depth count, inside functions too: a lazy import is
  still a dependency, and hides a cycle rather than removing it; only imports under
  ``if TYPE_CHECKING:`` are left out of this one check, because they never run);
* protocol code (``mqtwisted.smtp``) imports no queue module, and the queue no SMTP module
  (type-checking imports count here: a type from another layer is a dependency on it);
* a delivery worker process (``mqtwisted.delivery_process``) loads no inbound module;
* no module over 600 lines;
* no private attribute (``x._name``) read or written on anything but ``self`` or ``cls``.

See docs/architecture.rst for the layers.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mqtwisted"
MAX_LINES = 600

#: What a delivery worker process must never load: the SMTP server side and its wiring.
INBOUND = frozenset({
    "mqtwisted.smtp.server", "mqtwisted.smtp.session", "mqtwisted.smtp.commands",
    "mqtwisted.smtp.body", "mqtwisted.smtp.policy", "mqtwisted.cleanup", "mqtwisted.service",
    "mqtwisted.authcheck.verifier", "mqtwisted.authcheck.header",
})

#: ``obj._name`` where ``obj`` is not ``self``/``cls``, allowed (file, source fragment, why): the
#: attribute belongs to the very class whose code touches it, or upstream has no public API and
#: the reach is wrapped in one function whose test fails if upstream changes it.
PRIVATE_ALLOWED: tuple[tuple[str, str, str], ...] = (
    ("mqtwisted/options.py", "probe._probe", "MQOptions.parseOptions marks the probe MQOptions it made itself"),
    ("mqtwisted/queue/amqp_link.py", "conn._impl",
     "pika's Twisted adapter has no public Connection.Blocked API: on_broker_alarm, tested in test_amqp.py"),
)


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _parents(name: str) -> Iterator[str]:
    """The packages Python imports before ``name`` (``a.b.c``: ``a``, ``a.b``)."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        yield ".".join(parts[:i])


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (they never run)."""
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return hidden


def _imports(name: str, path: Path) -> tuple[set[str], set[str]]:
    """The project modules ``name`` imports at any depth of its source: (run, type-checking only).

    ``from package import module`` is an edge to the module alone: the package is already being
    imported (or done) by then, so it is no cycle for the package's ``__init__`` to import its own
    modules.
    """
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    hidden = _type_checking_only(tree)
    run: set[str] = set()
    typing_only: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            submodules = [f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in MODULES]
            targets = submodules if len(submodules) == len(node.names) else [module, *submodules]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]  # ``import a.b.c`` of a package-less path
            if target and target != name:
                (typing_only if id(node) in hidden else run).add(target)
    return run, typing_only - run


_EDGES = {name: _imports(name, path) for name, path in MODULES.items()}
#: what running ``import name`` executes: its imports, and the packages above each module
LOADS = {name: run | {p for p in _parents(name) if p in MODULES} for name, (run, _) in _EDGES.items()}
#: every dependency, type-checking imports included (the layers must hold for those too)
GRAPH = {name: run | typing_only for name, (run, typing_only) in _EDGES.items()}
#: the imports that run: a cycle among these is what leaves a module half-initialised
RUNTIME = {name: run for name, (run, _) in _EDGES.items()}


def _reachable(start: str, graph: dict[str, set[str]] = GRAPH) -> dict[str, str | None]:
    """Every module ``start`` depends on, each with the module that imports it (for the message)."""
    seen: dict[str, str | None] = {start: None}
    todo = [start]
    while todo:
        here = todo.pop()
        for there in sorted(graph[here]):
            if there not in seen:
                seen[there] = here
                todo.append(there)
    return seen


def _chain(seen: dict[str, str | None], end: str) -> str:
    path = [end]
    while (before := seen[path[-1]]) is not None:
        path.append(before)
    return " -> ".join(reversed(path))


def _cycles(graph: dict[str, set[str]] = RUNTIME) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walker_sees_lazy_and_relative_imports() -> None:
    # Guards the checks below against a walker that silently finds nothing.
    assert "mqtwisted.smtp.session" in GRAPH["mqtwisted.smtp.server"]
    assert "mqtwisted.queue" in GRAPH["mqtwisted.queue.spool"]
    assert "mqtwisted.delivery" in _reachable("mqtwisted.delivery_process", LOADS)
    assert "mqtwisted.queue" in LOADS["mqtwisted.queue.spool"]  # a module's package runs first
    assert len(MODULES) > 30


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle() -> None:
    cycles = _cycles()
    assert not cycles, cycles


def test_protocol_code_imports_no_queue_module() -> None:
    bad = [
        _chain(_reachable(m), q)
        for m in MODULES if m.startswith("mqtwisted.smtp.")
        for q in _reachable(m) if q == "mqtwisted.queue" or q.startswith("mqtwisted.queue.")
    ]
    assert not bad, "\n".join(bad)


def test_the_queue_imports_no_smtp_module() -> None:
    bad = [
        _chain(_reachable(m), s)
        for m in MODULES if m == "mqtwisted.queue" or m.startswith("mqtwisted.queue.")
        for s in _reachable(m) if s.startswith("mqtwisted.smtp.")
    ]
    assert not bad, "\n".join(bad)


def test_a_delivery_worker_loads_no_inbound_module() -> None:
    seen = _reachable("mqtwisted.delivery_process", LOADS)
    chains = [_chain(seen, m) for m in sorted(INBOUND & seen.keys())]
    assert not chains, "\n".join(chains)


def test_a_delivery_worker_built_for_real_has_no_inbound_module_loaded(tmp_path: Path) -> None:
    # The same rule at run time, in a fresh interpreter: what the worker's tree really imports,
    # lazy imports in its constructors included.
    script = (
        "import sys\n"
        "from twisted.internet import reactor\n"
        "from mqtwisted.delivery_process import Worker, worker_options\n"
        "from mqtwisted.options import MQOptions\n"
        "o = MQOptions()\n"
        f"o.parseOptions(['--data-dir={tmp_path}'])\n"
        "Worker(worker_options(o), reactor)\n"
        "print(' '.join(m for m in sys.modules if m.startswith('mqtwisted')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=PACKAGE.parent, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    assert "mqtwisted.delivery.service" in loaded
    assert not INBOUND & loaded, sorted(INBOUND & loaded)


def test_no_module_over_600_lines() -> None:
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long


_PRIVATE = re.compile(r"_[a-z]")


def _private_reaches(path: Path) -> Iterator[tuple[int, str]]:
    """``obj._name`` on anything but ``self``/``cls``, and ``getattr``/``setattr`` by such a name."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and _PRIVATE.match(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                yield node.lineno, ast.unparse(node)
        elif (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
            and _PRIVATE.match(node.args[1].value)
        ):
            yield node.lineno, ast.unparse(node)


def test_private_reach_finder_sees_reads_writes_and_getattr(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f(t, self):\n"
        "    t._buffer = 1\n"
        "    self._ok = t.transport._tls\n"
        "    getattr(t, '_hidden')\n"
        "    return t.__class__, t.public\n"
    )
    assert [line for line, _ in _private_reaches(sample)] == [2, 3, 4]


def test_no_private_attribute_of_another_object() -> None:
    allowed = {(file, fragment) for file, fragment, _why in PRIVATE_ALLOWED}
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {text}"
        for path in MODULES.values()
        for line, text in _private_reaches(path)
        if not any(path.relative_to(PACKAGE.parent).as_posix() == file and fragment in text for file, fragment in allowed)
    ]
    assert not found, "\n".join(found)
