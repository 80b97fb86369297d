"""The layout a newcomer can find their way in (issue 18), checked on the source (nothing is imported):

- no file of the extension, its tests or the benchmarks over 500 lines, and each Slicer module file at most 400
  lines of wiring (the logic lives in ``GloResNetLib``);
- no import cycle among the ``GloResNetLib`` modules, imports inside functions included, and every library import
  names a module of the library;
- no private name (``_x``) imported from another module: a helper two modules use is public in one place;
- only ``GloResNetLib/slicer_side/`` and the two module files import Slicer's application or GUI libraries
  (``slicer``, ``qt``, ``vtk``, ``ctk``, ``PythonQt`` and their submodules): the core stays pure;
- the research-use disclaimer is written once (``GloResNetLib/disclaimer.py``) and imported everywhere else.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "GloResNet" / "GloResNetLib"
SLICER_SIDE = LIB / "slicer_side"
MODULE_FILES = (REPO / "GloResNet" / "GloResNet.py", REPO / "GloResNetTraining" / "GloResNetTraining.py")
MAX_LINES = 500
MAX_MODULE_FILE_LINES = 400
SLICER_LIBRARIES = {"slicer", "qt", "vtk", "ctk", "PythonQt"}


def python_files(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def dotted_name(path: Path) -> str:
    """``GloResNetLib.x.y`` of a file of the library (a package by its ``__init__``)."""
    parts = list(path.relative_to(LIB.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """Every import of a file, inside functions and classes too: (absolute module, names imported from it)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    own = dotted_name(path) if LIB in path.parents else ""
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            found.append((module, [alias.name for alias in node.names]))
    return found


def library_modules() -> dict[str, Path]:
    return {dotted_name(p): p for p in python_files(LIB)}


def library_graph() -> dict[str, set[str]]:
    """GloResNetLib module -> the GloResNetLib modules it imports (``from . import x`` names module x; a module
    importing ``a.b.c`` depends on ``a.b.c`` only: its packages' ``__init__`` files import nothing of theirs)."""
    modules = library_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for module, names in imports(path):
            if not module.startswith("GloResNetLib"):
                continue
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules]
            if not targets and module in modules:
                targets = [module]
            edges |= {t for t in targets if t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_file_is_too_long():
    folders = (REPO / "GloResNet", REPO / "GloResNetTraining", REPO / "benchmarks", REPO / "Testing")
    long = {}
    for path in python_files(*folders):
        limit = MAX_MODULE_FILE_LINES if path in MODULE_FILES else MAX_LINES
        lines = len(path.read_text().splitlines())
        if lines > limit:
            long[str(path.relative_to(REPO))] = (lines, limit)
    assert not long, "files over their limit (lines, limit): " + ", ".join(f"{k} {v}" for k, v in sorted(long.items()))


def test_the_module_files_are_checked():
    assert all(path.is_file() for path in MODULE_FILES)
    assert len(python_files(SLICER_SIDE)) > 10


def test_no_import_cycle_in_the_library():
    graph = library_graph()
    assert len(graph) > 50 and graph["GloResNetLib.cli"]  # the graph is really built
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_library_import_names_a_module_of_the_library():
    """A relative import that a move left behind (``from .bundle`` in a subpackage) fails only when it runs."""
    modules = library_modules()
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    wrong = []
    for name, path in modules.items():
        for module, names in imports(path):
            if not module.startswith("GloResNetLib") or module in modules:
                continue
            wrong.append(f"{name}: {module} ({', '.join(names)})")
    assert "GloResNetLib" in packages and not wrong, wrong


def private_imports(path: Path, modules: dict[str, Path]) -> list[str]:
    """The private names (``_x``, not ``__x__`` nor a submodule ``_x``) that a file imports from the library."""
    return [
        f"{path.relative_to(path.parents[2])} imports {n} from {module}"
        for module, names in imports(path)
        if module.startswith("GloResNetLib")
        for n in names
        if n.startswith("_") and not n.startswith("__") and f"{module}.{n}" not in modules
    ]


def test_no_private_name_is_imported_from_another_module():
    """``from .run import _read_json``: a helper used by two modules is made public where it lives."""
    modules = library_modules()
    folders = (REPO / "GloResNet", REPO / "GloResNetTraining", REPO / "benchmarks")
    taken = [line for path in python_files(*folders) for line in private_imports(path, modules)]
    assert not taken, taken


def test_the_private_import_reader_sees_a_private_import(tmp_path):
    sample = tmp_path / "a" / "b" / "sample.py"
    sample.parent.mkdir(parents=True)
    sample.write_text(
        "from GloResNetLib.io import read_volume\n\ndef f():\n"
        "    from GloResNetLib.training.run import _read_json, __all__\n"
    )
    assert private_imports(sample, library_modules()) == [
        "a/b/sample.py imports _read_json from GloResNetLib.training.run"
    ]


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("path", python_files(LIB, REPO / "benchmarks"), ids=lambda p: str(p.relative_to(REPO)))
def test_only_the_slicer_side_imports_slicer(path: Path):
    if SLICER_SIDE in path.parents:
        return
    used = {module.split(".")[0] for module, _ in imports(path)} & SLICER_LIBRARIES
    assert not used, f"{path.relative_to(REPO)} imports {sorted(used)}: move that code to GloResNetLib/slicer_side"


def test_the_import_reader_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\ndef f():\n    import slicer.util\n    from vtk import vtkMatrix4x4\n")
    assert {m for m, _ in imports(sample)} == {"os", "slicer.util", "vtk"}


def test_the_disclaimer_is_written_once():
    from GloResNetLib.disclaimer import DISCLAIMER

    written = [
        str(p.relative_to(REPO))
        for p in python_files(REPO / "GloResNet", REPO / "GloResNetTraining")
        if DISCLAIMER in p.read_text() and p.name != "disclaimer.py"
    ]
    assert not written, f"import GloResNetLib.disclaimer.DISCLAIMER instead of writing it in {written}"
