"""Which config fields does the package's source actually read? A static check with `ast`, for the test that every
field of RunConfig is used (a key that nothing reads would be silently ignored configuration).

A field counts as read when an attribute access `<expr>.<field>` (or `getattr(<expr>, "<field>")`) is found whose
<expr> is known to be that field's config class. Bare names are not enough: `seed`, `lr` or `name` are attribute
names all over the package, and `trainer.seed` must not pass because `data.seed` is read. The class of <expr> is
inferred within each function, from:
  - a parameter annotated with a config class (`cfg: WarmStartConfig`, `spec: DatasetSpec`),
  - `self` inside a config class's own methods,
  - a name or attribute called `cfg` (`cfg`, `self.cfg`, `trainer.cfg`): the root config,
  - a section of a known config (`cfg.trainer` is a TrainerConfig) and names assigned from one (`t = cfg.trainer`),
    or looping over a tuple/list of them (`for spec in (d.train, d.val)`).
Functions listed in `skip` (e.g. RunConfig.validate) do not count: checking a value is not using it.
"""
from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path


def config_classes(root: type) -> dict[str, type]:
    """Every dataclass reachable from `root` through its fields, by class name."""
    found: dict[str, type] = {}

    def visit(cls: type) -> None:
        found[cls.__name__] = cls
        for f in dataclasses.fields(cls):
            for sub in _dataclass_types(typing.get_type_hints(cls)[f.name]):
                if sub.__name__ not in found:
                    visit(sub)

    visit(root)
    return found


def leaf_fields(root: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted path, class name, field name) of every field that is not itself a config section."""
    out = []
    hints = typing.get_type_hints(root)
    for f in dataclasses.fields(root):
        subs = _dataclass_types(hints[f.name])
        if subs:
            for sub in subs:
                out.extend(leaf_fields(sub, f"{prefix}{f.name}."))
        else:
            out.append((f"{prefix}{f.name}", root.__name__, f.name))
    return out


def unread_fields(root: type, sources: dict[str, str], *, skip: set[tuple[str, str]] = frozenset(),
                  root_names: tuple[str, ...] = ("cfg",)) -> list[str]:
    """Dotted paths of the leaf fields of `root` that no source in `sources` ({file name: text}) reads.
    `skip`: (file name, function name) pairs whose reads do not count."""
    classes = config_classes(root)
    reads: set[tuple[str, str]] = set()
    for name, text in sources.items():
        _Reader(classes, root.__name__, root_names, name, skip, reads).visit(ast.parse(text, filename=name))
    return [path for path, cls, field in leaf_fields(root) if (cls, field) not in reads]


def package_sources(package_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(package_dir.parent)): p.read_text() for p in sorted(package_dir.rglob("*.py"))}


def _dataclass_types(tp) -> list[type]:
    if dataclasses.is_dataclass(tp):
        return [tp]
    return [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]


def _annotation_name(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.strip("'\"")
    return None


class _Reader(ast.NodeVisitor):
    """Walks one module; `env` maps local names to config class names, one scope per function."""

    def __init__(self, classes, root, root_names, filename, skip, reads):
        self.classes, self.root, self.root_names = classes, root, root_names
        self.filename, self.skip, self.reads = filename, skip, reads
        self.env: dict[str, str] = {}
        self.class_stack: list[str] = []

    def type_of(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            return self.env.get(node.id) or (self.root if node.id in self.root_names else None)
        if isinstance(node, ast.Attribute):
            owner = self.type_of(node.value)
            if owner is None:
                return self.root if node.attr in self.root_names else None
            return self._section(owner, node.attr)
        return None

    def _section(self, owner: str, attr: str) -> str | None:
        cls = self.classes[owner]
        if attr not in {f.name for f in dataclasses.fields(cls)}:
            return None
        subs = _dataclass_types(typing.get_type_hints(cls)[attr])
        return subs[0].__name__ if subs else None

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.class_stack.append(node.name)
        self.generic_visit(node)
        self.class_stack.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if (self.filename, node.name) in self.skip:
            return
        outer = self.env
        self.env = dict(outer)  # a nested function sees its enclosing function's names
        args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
        for i, a in enumerate(args):
            ann = _annotation_name(a.annotation)
            if ann in self.classes:
                self.env[a.arg] = ann
            elif i == 0 and self.class_stack and self.class_stack[-1] in self.classes:
                self.env[a.arg] = self.class_stack[-1]  # `self` of a config class's method
        self._bind_assignments(node)
        for stmt in node.body:
            self.visit(stmt)
        self.env = outer

    visit_AsyncFunctionDef = visit_FunctionDef

    def _bind_assignments(self, func: ast.AST) -> None:
        """Names assigned (or looped over) from config sections, anywhere in the function; repeated until nothing
        new is learnt, so `t = cfg.trainer; s = t.x` resolves whatever the statement order."""
        changed = True
        while changed:
            changed = False
            for node in ast.walk(func):
                bound: list[tuple[ast.expr, str | None]] = []
                if isinstance(node, ast.Assign):
                    bound = [(target, self.type_of(node.value)) for target in node.targets]
                elif isinstance(node, ast.AnnAssign) and node.value is not None:
                    bound = [(node.target, self.type_of(node.value))]
                elif isinstance(node, ast.For) and isinstance(node.iter, (ast.Tuple, ast.List)):
                    types = {self.type_of(e) for e in node.iter.elts}
                    bound = [(node.target, types.pop() if len(types) == 1 else None)]
                for target, tp in bound:
                    if isinstance(target, ast.Name) and tp and self.env.get(target.id) != tp:
                        self.env[target.id] = tp
                        changed = True

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.ctx, ast.Load):
            self._read(node.value, node.attr)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if (isinstance(node.func, ast.Name) and node.func.id == "getattr" and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            self._read(node.args[0], node.args[1].value)
        self.generic_visit(node)

    def _read(self, owner_expr: ast.expr, attr: str) -> None:
        owner = self.type_of(owner_expr)
        if owner is not None and attr in {f.name for f in dataclasses.fields(self.classes[owner])}:
            self.reads.add((owner, attr))
