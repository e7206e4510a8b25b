"""The package's own import graph: layers that only import downwards, no import circles, no private names taken
across packages, and modules of a readable size. docs/architecture.md draws the same layers."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hpo_astro"

# Bottom to top: a module may import its own layer and the layers below it, never one above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("hpo_astro", "errors", "io"),  # the foundation: the package face, the exception types, safe file writing
    ("data", "samplers"),
    ("core",),
    ("store",),
    ("study",),
    ("results",),
    ("report", "tabular"),
    ("benchmark",),
    ("cli", "__main__"),
)
# Files allowed past the size limit: the simulator (one physical model, read top to bottom) and the pickle
# interpreter (one opcode table).
LONG_FILES = {"data/simulate.py", "data/safe_pickle.py"}
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, name: str) -> list[tuple[str, str | None, int]]:
    """(module imported, name taken from it or None, line) for every import of the package in `path`, wherever it
    stands (top level, inside a function, under TYPE_CHECKING): each is an arrow in the design."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, str | None, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "hpo_astro"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] == "hpo_astro":
                found += [(base, a.name, node.lineno) for a in node.names]
    return found


def _target(modules: dict[str, Path], imported: str, taken: str | None) -> str:
    """The module an import lands in: `from hpo_astro.x import y` is module hpo_astro.x.y when y is a module."""
    if taken is not None and f"{imported}.{taken}" in modules:
        return f"{imported}.{taken}"
    return imported


