"""Simulate the Colab path end to end: install the package from a git URL, then run each chapter's first cells.

Usage: python tools/colab_check.py [--ref HEAD] [--keep]

What Colab does when a reader opens a chapter from its badge, done here offline:

1. A fresh virtual environment in which only torch and torchvision are preinstalled (as on Colab),
   plus the runtime every Colab notebook has: an IPython kernel and pip. They are not copied:
   their distributions, and the dependencies their metadata requires (``Requires-Dist`` with its
   markers), are symlinked from this interpreter's site-packages into a folder outside the fresh
   environment, which the environment's site-packages adds with a ``.pth`` file (as Colab's
   ``dist-packages``). Nothing else of this environment is visible there, the ``companion`` package
   included, so pip has to install every other dependency from the declared requirements; pip never
   uninstalls anything there ("outside environment"), so this environment cannot be damaged.
2. The bounds declared in pyproject.toml (at the revision under test) must be met by the preinstalled
   torch and torchvision, otherwise pip would reinstall them (a 5 GB download on Colab): checked
   before pip runs, and after it (nothing of torch was installed into the fresh environment).
3. For every ``book/NN_*.ipynb`` at that revision, in a fresh kernel of the fresh environment: a fake
   ``google.colab`` module, the notebook's install cell with its repository URL
   ``git+<repository>@<branch of _config.yml>`` replaced by ``git+file://<this checkout>@<commit>``
   (and nothing else changed), a check that pip succeeded and installed that commit with the version
   ``companion.__version__``, then the notebook's imports/device/data cell (its second code cell),
   with ``COMPANION_DATA`` pointing at the data already provisioned.

The revision is a commit (default ``HEAD``): pip installs committed state, and the notebooks are read
at the same commit. Exit status 0 when every notebook passed; wall times are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import venv
from datetime import datetime
from importlib import metadata
from pathlib import Path

import nbformat
import yaml
from nbclient import NotebookClient
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
DIST_NAME = "pruning-distillation-companion"
#: What Colab preinstalls that the package declares or the notebooks import (matplotlib: the
#: figures, a dependency of the ``book`` extra only), and the runtime of every Colab notebook.
PREINSTALLED = ("torch", "torchvision", "matplotlib")
RUNTIME = ("ipykernel", "pip")
KERNEL = "colab-sim"

FAKE_COLAB = """\
# colab_check: Colab imports google.colab into every kernel; a fake one is enough here.
import sys
import types

sys.modules.setdefault("google", types.ModuleType("google"))
sys.modules["google.colab"] = sys.modules["google"].colab = types.ModuleType("google.colab")
"""

VERIFY_INSTALL = """\
# colab_check: the install cell succeeded and installed the commit under test.
import importlib.metadata as _md
import json as _json

import companion as _cp

