"""Run import-linter (the [tool.importlinter] contracts in pyproject.toml) on the ``vividhead`` package.

The repository keeps curation/, training/, inference/, evaluation/ and datasets_card/ at the top and
installs them as ``vividhead.<part>`` through setuptools' ``package-dir``. import-linter (grimp)
finds a package's modules by walking its folder, so on the editable install it would see only
vividhead/. This script lays the installed package out as the wheel has it (a temporary folder,
one copy of each package's ``.py`` files, mapped by ``package-dir`` and ``packages`` exactly as
setuptools maps them), and runs ``lint-imports`` there.

    .venv/bin/python scripts/lint_imports.py [lint-imports options, e.g. --verbose]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def package_folders(pyproject: Path) -> dict[str, Path]:
    """Each package of ``[tool.setuptools] packages`` and the folder setuptools takes it from."""
    st = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]
    package_dir: dict[str, str] = st["package-dir"]
    out = {}
    for pkg in st["packages"]:
        # The longest mapped prefix wins, as in setuptools; the rest of the name is a sub-folder.
        base = max((p for p in package_dir if pkg == p or pkg.startswith(p + ".")), key=len)
        rest = pkg[len(base) :].lstrip(".").split(".") if pkg != base else []
        out[pkg] = ROOT.joinpath(package_dir[base], *rest)
    return out


def lay_out(dest: Path) -> None:
    """Copy each package's ``.py`` files to ``dest/<package as folders>`` (mtimes kept)."""
    for pkg, folder in package_folders(ROOT / "pyproject.toml").items():
        target = dest.joinpath(*pkg.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for src in folder.glob("*.py"):
            shutil.copy2(src, target / src.name)


def main(argv: list[str]) -> int:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    with tempfile.TemporaryDirectory(prefix="vividhead-layout-") as tmp:
        lay_out(Path(tmp))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([tmp, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        cmd = [str(lint_imports), str(ROOT / "pyproject.toml"), "--no-cache", *argv]
        # Run in the layout: lint-imports puts its working folder first on the path, and the
        # repository root holds a vividhead/ folder without the parts.
        return subprocess.run(cmd, cwd=tmp, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
