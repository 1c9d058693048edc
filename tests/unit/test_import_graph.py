"""The house's layers, as imports: host facts at the bottom, then policy/report, the pure
planner, the launch shell, the probes, and the entry points on top. Nothing at the bottom
imports the middle, and the package has no import cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import sandbox_kernel

PACKAGE = Path(sandbox_kernel.__file__).parent
NAME = "sandbox_kernel"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py") if "labextension" not in p.parts}


def imports(path: Path, known: dict[str, Path], top_level_only: bool) -> set[str]:
    """The package modules ``path`` imports (every import, or only those run at import time)."""
    tree = ast.parse(path.read_text())
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # also imports under a module-level if/try
        nodes = [n for stmt in tree.body for n in ast.walk(stmt)
                 if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == NAME}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.split(".")[0] != NAME:
                continue
            for alias in node.names:  # "from . import probe_bwrap" names a submodule
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return {m for m in found if m in known and m != me}


def graph(top_level_only: bool) -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known, top_level_only) for name, path in known.items()}


def reachable(start: str, edges: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in edges[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_host_facts_import_nothing_of_the_package():
    assert graph(top_level_only=False)[f"{NAME}.host"] == set()


def test_the_planner_imports_neither_the_launch_shell_nor_the_probes():
    edges = graph(top_level_only=False)
    below = set().union(*(reachable(m, edges) | {m} for m in edges if m.startswith(f"{NAME}.planner")))
    middle = {m for m in below if m.startswith((f"{NAME}.launch", f"{NAME}.capabilities"))}
    assert not middle, f"the planner reaches {sorted(middle)}"


def test_the_launch_shell_never_imports_the_probes():
    edges = graph(top_level_only=False)
    for name in edges:
        if name.startswith(f"{NAME}.launch"):
            assert not {m for m in reachable(name, edges) if m.startswith(f"{NAME}.capabilities")}, name


def test_no_import_cycle():
    """At import time (module level). A module's own parent package is excluded: Python runs
    a package's __init__ before its submodules anyway."""
    edges = graph(top_level_only=True)
    for name, targets in edges.items():
        for target in targets:
            if name.startswith(target + "."):
                continue
            back = reachable(target, {k: {t for t in v if not k.startswith(t + ".")} for k, v in edges.items()})
            assert name not in back, f"import cycle: {name} -> {target} -> ... -> {name}"


def test_probes_import_what_they_use_before_any_probe_thread_runs():
    """detect() runs probes in a thread pool: a probe that imported the launch shell lazily
    could meet another doing the same (``_DeadlockError ... _ModuleLock('sandbox_kernel.launch')``).
    Importing the probes imports everything they use; no probe imports a package module inside
    a function."""
    edges_all, edges_top = graph(top_level_only=False), graph(top_level_only=True)
    for name in edges_all:
        if name.startswith(f"{NAME}.capabilities"):
            assert edges_all[name] == edges_top[name], f"{name} imports {edges_all[name] - edges_top[name]} lazily"
    code = ("import sys; import sandbox_kernel.capabilities; "
            "print(' '.join(m for m in ('sandbox_kernel.launch', 'sandbox_kernel.launch.egress', 'sandbox_kernel.launch.session', "
            "'sandbox_kernel.launch.uids', 'sandbox_kernel.launch.seccomp_bpf', 'sandbox_kernel.planner') if m not in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_importing_the_planner_loads_no_launch_shell():
    code = ("import sys; import sandbox_kernel.host, sandbox_kernel.planner; "
            "print(sorted(m for m in sys.modules if m.startswith(('sandbox_kernel.launch', 'sandbox_kernel.capabilities'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
