"""pyproject.toml lists every package of the source tree (the list is explicit because
envs/, strategies/ and configs/ are mapped into the package; a package left out would be
missing from a non-editable install, which scripts/install_smoke.sh runs in CI)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_of_the_tree_is_listed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    mapped = {name: ROOT / folder for name, folder in cfg["package-dir"].items()}
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "searchlab").rglob("__init__.py")}
    for name, folder in mapped.items():
        found |= {name + "".join("." + q for q in p.parent.relative_to(folder).parts)
                  for p in folder.rglob("__init__.py")}
    found |= {name for name, folder in mapped.items() if folder.is_dir()}   # data packages
    assert found <= listed, sorted(found - listed)
    assert all((ROOT / folder).is_dir() for folder in cfg["package-dir"].values())