def _room(module: str) -> str:
    """The folder (or foundation module) a module belongs to: `hpo_astro.core.train` -> core, `hpo_astro.io` -> io."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _layer(module: str) -> int:
    for level, rooms in enumerate(LAYERS):
        if _room(module) in rooms:
            return level
    raise AssertionError(f"{module} is in no layer: add its folder to LAYERS and to docs/architecture.md")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for imported, taken, _ in _imports(path, name):
            target = _target(modules, imported, taken)
            if target != name and target in modules:
                graph[name].add(target)
    return graph


def _arrows() -> list[tuple[str, Path, str, str | None, int]]:
    """(importing module, its file, module imported, name taken or None, line) for every import of the package."""
    modules = _modules()
    return [
        (name, path, _target(modules, imported, taken), taken, line)
        for name, path in modules.items()
        for imported, taken, line in _imports(path, name)
    ]


def test_every_import_goes_down_the_layers() -> None:
    modules = _modules()
    upward = [
        f"{path.relative_to(PACKAGE)}:{line} imports {target}"
        for name, path, target, _, line in _arrows()
        if target in modules and _layer(target) > _layer(name)
    ]
    assert not upward, "imports that go up the layers:\n" + "\n".join(upward)


def test_no_import_circles() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


def test_no_private_name_is_imported_from_another_room() -> None:
    modules = _modules()
    private = []
    for name, path, target, taken, line in _arrows():
        if _room(target) == _room(name):
            continue
        names = [p for p in target.split(".")[1:] if p.startswith("_") and p != "__init__"]
        if (
            taken is not None
            and f"{target}.{taken}" not in modules
            and taken.startswith("_")
            and taken != "__version__"
        ):
            names.append(taken)
        if names:
            private.append(f"{path.relative_to(PACKAGE)}:{line} takes {', '.join(names)} from {target}")
    assert not private, "private names used across packages:\n" + "\n".join(private)


def test_no_module_is_longer_than_the_limit() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES and str(p.relative_to(PACKAGE)) not in LONG_FILES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_checks_see_a_circle_an_upward_import_and_a_private_name(tmp_path: Path) -> None:
    """The checks above must be able to fail: a made-up graph with each fault is caught."""
    source = tmp_path / "mod.py"
    source.write_text("from hpo_astro.cli import main\nfrom hpo_astro.store.storage import _reason\n")
    found = _imports(source, "hpo_astro.core.mod")
    assert ("hpo_astro.cli", "main", 1) in found and ("hpo_astro.store.storage", "_reason", 2) in found
    assert _layer("hpo_astro.cli") > _layer("hpo_astro.core.train")
    assert _room("hpo_astro.store.storage") != _room("hpo_astro.core.train")


def _layout_rows() -> dict[str, str]:
    """The layout table of docs/architecture.md: path cell -> description cell."""
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    section = page[page.index("## Layout") :]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            rows[cells[0]] = cells[1]
    return rows


def test_the_layout_table_and_the_layers_match_the_tree() -> None:
    """Every module is named in its folder's row of the layout table (docs/architecture.md), every path the table
    names exists, and the same page places every folder of the package in a layer."""
    rows = _layout_rows()
    root = PACKAGE.parent
    named = [p.strip("`") for cell in rows for p in cell.split(", ")]
    assert [p for p in named if not (root / p).exists()] == []
    unlisted = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        relative = path.relative_to(root).as_posix()
        folder = f"`{path.parent.relative_to(root).as_posix()}/`"
        if f"`{relative}`" not in " ".join(rows) and f"`{path.stem}`" not in rows.get(folder, ""):
            unlisted.append(relative)
    assert unlisted == [], "modules missing from the layout table of docs/architecture.md"
    page = (root / "docs" / "architecture.md").read_text()
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and any(p.glob("*.py")))
    assert [f for f in folders if f"`{f}/`" not in page] == []
    assert all(
        f"`{room}/`" in page or f"`{room}.py`" in page for rooms in LAYERS[1:] for room in rooms if room != "__main__"
    )


_SETTERS = {"set_user_attr", "set_system_attr", "set_trial_user_attr", "set_trial_system_attr"}
_SETTERS |= {"set_study_user_attr", "set_study_system_attr"}
_ATTRS = {"user_attrs", "system_attrs"}
_HOME = {"store/record.py", "samplers/ablation_plan.py"}  # the keys' one definition (the sampler's own, standalone)


def _string(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _key_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """Store keys spelled as string literals: `x.set_user_attr("key", ...)`, `x.user_attrs["key"]`,
    `x.user_attrs.get("key")` (and the system and storage-level forms)."""
    found: list[tuple[int, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            name, args, owner = node.func.attr, node.args, node.func.value
            if name in _SETTERS:
                storage_level = name.startswith(("set_trial_", "set_study_")) and len(args) > 1
                found.append((node.lineno, _string(args[1] if storage_level else args[0])))
            elif name == "get" and isinstance(owner, ast.Attribute) and owner.attr in _ATTRS:
                found.append((node.lineno, _string(args[0])))
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr in _ATTRS:
            found.append((node.lineno, _string(node.slice)))
    return [(line, key) for line, key in found if key is not None]


OPTUNA_KEYS = {"retry_history", "failed_trial", "fixed_params"}  # Optuna's own trial system attributes


def test_every_store_key_is_spelled_once() -> None:
    """Each attribute key the package stores is a constant in `store/record.py` (the ablation sampler's in its plan
    module): nowhere else is a key written as a string where a study or trial attribute is set or read."""
    literals = [
        f"{path.relative_to(PACKAGE)}:{line} {key!r}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).as_posix() not in _HOME
        for line, key in _key_literals(ast.parse(path.read_text()))
        if key not in OPTUNA_KEYS
    ]
    assert literals == []
    probe = ast.parse('t.set_user_attr("a", 1)\ns.storage.set_trial_system_attr(i, "b", 2)\nt.user_attrs.get("c")\n')
    assert [k for _, k in _key_literals(probe)] == ["a", "b", "c"]  # the check sees each form


def test_the_record_keys_name_record_fields() -> None:
    import dataclasses

    from hpo_astro.store import record

    fields = {f.name for f in dataclasses.fields(record.StudyRecord)}
    keys = {record.STRATEGY_KEY, record.N_TRIALS_KEY, record.FINGERPRINT_KEY, record.ARTIFACTS_KEY, record.VERSION_KEY}
    assert keys <= fields and set(record.IDENTITY) <= fields


def test_the_tests_mirror_the_package() -> None:
    """One test folder per package folder (and no other, but `scenarios/` for the cross-cutting attacks and crashes),
    each holding tests; no test module left at the top but this one and the docs check."""
    tests = Path(__file__).resolve().parent
    package_folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and any(p.glob("*.py"))} - {"tables"}
    test_folders = {p.name for p in tests.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert test_folders == package_folders | {"scenarios"}
    for folder in test_folders:
        assert list((tests / folder).glob("test_*.py")), f"tests/{folder} has no tests"
    assert sorted(p.name for p in tests.glob("test_*.py")) == ["test_architecture.py", "test_docs.py"]


def test_the_package_face_is_not_imported_inside_the_package() -> None:
    """`hpo_astro/__init__.py` re-exports names of the layers above it, imported on first use (`LAZY`): a module of
    the package takes each from its home module, never from the face (which would hide an upward import)."""
    import hpo_astro

    taken = [
        f"{path.relative_to(PACKAGE)}:{line} takes {name} from hpo_astro"
        for _, path, target, name, line in _arrows()
        if target == "hpo_astro" and name in hpo_astro.LAZY
    ]
    assert taken == []
