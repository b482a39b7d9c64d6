"""The package's shape, checked from its source: no import cycle inside mhpo_vl/ (every import counts, also those
inside functions and under TYPE_CHECKING: a cycle hidden in a function is still two modules that cannot be read
apart), a short top level, rank knowledge in one module, and a README Layout section that names real paths."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mhpo_vl"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every mhpo_vl module `path` imports anywhere in its body. `from a.b import c` is a.b.c when that is a module,
    else a.b; `import a.b` is a.b; relative imports are resolved against the file's package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    return {m for m in found if m in known and m != this}


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imported_modules(path, known) for name, path in mods.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    # The checker itself must be able to fail: a hand-made graph, and an import inside a function parsed from text.
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    source = tmp_path / "mhpo_vl" / "x.py"
    source.parent.mkdir()
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mhpo_vl import y\n"
                      "def f():\n    import mhpo_vl.z\n    from mhpo_vl.w import thing\n")
    global REPO
    saved, REPO = REPO, tmp_path
    try:
        found = imported_modules(source, {"mhpo_vl.x", "mhpo_vl.y", "mhpo_vl.z", "mhpo_vl.w"})
    finally:
        REPO = saved
    assert found == {"mhpo_vl.y", "mhpo_vl.z", "mhpo_vl.w"}


def test_no_import_cycles_inside_the_package():
    cycles = find_cycles(import_graph())
    assert cycles == [], "import cycles (every import counts, in functions too): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_the_top_level_holds_at_most_12_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 12, top


def test_only_distributed_reads_the_launcher_rank_variables():
    pattern = re.compile(r"""environ(?:\.get)?\s*[\[(]\s*["'](RANK|WORLD_SIZE|LOCAL_RANK)["']""")
    readers = sorted(str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py") if pattern.search(p.read_text()))
    assert readers == ["mhpo_vl/distributed.py"], readers


def test_the_config_schema_imports_no_other_module_of_the_package():
    graph = import_graph()
    assert graph["mhpo_vl.config.schema"] == set()
    assert graph["mhpo_vl.config.loading"] == {"mhpo_vl.config.schema"}


def readme_layout_paths() -> list[str]:
    """The paths the README's Layout tree names: a line's first word, under the folder lines above it that are less
    indented (``mhpo_vl/`` then ``  train/`` then ``    loop.py`` is mhpo_vl/train/loop.py). Continuation lines
    (indented prose) name nothing: their first word is not a file or folder name."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    paths: list[str] = []
    folders: list[tuple[int, str]] = []  # (indent, path) of the open folders
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        first = line.split()[0]
        if not re.fullmatch(r"[\w-]+(\.\w+)?/?", first) or ("." not in first and not first.endswith("/")):
            continue
        while folders and folders[-1][0] >= indent:
            folders.pop()
        path = (folders[-1][1] if folders else "") + first
        paths.append(path)
        if first.endswith("/"):
            folders.append((indent, path))
    return paths


def test_every_path_the_readme_layout_names_exists():
    paths = readme_layout_paths()
    assert len(paths) >= 20, paths  # the section lists the package's modules and folders, not a stub
    missing = [p for p in paths if not (REPO / p).exists()]
    assert missing == [], f"README Layout names paths that do not exist: {missing}"


@pytest.mark.parametrize("folder", ["mhpo_vl/train", "mhpo_vl/runs", "mhpo_vl/models", "mhpo_vl/config"])
def test_the_readme_layout_names_every_module_of_the_training_wing(folder):
    named = set(readme_layout_paths())
    modules_here = {f"{folder}/{p.name}" for p in (REPO / folder).glob("*.py") if p.name != "__init__.py"}
    assert modules_here - named == set(), f"README Layout does not name: {sorted(modules_here - named)}"
