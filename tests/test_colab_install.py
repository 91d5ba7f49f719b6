"""What Colab installs: declared bounds Colab can meet, and the pieces of tools/colab_check.py.

The simulation itself (a fresh environment, pip installing the package from a ``git+file://`` URL
of HEAD, every chapter's first cells) is ``make colab``, part of ``make test``; it takes minutes, so
these fast tests cover its parts: the revision it installs, what it preinstalls, what it links.
"""

from __future__ import annotations

import importlib.util
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
DEPENDENCIES = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]

#: Versions on Google Colab's default runtime as last recorded by the authors (2025; Python 3.12).
#: Refresh from `!pip list` in a Colab notebook. Colab moves forward, so lower bounds and no upper
#: pins keep admitting it; this table catches a bound raised above what Colab ships.
COLAB_RECORDED = {
    "python": "3.12.11",
    "torch": "2.8.0",
    "torchvision": "0.23.0",
    "numpy": "2.0.2",
    "scipy": "1.16.1",
    "matplotlib": "3.10.0",
    "tqdm": "4.67.1",
    # Not recorded as preinstalled there: pip installs the newest release that meets the bound.
    "torch-pruning": None,
    "torchao": None,
    "onnx": None,
    "onnxruntime": None,
    "onnxscript": None,
}


@pytest.fixture(scope="module")
def colab_check():
    spec = importlib.util.spec_from_file_location("colab_check", REPO / "tools" / "colab_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


# --------------------------------------------------------------------------- declared dependencies


@pytest.mark.parametrize("req", DEPENDENCIES, ids=[r.name for r in DEPENDENCIES])
def test_every_runtime_dependency_has_a_lower_bound_and_no_upper_pin(req):
    operators = {spec.operator for spec in req.specifier}
    assert ">=" in operators, f"{req}: needs a lower bound (>=) so that old installs fail clearly"
    assert operators <= {">=", "!="}, (
        f"{req}: no upper pin ({sorted(operators - {'>=', '!='})}): on Colab it would make pip "
        "replace the preinstalled version"
    )
    assert not req.marker and not req.url, f"{req}: a plain requirement, installable anywhere"


@pytest.mark.parametrize("req", DEPENDENCIES, ids=[r.name for r in DEPENDENCIES])
def test_bounds_admit_the_versions_here_and_colabs(req):
    here = metadata.version(req.name)
    assert req.specifier.contains(here, prereleases=True), f"{req} excludes {here} installed here"
    assert req.name in COLAB_RECORDED, (
        f"{req.name}: record Colab's version (or None) in COLAB_RECORDED"
    )
    colab = COLAB_RECORDED[req.name]
    if colab is not None:  # preinstalled there: the bound must admit it, or pip would replace it
        assert req.specifier.contains(colab), f"{req} excludes Colab's {req.name} {colab}"


def test_requires_python_admits_colab_and_here():
    spec = SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert spec.contains(COLAB_RECORDED["python"]), f"requires-python {spec} excludes Colab"
    assert spec.contains(".".join(map(str, sys.version_info[:3]))), f"{spec} excludes this Python"


# --------------------------------------------------------------------------- the simulation's parts


def test_install_target_is_the_badge_branch_of_config(colab_check):
    config = "repository:\n  url: https://github.com/o/r/\n  branch: main\n"
    assert colab_check.install_target(config) == "git+https://github.com/o/r@main"


def test_local_install_cell_replaces_exactly_the_configured_url(colab_check):
    cell = (
        'if "google.colab" in sys.modules:\n'
        '    %pip install -q "pruning-distillation-companion @ git+https://github.com/o/r@main"\n'
    )
    local = "git+file:///src/checkout@" + "a" * 40
    out = colab_check.local_install_cell(cell, "git+https://github.com/o/r@main", local)
    assert out == cell.replace("git+https://github.com/o/r@main", local)


@pytest.mark.parametrize(
    "url",
    [
        "git+https://github.com/o/r@v0.1.0",  # a tag the badge does not open
        "git+https://github.com/o/r@main-old",  # another branch that starts alike
        "git+https://github.com/x/r@main",  # another repository
    ],
)
def test_local_install_cell_refuses_a_cell_that_installs_another_revision(colab_check, url):
    cell = f'%pip install -q "pruning-distillation-companion @ {url}"\n'
    with pytest.raises(ValueError, match="exactly once"):
        colab_check.local_install_cell(cell, "git+https://github.com/o/r@main", "git+file:///x@y")


def test_preinstalled_set_is_torch_torchvision_matplotlib_and_the_runtime_only(colab_check):
    found = colab_check.closure(colab_check.PREINSTALLED + colab_check.RUNTIME)
    assert {"torch", "torchvision", "matplotlib", "ipykernel", "pip"} <= set(found)
    for req in metadata.requires("torch") or []:  # torch's own dependencies come with it
        req = Requirement(req)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            assert req.name.lower().replace("_", "-") in found, req
    others = {r.name for r in DEPENDENCIES} - {"torch", "torchvision", "numpy"}
    assert others and not others & set(found), (
        f"{others & set(found)} would be preinstalled: pip must install them from the declared "
        "requirements"
    )
    assert "pruning-distillation-companion" not in found


def test_preinstalled_versions_meet_the_declared_bounds(colab_check):
    found = colab_check.closure(colab_check.PREINSTALLED)
    assert colab_check.unmet_bounds(DEPENDENCIES, found) == []
    too_new = [Requirement("torch>=99"), Requirement("scipy>=99")]  # scipy is not preinstalled
    assert colab_check.unmet_bounds(too_new, found) == [
        f"torch>=99 (preinstalled: {found['torch'].version})"
    ]


def _fake_dist(site: Path, name: str, files: list[str]) -> None:
    for f in files:
        (site / f).parent.mkdir(parents=True, exist_ok=True)
        (site / f).write_text("", encoding="utf-8")
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    record = [*files, f"{info.name}/METADATA", f"{info.name}/RECORD"]
    (info / "RECORD").write_text("".join(f"{f},,\n" for f in record), encoding="utf-8")


def test_link_preinstalled_links_only_the_chosen_distributions(colab_check, tmp_path):
    site, overlay = tmp_path / "site", tmp_path / "overlay"
    overlay.mkdir()
    _fake_dist(site, "alpha", ["alpha/__init__.py", "ns/a/__init__.py", "alpha_mod.py"])
    _fake_dist(site, "beta", ["beta/__init__.py", "ns/b/__init__.py"])
    alpha = next(iter(metadata.distributions(name="alpha", path=[str(site)])))
    colab_check.link_preinstalled({"alpha": alpha}, site, overlay)
    assert (overlay / "alpha").is_symlink() and (overlay / "alpha_mod.py").is_symlink()
    assert (overlay / "alpha-1.0.dist-info").is_symlink()
    assert (overlay / "ns").is_dir() and not (overlay / "ns").is_symlink()  # shared: rebuilt
    assert (overlay / "ns" / "a" / "__init__.py").is_symlink()
    assert not (overlay / "beta").exists() and not (overlay / "ns" / "b").exists()
    assert not (overlay / "beta-1.0.dist-info").exists()
