"""pyproject declares only the library versions the tests run on (#23 item 6): the EViT layers use the
transformers 5.x module layout, so 4.x is not declared, and the installed versions satisfy the ranges."""

from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _declared() -> dict[str, Requirement]:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return {Requirement(d).name: Requirement(d) for d in deps}


def test_transformers_range_is_the_tested_major():
    spec = _declared()["transformers"].specifier
    assert not spec.contains(Version("4.57.0")), "4.x lacks the layer layout EViT patches"
    assert spec.contains(Version(version("transformers")))


def test_installed_versions_satisfy_the_declared_ranges():
    for name in ("transformers", "peft", "torch", "lm_eval"):
        req = _declared()["lm-eval" if name == "lm_eval" else name]
        assert req.specifier.contains(Version(version(req.name)), prereleases=True), (name, version(req.name))