assert _exit_code == 0, f"pip exited with {_exit_code}"
_dist = _md.distribution("%(dist)s")
print("COLAB_CHECK " + _json.dumps({
    "version": _dist.version,
    "companion_version": _cp.__version__,
    "companion_file": _cp.__file__,
    "direct_url": _json.loads(_dist.read_text("direct_url.json") or "{}"),
    "torch_file": __import__("torch").__file__,
}))
"""

VERIFY_CELL3 = """\
# colab_check: the names every chapter relies on exist after its first cells.
print("COLAB_CHECK_DEVICE", device, len(train_set), len(test_set))
"""


# --------------------------------------------------------------------------- the revision under test


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def read_at(ref: str, path: str) -> str:
    return git("show", f"{ref}:{path}")


def notebooks_at(ref: str) -> list[str]:
    names = git("ls-tree", "--name-only", f"{ref}", "book/").split()
    return sorted(n for n in names if re.fullmatch(r"book/\d\d_[^/]+\.ipynb", n))


def install_target(config_text: str) -> str:
    """The URL every install cell must name: ``git+<repository url>@<branch>`` from _config.yml."""
    repository = yaml.safe_load(config_text)["repository"]
    return f"git+{repository['url'].rstrip('/')}@{repository.get('branch', 'main')}"


def local_install_cell(code: str, target: str, local: str) -> str:
    """The install cell with ``target`` replaced by ``local``; fails unless it names ``target``.

    Args:
        code: The source of a notebook's install cell.
        target: The URL it must name, e.g. ``git+https://github.com/o/r@main``.
        local: What replaces it, e.g. ``git+file:///path/to/checkout@<commit>``.

    Returns:
        The cell's source with exactly that URL replaced and nothing else changed.

    Raises:
        ValueError: If the cell does not install ``target`` exactly once (quoted, as
            ``"<distribution> @ <target>"``).
    """
    pattern = re.compile(re.escape(f"{DIST_NAME} @ {target}") + r'(?=")')
    found = pattern.findall(code)
    if len(found) != 1:
        raise ValueError(
            f'the install cell must install "{DIST_NAME} @ {target}" exactly once, '
            f"found it {len(found)} times in:\n{code}"
        )
    return pattern.sub(f"{DIST_NAME} @ {local}", code)


# --------------------------------------------------------------------------- the preinstalled set


def _marker_ok(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    env = default_environment()
    return any(req.marker.evaluate({**env, "extra": e}) for e in extras | {""})


def closure(
    names: tuple[str, ...], path: list[str] | None = None
) -> dict[str, metadata.Distribution]:
    """The named distributions and everything their metadata requires, from ``path``.

    Args:
        names: Distribution names to start from.
        path: The folders to look in (default: this interpreter's ``sys.path``).

    Returns:
        ``{canonical name: distribution}`` for the whole closure (markers evaluated here).

    Raises:
        LookupError: If a required distribution is not installed.
    """
    found: dict[str, metadata.Distribution] = {}
    todo: list[tuple[str, set[str]]] = [(n, set()) for n in names]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        key = (canonicalize_name(name), frozenset(extras))
        if key in done:
            continue
        done.add(key)
        try:
            dist = next(iter(metadata.distributions(name=name, path=path or sys.path)))
        except StopIteration:
            raise LookupError(
                f"{name} is required by the preinstalled set but not installed"
            ) from None
        found[canonicalize_name(dist.metadata["Name"])] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if _marker_ok(req, extras):
                todo.append((req.name, set(req.extras)))
    return found


def _top_level(dist: metadata.Distribution) -> set[str]:
    """The top-level entries of site-packages that a distribution's RECORD lists."""
    tops = set()
    for f in dist.files or []:
        parts = Path(str(f)).parts
        if parts and parts[0] not in {"..", "__pycache__"} and not parts[0].endswith(".pth"):
            tops.add(parts[0])
    return tops


def link_preinstalled(dists: dict[str, metadata.Distribution], site: Path, overlay: Path) -> None:
    """Symlink exactly these distributions' files from ``site`` into ``overlay``.

    A top-level entry that only these distributions own is linked whole; one shared with another
    distribution (a namespace folder) is recreated and only these distributions' files are linked.
    """

    def key(dist: metadata.Distribution) -> str:
        return canonicalize_name(dist.metadata["Name"])

    owners: dict[str, list[metadata.Distribution]] = {}
    for dist in metadata.distributions(path=[str(site)]):
        for top in _top_level(dist):
            owners.setdefault(top, []).append(dist)
    for dist in dists.values():
        if Path(str(dist.locate_file(""))).resolve() != site.resolve():
            raise LookupError(f"{dist.metadata['Name']} is not in {site}")
    for top, dists_of_top in sorted(owners.items()):
        ours = [d for d in dists_of_top if key(d) in dists]
        if not ours:
            continue
        if len(ours) == len(dists_of_top):
            (overlay / top).symlink_to(site / top)
            continue
        for dist in ours:
            for f in dist.files or []:
                rel = Path(str(f))
                if rel.parts[0] == top and "__pycache__" not in rel.parts:
                    (overlay / rel).parent.mkdir(parents=True, exist_ok=True)
                    (overlay / rel).symlink_to(site / rel)


def declared_dependencies(pyproject_text: str) -> list[Requirement]:
    return [Requirement(r) for r in tomllib.loads(pyproject_text)["project"]["dependencies"]]


def unmet_bounds(
    requirements: list[Requirement], preinstalled: dict[str, metadata.Distribution]
) -> list[str]:
    """The declared requirements that a preinstalled distribution does not satisfy."""
    unmet = []
    for req in requirements:
        dist = preinstalled.get(canonicalize_name(req.name))
        if dist is not None and not req.specifier.contains(dist.version, prereleases=True):
            unmet.append(f"{req} (preinstalled: {dist.version})")
    return unmet


# --------------------------------------------------------------------------- the simulation


def make_environment(work: Path, preinstalled: dict[str, metadata.Distribution]) -> Path:
    """A fresh venv whose site-packages sees exactly ``preinstalled``; returns its python."""
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    overlay = work / "dist-packages"
    overlay.mkdir()
    link_preinstalled(preinstalled, Path(sysconfig.get_path("purelib")), overlay)
    (site / "_colab_dist_packages.pth").write_text(
        f"import site; site.addsitedir({str(overlay)!r})\n", encoding="utf-8"
    )
    kernel = work / "jupyter" / "kernels" / KERNEL
    kernel.mkdir(parents=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec = {"argv": argv, "display_name": "Colab (simulated)", "language": "python"}
    (kernel / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    return python


def kernel_environment(work: Path, python: Path, data: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PIP_", "PYTHON", "CONDA", "JUPYTER", "COMPANION_"))
        and k not in {"VIRTUAL_ENV", "MPLBACKEND"}
    }
    env.update(
        PATH=f"{python.parent}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(python.parent.parent),
        PYTHONNOUSERSITE="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        JUPYTER_PATH=str(work / "jupyter"),
        MPLCONFIGDIR=str(work / "mplconfig"),
        COMPANION_DATA=data,
    )
    return env


def run_first_cells(
    notebook_text: str, name: str, target: str, local: str, cwd: Path
) -> tuple[dict, str]:
    """Run the fake-Colab cell, the install cell, its check and cell 3; returns (install, device)."""
    nb = nbformat.reads(notebook_text, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    if len(code) < 2:
        raise ValueError(f"{name}: fewer than two code cells")
    cells = [
        nbformat.v4.new_code_cell(FAKE_COLAB),
        nbformat.v4.new_code_cell(local_install_cell(code[0].source, target, local)),
        nbformat.v4.new_code_cell(VERIFY_INSTALL % {"dist": DIST_NAME}),
        nbformat.v4.new_code_cell(code[1].source),
        nbformat.v4.new_code_cell(VERIFY_CELL3),
    ]
    sim = nbformat.v4.new_notebook(cells=cells)
    client = NotebookClient(
        sim,
        timeout=900,
        kernel_name=KERNEL,
        record_timing=True,
        resources={"metadata": {"path": str(cwd)}},
    )
    try:
        client.execute()
    except Exception as exc:  # what pip and the cells printed says why
        printed = "".join("".join(o.get("text", "")) for c in sim.cells for o in c.outputs)
        raise RuntimeError(f"{exc}\n--- the cells printed:\n{printed[-4000:]}") from exc
    joined = "".join("".join(o.get("text", "")) for c in sim.cells for o in c.outputs)
    install = json.loads(re.search(r"^COLAB_CHECK (.*)$", joined, flags=re.MULTILINE)[1])
    device = re.search(r"^COLAB_CHECK_DEVICE (.*)$", joined, flags=re.MULTILINE)[1]
    install["seconds"] = {
        part: _seconds(sim.cells[i]) for part, i in (("install cell", 1), ("first cell", 3))
    }
    return install, device


def _seconds(cell) -> float:
    timing = cell.metadata.get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return float("nan")
    return (datetime.fromisoformat(end[:26]) - datetime.fromisoformat(start[:26])).total_seconds()


def check_install(install: dict, name: str, sha: str, repo: Path, overlay: Path) -> list[str]:
    problems = []
    if install["version"] != install["companion_version"]:
        problems.append(
            f"{name}: installed metadata version {install['version']} != companion.__version__ "
            f"{install['companion_version']}"
        )
    commit = install["direct_url"].get("vcs_info", {}).get("commit_id")
    if commit != sha:
        problems.append(f"{name}: pip installed commit {commit}, expected {sha}")
    if not install["direct_url"].get("url", "").startswith("file://"):
        problems.append(f"{name}: not installed from the local git URL: {install['direct_url']}")
    if Path(install["companion_file"]).resolve().is_relative_to(repo.resolve()):
        problems.append(f"{name}: companion imported from the checkout, not the installed copy")
    if not Path(install["torch_file"]).is_relative_to(overlay):
        problems.append(f"{name}: torch was reinstalled: imported from {install['torch_file']}")
    return problems


def installed_by_pip(python: Path) -> list[str]:
    """Distributions in the fresh environment's own site-packages (what pip installed)."""
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions(path=[site]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="HEAD", help="the commit to install and read (HEAD)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary environment")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    sha = git("rev-parse", "--verify", f"{args.ref}^{{commit}}").strip()
    dirty = git("status", "--porcelain", "--", "companion", "book", "pyproject.toml").strip()
    if dirty and args.ref == "HEAD":
        print("colab_check: uncommitted changes are not tested (pip installs the commit):")
        print("  " + dirty.replace("\n", "\n  "))
    target = install_target(read_at(sha, "_config.yml"))
    local = f"git+file://{REPO}@{sha}"
    data = os.environ.get("COMPANION_DATA", str(REPO / "data"))

    preinstalled = closure(PREINSTALLED + RUNTIME)
    declared = declared_dependencies(read_at(sha, "pyproject.toml"))
    unmet = unmet_bounds(declared, preinstalled)
    if unmet:
        print("colab_check: pip would reinstall preinstalled packages; bounds not met:")
        print("  " + "\n  ".join(unmet))
        return 1
    to_install = [r.name for r in declared if canonicalize_name(r.name) not in preinstalled]
    print(
        f"colab_check: {sha[:12]}, {len(preinstalled)} distributions preinstalled "
        f"(torch {preinstalled['torch'].version}, torchvision "
        f"{preinstalled['torchvision'].version}, kernel, pip); pip must install "
        f"{', '.join(to_install)}"
    )

    work = Path(tempfile.mkdtemp(prefix="colab_check."))
    problems: list[str] = []
    try:
        python = make_environment(work, preinstalled)
        # The kernels (and the pip they run) inherit this process's environment.
        env = kernel_environment(work, python, data)
        os.environ.clear()
        os.environ.update(env)
        content = work / "content"  # Colab's working directory; not the checkout
        content.mkdir()
        print(f"  fresh environment ready: {time.perf_counter() - start:.1f} s", flush=True)
        for name in notebooks_at(sha):
            t0 = time.perf_counter()
            try:
                install, device = run_first_cells(read_at(sha, name), name, target, local, content)
            except Exception as exc:  # report every notebook, then fail
                problems.append(f"{name}: {type(exc).__name__}: {str(exc)[-3000:]}")
                print(f"  {name}: FAILED ({time.perf_counter() - t0:.1f} s)", flush=True)
                continue
            found = check_install(install, name, sha, REPO, work / "dist-packages")
            problems += found
            status = "FAILED" if found else "ok"
            parts = ", ".join(f"{k} {v:.1f} s" for k, v in install["seconds"].items())
            print(
                f"  {name}: {status}, companion {install['version']}, device {device} "
                f"({time.perf_counter() - t0:.1f} s: {parts})",
                flush=True,
            )
        pip_installed = installed_by_pip(python)
        print("  pip installed: " + ", ".join(pip_installed))
        names = {canonicalize_name(s.split("==")[0]) for s in pip_installed}
        for reinstalled in sorted(names & {canonicalize_name(n) for n in PREINSTALLED}):
            problems.append(f"pip reinstalled the preinstalled {reinstalled}")
        for missing in sorted({canonicalize_name(n) for n in to_install} - names):
            problems.append(f"pip did not install the declared dependency {missing}")
    finally:
        if args.keep:
            print(f"  kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - start
    if problems:
        print("colab_check: FAILED\n  " + "\n  ".join(problems))
        return 1
    print(f"colab_check: every notebook's first cells ran after a Colab install ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
