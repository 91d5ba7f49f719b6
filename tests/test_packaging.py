"""The built wheel carries the licence and the typing marker, and declares an SPDX licence."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
        text=True,
    )
    (path,) = out.glob("pruning_distillation_companion-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_contains_license_and_py_typed(wheel):
    names = wheel.namelist()
    assert "companion/py.typed" in names
    licenses = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert licenses, names
    assert wheel.read(licenses[0]).decode().startswith("MIT License")


def test_metadata_declares_spdx_mit(wheel):
    (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    lines = wheel.read(metadata).decode().splitlines()
    assert "License-Expression: MIT" in lines
    assert not any(line.startswith("Classifier: License ::") for line in lines)


def test_repository_has_the_license_file():
    assert (REPO / "LICENSE").read_text().startswith("MIT License")


def test_matplotlib_is_a_book_dependency_only(wheel):
    """The package never imports matplotlib; only the chapters' figures need it (the book extra)."""
    (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    requires = [
        line.split(":", 1)[1].strip()
        for line in wheel.read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    matplotlib = [r for r in requires if r.startswith("matplotlib")]
    assert matplotlib and all('extra == "book"' in r for r in matplotlib), matplotlib
    sources = [wheel.read(n).decode() for n in wheel.namelist() if n.endswith(".py")]
    assert sources and not any("import matplotlib" in s for s in sources)


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
def test_a_deprecation_warning_attributed_to_the_package_fails_the_tests(category):
    """pyproject's filterwarnings: the package's own calls must not use deprecated APIs (a warning
    whose stack level points into a companion module is an error), others' warnings stay warnings."""
    import warnings

    with pytest.raises(category):
        warnings.warn_explicit(
            "old API", category, "companion/x.py", 1, module="companion.training"
        )
    with warnings.catch_warnings(record=True):
        warnings.warn_explicit("old API", category, "elsewhere.py", 1, module="elsewhere")
