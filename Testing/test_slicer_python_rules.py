"""How Slicer runs the module files, checked on their source (they import Qt, so they are parsed, not imported).

- Python 3.9 (Slicer 5.8): the module files and the GloResNetLib modules they import at load time must import
  there, so that they can refuse that Slicer with a message: 3.9 syntax, and no ``X | Y`` annotation evaluated at
  import (function signatures, module and class annotations) without ``from __future__ import annotations``.
- PythonQt fills a slot's parameters with the signal's arguments, trimmed to the slot's arity
  (PythonQtSignalReceiver.cpp): a ``clicked(bool)`` connected to ``def f(self, device=None)`` passes ``checked``
  as ``device``. No signal argument may land on an optional parameter.
- Self-tests initialise the widget's parameter node themselves (setUp's ``Clear()`` drops it, and
  ``onSceneEndClose`` restores it only for the module shown).
- One dependency installer (GloResNetLib.slicer_side.dependencies) for both modules, never ``skip_packages``;
  GloResNetLib is reached without ``sys.path`` edits, the predict module through ``getModuleLogic``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from test_slicer_module_ui import MODULES, REPO, module_file, module_tree

LIB = REPO / "GloResNet" / "GloResNetLib"


def library_file(dotted: str) -> Path | None:
    """The file of GloResNetLib module ``dotted`` ("GloResNetLib.x.y"), or None if it is not one."""
    parts = dotted.split(".")
    if parts[0] != "GloResNetLib":
        return None
    base = LIB.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def dotted_name(path: Path) -> str:
    rel = path.relative_to(LIB.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def load_time_imports(path: Path) -> set[Path]:
    """GloResNetLib files imported when ``path`` is imported (statements outside functions and classes)."""
    tree = ast.parse(path.read_text())
    package = (
        dotted_name(path)
        if path.name == "__init__.py"
        else dotted_name(path).rpartition(".")[0]
        if LIB in path.parents
        else ""
    )
    found = set()
    nodes = [n for stmt in tree.body if not isinstance(stmt, (ast.FunctionDef, ast.ClassDef)) for n in ast.walk(stmt)]
    for node in nodes:
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # parent packages run their __init__ too
                file = library_file(".".join(parts[:i]))
                if file is not None:
                    found.add(file)
    return found


def imported_at_load(module: Path) -> list[Path]:
    todo, seen = [module_file(module)], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(load_time_imports(path) - seen)
    return sorted(seen)


def evaluated_annotations(tree: ast.Module) -> list[ast.expr]:
    """Annotations Python evaluates at import: function signatures anywhere, module- and class-level
    annotated assignments (those inside function bodies are never evaluated)."""
    found = []

    def visit(body, in_function: bool) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                for arg in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]:
                    if arg is not None and arg.annotation is not None:
                        found.append(arg.annotation)
                if node.returns is not None:
                    found.append(node.returns)
                visit(node.body, True)
            elif isinstance(node, ast.ClassDef):
                visit(node.body, in_function)
            elif isinstance(node, ast.AnnAssign) and not in_function:
                found.append(node.annotation)
            elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(node, field, []), in_function)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body, in_function)

    visit(tree.body, False)
    return found


def python39_problems(path: Path) -> list[str]:
    source = path.read_text()
    try:
        tree = ast.parse(source, filename=str(path), feature_version=(3, 9))
    except SyntaxError as exc:
        return [f"{path.name}:{exc.lineno}: not Python 3.9 syntax ({exc.msg})"]
    postponed = any(
        isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
        for n in tree.body
    )
    if postponed:
        return []
    return [
        f"{path.name}:{a.lineno}: '{ast.unparse(a)}' is evaluated at import and fails on Python 3.9"
        for a in evaluated_annotations(tree)
        if any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(a))
    ]


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_module_files_import_on_python_39_to_refuse_old_slicer(module: Path):
    files = imported_at_load(module)
    problems = [p for f in files for p in python39_problems(f)]
    assert not problems, "\n".join(problems)
    assert module_file(module) in files and LIB / "slicer_side" / "common.py" in files
    source = module_file(module).read_text()
    assert "self.refuseOldSlicer()" in source  # the widget shows the version message instead of its GUI


def test_the_python_39_check_sees_an_evaluated_pep604_annotation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from pathlib import Path\n\nclass A:\n    def f(self) -> Path | None:\n"
        "        x: int | None = None\n        return x\n"
    )
    assert [p.split(":")[1] for p in python39_problems(bad)] == ["4"]  # not the local annotation
    bad.write_text("from __future__ import annotations\n" + bad.read_text())
    assert python39_problems(bad) == []
    bad.write_text("def f(x):\n    match x:\n        case 1:\n            return 1\n")
    assert "not Python 3.9 syntax" in python39_problems(bad)[0]


def widget_class(tree: ast.Module, name: str) -> ast.ClassDef:
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{name}Widget"]
    return cls


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_no_signal_argument_lands_on_an_optional_parameter(module: Path):
    cls = widget_class(module_tree(module), module.name)
    methods = {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}
    checked = 0
    for call in ast.walk(cls):
        if not (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr == "connect"
            and len(call.args) == 2
            and isinstance(call.args[0], ast.Constant)
        ):
            continue
        slot = call.args[1]
        if not (
            isinstance(slot, ast.Attribute)
            and isinstance(slot.value, ast.Name)
            and slot.value.id == "self"
            and slot.attr in methods
        ):
            continue
        signature = re.fullmatch(r"\w+\((.*)\)", call.args[0].value).group(1)
        passed = len([a for a in signature.split(",") if a.strip()])
        params = methods[slot.attr].args.args[1:]
        required = len(params) - len(methods[slot.attr].args.defaults)
        assert min(passed, len(params)) <= required, (
            f"{call.args[0].value} -> self.{slot.attr}: PythonQt passes the signal's argument as optional "
            f"parameter '{params[required].arg}'; connect a lambda"
        )
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_self_test_initialises_the_parameter_node(module: Path):
    tree = module_tree(module)
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{module.name}Test"]
    for method in [n for n in cls.body if isinstance(n, ast.FunctionDef)]:
        uses = [n.lineno for n in ast.walk(method) if isinstance(n, ast.Attribute) and n.attr == "_parameterNode"]
        if not uses:
            continue
        inits = [
            n.lineno
            for n in ast.walk(method)
            if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and n.func.attr == "initializeParameterNode"
        ]
        assert inits and min(inits) < min(uses), (
            f"{cls.name}.{method.name} uses the widget's parameter node without initialising it"
        )


def python_files() -> list[Path]:
    return [p for p in (REPO / "GloResNet").rglob("*.py") if "__pycache__" not in p.parts] + [
        module_file(m) for m in MODULES if m.name != "GloResNet"
    ]


def test_one_dependency_installer_and_no_skip_packages():
    installer = LIB / "slicer_side" / "dependencies.py"
    callers = set()
    for path in python_files():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            assert not (isinstance(node, ast.keyword) and node.arg == "skip_packages"), path
            assert not (isinstance(node, ast.Constant) and node.value == "skip_packages"), path
            if isinstance(node, ast.Attribute) and node.attr in ("pip_install", "pip_ensure", "installTorch"):
                callers.add(path)
    assert callers == {installer}
    for module in MODULES:
        assert "dependencies.ensure_dependencies(REQUIREMENTS_FILE" in module_file(module).read_text()


def test_training_module_reaches_the_library_and_the_predict_module_slicers_way():
    tree = module_tree(REPO / "GloResNetTraining")
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "GloResNet" not in imported and "sys" not in imported  # no `import GloResNet`, no sys.path edits
    source = module_file(REPO / "GloResNetTraining").read_text()
    assert "common.predict_logic()" in source
    common = (LIB / "slicer_side" / "common.py").read_text()
    assert "slicer.util.getModuleLogic(PREDICT_MODULE)" in common


def test_path_fields_follow_the_line_edit_text():
    """currentPathChanged skips an empty field and names its filters refuse (ctkPathLineEdit.cpp)."""
    source = module_file(REPO / "GloResNetTraining").read_text()
    helper = (LIB / "slicer_side" / "training_gui.py").read_text()
    assert '"currentPathChanged(QString)"' not in source + helper
    assert "training_gui.setup_path_fields(self.ui, self.onPathChanged)" in source
    assert re.search(
        r'lineEdit\.connect\("textChanged\(QString\)", lambda text, field=spec\.field: '
        r"on_text\(field, text\)\)",
        helper,
    )
    assert "paths.sync_field(self._parameterNode, field, text)" in source
