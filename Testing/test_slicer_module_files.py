"""The extension tree as Slicer's extension build and the Extensions Index expect it, checked without Slicer.

- CMake: top-level EXTENSION_* description, the minimum Slicer version, one add_subdirectory per module; each
  module lists every Python script on disk (GloResNetLib included) and every resource, WITH_GENERIC_TESTS, the
  self-test registered; no file is built by both modules (they share one qt-scripted-modules folder).
- Catalog entry GloResNet.json with a category the Extensions Index accepts, LICENSE, icons, screenshots folder,
  per-module requirements file.
- The module files (and the GloResNetLib modules they import) import on Python 3.9 (Slicer 5.8), so that they
  can refuse that Slicer with a message: 3.9 syntax, no ``X | Y`` annotation evaluated at import.

The module files against their ``.ui`` files: test_slicer_module_ui.py.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: ExtensionsIndex scripts/check_description_files.py, ACCEPTED_EXTENSION_CATEGORIES (read 2026-11, listed in
#: the project's REFERENCES.md); the index's CI rejects an entry with any other category.
ACCEPTED_EXTENSION_CATEGORIES = {
    "Active Learning",
    "Analysis",
    "Auto3dgm",
    "BigImage",
    "Cardiac",
    "Chest Imaging Platform",
    "Conda",
    "Converters",
    "DICOM",
    "DSCI",
    "Developer Tools",
    "Diffusion",
    "Examples",
    "Exporter",
    "FTV Segmentation",
    "Filtering",
    "Filtering.Morphology",
    "Filtering.Vesselness",
    "Holographic Display",
    "Image Synthesis",
    "IGT",
    "Informatics",
    "Netstim",
    "Neuroimaging",
    "Nuclear Medicine",
    "Orthodontics",
    "Osteotomy Planning",
    "Otolaryngology",
    "Photogrammetry",
    "Pipelines",
    "Planning",
    "Printing",
    "Quantification",
    "Radiotherapy",
    "Registration",
    "Remote",
    "Rendering",
    "SPHARM",
    "Segmentation",
    "Sequences",
    "Shape Analysis",
    "Shape Regression",
    "Shape Visualization",
    "Simulation",
    "SlicerCMF",
    "SlicerMorph",
    "Spectral Imaging",
    "Supervisely",
    "Surface Models",
    "SurfaceLearner",
    "Tomographic Reconstruction",
    "Tracking",
    "Tractography",
    "Training",
    "Ultrasound",
    "Utilities",
    "Vascular Modeling Toolkit",
    "Virtual Reality",
    "VisSimTools",
    "Web System Tools",
    "Wizards",
}
SCHEMA_KEYS = {
    "$schema",
    "build_dependencies",
    "build_subdirectory",
    "category",
    "enabled",
    "scm_revision",
    "scm_type",
    "scm_url",
    "tier",
    "dicom_support_rule",
}


def cmake_calls(text: str, command: str) -> list[list[str]]:
    """Arguments of every ``command(...)`` call (comments removed, no nested parentheses)."""
    text = re.sub(r"#[^\n]*", "", text)
    return [m.group(1).split() for m in re.finditer(rf"\b{command}\s*\(([^)]*)\)", text, re.IGNORECASE)]


def cmake_set(text: str, name: str) -> list[str]:
    for args in cmake_calls(text, "set"):
        if args and args[0] == name:
            return args[1:]
    raise AssertionError(f"set({name} ...) not found")


def cmake_string(text: str, name: str) -> str:
    match = re.search(rf'set\(\s*{name}\s+"([^"]*)"', text)
    assert match, f"{name} missing"
    return match.group(1)


def modules() -> list[Path]:
    """Module folders of the extension: ``X/CMakeLists.txt`` with ``X/X.py``."""
    return sorted(p.parent for p in REPO.glob("*/CMakeLists.txt") if (p.parent / f"{p.parent.name}.py").is_file())


def module_file(module: Path) -> Path:
    return module / f"{module.name}.py"


# ------------------------------------------------------------------------------------------------------------
# CMake
# ------------------------------------------------------------------------------------------------------------


def test_top_level_cmake_describes_the_extension():
    text = (REPO / "CMakeLists.txt").read_text()
    assert cmake_calls(text, "project") == [["GloResNet"]]
    for key in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CATEGORY",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
    ):
        assert cmake_string(text, key).strip(), key
    assert cmake_string(text, "EXTENSION_DEPENDS") == "PyTorch"
    assert cmake_string(text, "EXTENSION_ICONURL").endswith("Resources/Icons/GloResNet.png")
    from GloResNetLib.slicer_side.common import MINIMUM_SLICER_VERSION

    minimum = ".".join(map(str, MINIMUM_SLICER_VERSION))
    assert ["Slicer", minimum, "REQUIRED"] in cmake_calls(text, "find_package")  # checked by CMake
    assert f"Slicer {minimum} or later" in cmake_string(text, "EXTENSION_DESCRIPTION")
    assert f"Slicer {minimum} or later" in (REPO / "README.md").read_text()
    assert ["${Slicer_USE_FILE}"] in cmake_calls(text, "include")
    assert ["${Slicer_EXTENSION_GENERATE_CONFIG}"] in cmake_calls(text, "include")
    assert ["${Slicer_EXTENSION_CPACK}"] in cmake_calls(text, "include")
    subdirs = [args[0] for args in cmake_calls(text, "add_subdirectory")]
    assert "GloResNet" in subdirs
    for sub in subdirs:  # only modules that exist...
        assert (REPO / sub / "CMakeLists.txt").is_file(), f"add_subdirectory({sub}): no CMakeLists.txt"
    for module in modules():  # ...and every module that exists
        assert module.name in subdirs, f"module {module.name} is not add_subdirectory()'d"


@pytest.mark.parametrize("module", modules(), ids=lambda p: p.name)
def test_module_cmake_lists_every_script_and_resource(module: Path):
    text = (module / "CMakeLists.txt").read_text()
    name = cmake_set(text, "MODULE_NAME")
    assert name == [module.name]
    scripts = [s.replace("${MODULE_NAME}", module.name) for s in cmake_set(text, "MODULE_PYTHON_SCRIPTS")]
    resources = [s.replace("${MODULE_NAME}", module.name) for s in cmake_set(text, "MODULE_PYTHON_RESOURCES")]
    assert len(scripts) == len(set(scripts)), "a script is listed twice"
    on_disk = {str(p.relative_to(module)) for p in module.glob("*.py")}
    for lib in module.glob("*Lib"):
        on_disk |= {str(p.relative_to(module)) for p in lib.rglob("*.py") if "__pycache__" not in p.parts}
        data = {
            str(p.relative_to(module))
            for p in lib.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
        }
        unlisted = sorted(data - set(resources))
        assert not unlisted, f"package data not in MODULE_PYTHON_RESOURCES: {unlisted}"
    missing, extra = sorted(on_disk - set(scripts)), sorted(set(scripts) - on_disk)
    assert not missing and not extra, (
        f"{module.name}/CMakeLists.txt MODULE_PYTHON_SCRIPTS is out of date: add {missing}, remove {extra}"
    )
    for resource in resources:
        assert (module / resource).is_file(), f"resource {resource} missing"
    for required in (
        f"Resources/Icons/{module.name}.png",
        f"Resources/UI/{module.name}.ui",
        f"Resources/{module.name}-requirements.txt",
    ):
        assert required in resources
    (macro,) = cmake_calls(text, "slicerMacroBuildScriptedModule")
    assert macro[:2] == ["NAME", "${MODULE_NAME}"]
    assert {
        "SCRIPTS",
        "${MODULE_PYTHON_SCRIPTS}",
        "RESOURCES",
        "${MODULE_PYTHON_RESOURCES}",
        "WITH_GENERIC_TESTS",
    } <= set(macro)
    testing = re.search(r"if\s*\(\s*BUILD_TESTING\s*\)(.*?)endif", text, re.S | re.I)
    assert testing and cmake_calls(testing.group(1), "slicer_add_python_unittest") == [["SCRIPT", "${MODULE_NAME}.py"]]


def built_files(module: Path) -> set[str]:
    """What slicerMacroBuildScriptedModule makes of a module's lists, relative to the shared
    ``lib/Slicer-X.Y/qt-scripted-modules`` folder: each script, its compiled ``.pyc`` and each resource, at its
    path relative to the module folder (ctkMacroCompilePythonScript: one copy rule per file; no WITH_SUBDIR)."""
    text = (module / "CMakeLists.txt").read_text()
    assert "WITH_SUBDIR" not in text
    scripts = [s.replace("${MODULE_NAME}", module.name) for s in cmake_set(text, "MODULE_PYTHON_SCRIPTS")]
    resources = [s.replace("${MODULE_NAME}", module.name) for s in cmake_set(text, "MODULE_PYTHON_RESOURCES")]
    return set(scripts) | {s[:-3] + ".pyc" for s in scripts} | set(resources)


def test_no_file_is_built_by_two_modules():
    """Two rules for one output: Ninja refuses to configure, Makefiles silently drop one of the copies."""
    seen: dict[str, str] = {}
    for module in modules():
        for path in sorted(built_files(module)):
            assert path not in seen, f"{path} is built by both {seen[path]} and {module.name}: rename one"
            seen[path] = module.name
    assert len({m for m in seen.values()}) == 2


# ------------------------------------------------------------------------------------------------------------
# Catalog entry, licence, icons, screenshots
# ------------------------------------------------------------------------------------------------------------


def test_catalog_entry():
    entries = list(REPO.glob("*.json"))
    (entry,) = [p for p in entries if p.stem == "GloResNet"]
    meta = json.loads(entry.read_text())
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert entry.stem == cmake_calls(cmake, "project")[0][0]  # file name == project() name
    assert set(meta) <= SCHEMA_KEYS, f"not allowed by the schema: {set(meta) - SCHEMA_KEYS}"
    assert re.fullmatch(
        r"https://raw\.githubusercontent\.com/Slicer/Slicer/main/Schemas/"
        r"slicer-extension-catalog-entry-schema-v1\.0\.\d\.json#",
        meta["$schema"],
    )
    assert meta["category"] == cmake_string(cmake, "EXTENSION_CATEGORY")
    assert meta["category"] in ACCEPTED_EXTENSION_CATEGORIES, "the Extensions Index CI would reject it"
    for module in modules():  # the modules sit in the same category of Slicer's module menu
        assert f'categories = [_("{meta["category"]}")]' in module_file(module).read_text()
    assert meta["scm_url"].startswith("https://") and meta["scm_revision"]
    assert meta["build_dependencies"] == ["PyTorch"] == cmake_string(cmake, "EXTENSION_DEPENDS").split(";")
    assert isinstance(meta["tier"], int) and 1 <= meta["tier"] <= 5
    assert meta.get("build_subdirectory", ".") == "."


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:32]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_licence_icons_screenshots():
    licence = (REPO / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "GloResNet contributors" in licence
    assert png_size(REPO / "Resources" / "Icons" / "GloResNet.png") == (128, 128)
    for module in modules():
        assert png_size(module / "Resources" / "Icons" / f"{module.name}.png") == (128, 128)
    shots = REPO / "Resources" / "Screenshots"
    assert shots.is_dir() and any(shots.iterdir())
    cmake = (REPO / "CMakeLists.txt").read_text()
    for url in cmake_string(cmake, "EXTENSION_SCREENSHOTURLS").split():
        assert "/Resources/Screenshots/" in url


def test_requirements_never_pull_torch():
    for module in modules():
        text = (module / "Resources" / f"{module.name}-requirements.txt").read_text()
        lines = [ln.strip() for ln in text.splitlines()]
        reqs = [ln for ln in lines if ln and not ln.startswith("#")]
        assert reqs and not any(re.match(r"(torch|monai|torchvision)\b", r, re.I) for r in reqs)
