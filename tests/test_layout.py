"""The package layout stays true: no import cycles, no upward imports between the layers, no
private names imported across modules (parsed from the source with ast, every import counted,
module-level and function-level alike).  The rules are written down in docs/conventions.md."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = "ptypinn"

CORE = {f"{PKG}.{m}" for m in ("config", "data", "physics", "stitch", "grouping", "simulate",
                               "metrics", "report", "experimental", "refinement", "parallel",
                               "provenance")}


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted((SRC / PKG).rglob("*.py")):
        rel = f.relative_to(SRC).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path, known: set[str]) -> tuple[set[str], list[str]]:
    """Modules of the package that ``name`` imports, and the private names it imports."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    edges: set[str] = set()
    private: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            edges |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                mod = ".".join(base[: len(base) - node.level + 1] + [node.module or ""]).strip(".")
            else:
                mod = node.module or ""
            for a in node.names:
                if f"{mod}.{a.name}" in known:
                    edges.add(f"{mod}.{a.name}")
                elif mod in known:
                    edges.add(mod)
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        private.append(f"{name} imports {mod}.{a.name}")
    edges.discard(name)
    return edges, private


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    mods = _modules()
    graph, private = {}, []
    for name, path in mods.items():
        edges, priv = _imports(name, path, set(mods))
        graph[name] = edges
        private += priv
    return graph, private


def _layer(mod: str) -> str:
    if mod in CORE:
        return "core"
    if mod == PKG:
        return "api"
    return mod.split(".")[1]  # pinn, baselines, io, workflows, cli


def _allowed(src: str, dst: str) -> bool:
    """The layer rules (docs/conventions.md, "Layout")."""
    a, b = _layer(src), _layer(dst)
    if dst == PKG:  # the package itself: __version__ and the lazy public API
        return a in ("pinn", "cli")
    if a == "core":
        return b == "core"
    if a == "baselines":
        return b in ("core", "baselines")
    if a == "io":
        return dst in (f"{PKG}.data", f"{PKG}.config") or b == "io"
    if a == "pinn":
        # networks, models and inference never touch files; bundles and training write them
        if src in (f"{PKG}.pinn.bundle", f"{PKG}.pinn.train"):
            return b in ("core", "pinn", "io")
        return b in ("core", "pinn")
    if a == "workflows":
        return b in ("core", "pinn", "baselines", "io", "workflows")
    if a == "cli":
        return b in ("io", "workflows") or dst in (f"{PKG}.config", f"{PKG}.pinn",
                                                   f"{PKG}.provenance")
    return a == "api" and b != "cli"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_layers_import_only_downward():
    graph, _ = _graph()
    assert set(CORE) <= set(graph), "a core module is missing: update CORE and the docs"
    bad = sorted(f"{s} -> {d}" for s, ds in graph.items() for d in ds if not _allowed(s, d))
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph, _ = _graph()
    # a package's __init__ may name its children (re-exports); that is not a cycle-maker
    pruned = {m: {d for d in ds if not (_modules()[m].name == "__init__.py"
                                        and d.startswith(m + "."))}
              for m, ds in graph.items()}
    assert _cycles(pruned) == []


def test_no_private_names_across_modules():
    _, private = _graph()
    assert private == []


def test_rules_catch_a_violation():
    """The checker itself: an upward import and a cycle are found."""
    assert not _allowed(f"{PKG}.physics", f"{PKG}.pinn.models")
    assert not _allowed(f"{PKG}.io.scans", f"{PKG}.physics")
    assert not _allowed(f"{PKG}.pinn.models", f"{PKG}.io.files")
    assert _allowed(f"{PKG}.workflows.compare", f"{PKG}.pinn.infer")
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["info", "{scan}"]])
def test_light_commands_do_not_import_heavy_packages(argv, tmp_path, tiny_pair):
    """``--help``, ``--version`` and ``info`` must not pay for Lightning, pty-chi or matplotlib."""
    from ptypinn import io

    io.write_scan(tmp_path / "scan.npz", tiny_pair[1])
    argv = [a.format(scan=tmp_path / "scan.npz") for a in argv]
    code = ("import sys; from ptypinn.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('lightning', 'ptychi', 'matplotlib') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:]


def test_public_api_resolves_lazily():
    code = ("import sys, ptypinn\n"
            "assert 'torch' not in sys.modules, 'import ptypinn imported torch'\n"
            "names = [n for n in ptypinn.__all__ if n != '__version__']\n"
            "missing = [n for n in names if getattr(ptypinn, n, None) is None]\n"
            "print('MISSING', missing)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "MISSING []" in proc.stdout
