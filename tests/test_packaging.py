"""Packaging: the repository's top-level folders install as one ``vividhead`` namespace.

* every package folder is listed in ``pyproject.toml`` under its ``vividhead.`` name, and nothing else is;
* a built wheel holds only ``vividhead/`` (no top-level ``training``, ``inference``, ``curation``,
  ``datasets_card`` that would shadow a user's own modules);
* the parts import from outside the repository, and ``vividhead --help`` lists every part's commands.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
#: Repository folder -> installed package name (the ``package-dir`` mapping).
PACKAGE_DIR: dict[str, str] = {folder: name for name, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items()}


def _package_folders() -> set[str]:
    """Installed names of the folders with an ``__init__.py`` under the mapped top-level folders."""
    names = set()
    for folder, name in PACKAGE_DIR.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            names.add(".".join((name, *rel.parts)))
    return names


def _data_package_folders() -> set[str]:
    """Installed names of the ``package-data`` entries whose folder exists (data-only packages such
    as the demo page, ``vividhead.inference.static``)."""
    folder_of = {name: folder for folder, name in PACKAGE_DIR.items()}
    names = set()
    for name in PYPROJECT["tool"]["setuptools"].get("package-data", {}):
        top = max((n for n in folder_of if name == n or name.startswith(n + ".")), key=len)
        if (REPO / folder_of[top] / Path(*name[len(top):].split(".")[1:])).is_dir():
            names.add(name)
    return names


def test_package_dir_maps_the_top_level_folders():
    assert PACKAGE_DIR == {"vividhead": "vividhead", "curation": "vividhead.curation",
                           "training": "vividhead.training", "inference": "vividhead.inference",
                           "datasets_card": "vividhead.datasets_card",
                           "evaluation": "vividhead.evaluation"}


def test_every_package_folder_is_listed_and_nothing_else():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = _package_folders() | _data_package_folders()
    assert not found - listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert not listed - found, f"listed but no folder with __init__.py: {sorted(listed - found)}"


def test_no_module_folder_without_init():
    """A folder of modules without ``__init__.py`` would silently be left out of the wheel."""
    missing = sorted({str(p.parent.relative_to(REPO)) for folder in PACKAGE_DIR for p in (REPO / folder).rglob("*.py")
                      if "__pycache__" not in p.parts and not (p.parent / "__init__.py").exists()})
    assert not missing, f"module folders without __init__.py: {missing}"


def test_wheel_installs_only_vividhead(tmp_path):
    # Build from a copy, so the repository gets no build/ or egg-info from the test.
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in PACKAGE_DIR:
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    out = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, cwd=tmp_path, capture_output=True, timeout=300)
    (wheel,) = out.glob("vividhead-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"vividhead"}, sorted(top)
    for folder in PACKAGE_DIR:  # every part's modules made it, under vividhead/
        assert any(n.startswith(PACKAGE_DIR[folder].replace(".", "/") + "/") and n.endswith(".py") for n in names)
    assert {"vividhead/inference/static/index.html", "vividhead/inference/static/app.js"} <= set(names)  # the demo page


def test_parts_import_from_outside_the_repository(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("import vividhead.curation, vividhead.training, vividhead.inference, vividhead.datasets_card\n"
            "import importlib.util\n"
            "assert all(importlib.util.find_spec(m) is None for m in ('curation', 'training', 'inference', "
            "'datasets_card')), 'a top-level module is importable'")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_console_script_lists_every_part():
    script = Path(sys.executable).with_name("vividhead")
    assert script.exists(), f"no console script beside {sys.executable} (pip install -e .)"
    r = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
    assert r.returncode == 0, r.stderr
    commands = {line.strip("│ ").split(" ", 1)[0] for line in r.stdout.splitlines() if line.startswith("│ ")}
    expected = {"curate", "card", "publish", "infer", "serve", "train"}
    if (REPO / "training" / "evaluation" / "cli.py").exists():
        expected.add("eval")
    assert expected <= commands, r.stdout
