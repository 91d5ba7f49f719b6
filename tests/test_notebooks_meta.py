"""Colab readiness and hygiene of the stored chapter notebooks (fast: nothing is executed).

Every ``book/NN_*.ipynb`` that exists is checked: the title cell and its Colab badge, the stated
run times, the Colab-only install cell, the device choice, local paths, execution order and
outputs, figures, hidden assert cells, the closing sections and the citation keys. The repository
URL and branch have one source of truth, ``_config.yml``; README.md, pyproject.toml, book/intro.md
and the notebooks must name the same repository, and every install cell installs the branch its
badge opens. The version has one source of truth, ``companion.__version__``. The last tests cover
``tools/build_results_table.py``.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import sys
import types
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
import yaml

import companion as cp
from companion.report import HEADLINE_MIME

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(REPO.glob("book/[0-9][0-9]_*.ipynb"))

CONFIG = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))
REPO_URL = CONFIG["repository"]["url"].rstrip("/")
SLUG = REPO_URL.removeprefix("https://github.com/")
BRANCH = CONFIG["repository"].get("branch", "main")
GITHUB = re.compile(r"github\.com/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)")
COLAB_GITHUB = re.compile(r"colab\.research\.google\.com/github/([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)/")

# Cells with a top-level assert that readers are meant to see, {(notebook stem, cell index): why}.
# Every other check cell must be tagged hide-input (shown collapsed; readers can open it).
VISIBLE_TEACHING_ASSERTS: dict[tuple[str, int], str] = {}

LOCAL_PATH = re.compile(r"(?<![\w/.:~-])/(?:work|tmp|home)(?:/|\b)|\b[A-Za-z]:\\")
COLAB_GUARD = 'if "google.colab" in sys.modules:'
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
DIST_NAME = PYPROJECT["project"]["name"]
# The install spec of a setup cell: "<distribution> @ git+<repository>@<ref>", ref captured.
INSTALL = re.compile(
    r'"(?P<dist>[\w.-]+) @ git\+https://github\.com/(?P<slug>[\w.-]+/[\w.-]+?)(?:\.git)?'
    r'@(?P<ref>[^"\s]+)"'
)
BADGE_REF = re.compile(
    r"colab\.research\.google\.com/github/(?P<slug>[\w.-]+/[\w.-]+)/blob/(?P<ref>[^/\s)]+)/"
    r"(?P<path>[^\s)]+)"
)
MAGIC = re.compile(r"^(\s*)([%!].*)$")


@cache
def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def source(cell: dict) -> str:
    return "".join(cell["source"])


def code_cells(path: Path) -> list[tuple[int, dict]]:
    return [(i, c) for i, c in enumerate(load(path)["cells"]) if c["cell_type"] == "code"]


def tags(cell: dict) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def output_text(output: dict) -> str:
    """The text of an output: stream text, traceback, or its text and JSON representations."""
    if output["output_type"] == "stream":
        parts = [output.get("text", "")]
    elif output["output_type"] == "error":
        parts = output.get("traceback", [])
    else:
        parts = [
            value if isinstance(value, (str, list)) else json.dumps(value)
            for mime, value in output.get("data", {}).items()
            if mime.startswith("text/") or mime.endswith("json")
        ]
    return "".join("".join(p) if isinstance(p, list) else p for p in parts)


def without_magics(code: str) -> str:
    """Replace IPython magics and shell escapes by calls to ``_magic_(line)``, keeping indents."""
    lines = []
    for line in code.splitlines():
        match = MAGIC.match(line)
        lines.append(f"{match[1]}_magic_({match[2]!r})" if match else line)
    return "\n".join(lines)


def is_colab_guard(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Constant)
        and node.test.left.value == "google.colab"
        and isinstance(node.test.ops[0], ast.In)
        and ast.unparse(node.test.comparators[0]) == "sys.modules"
    )


def setup_cell(path: Path) -> str:
    return source(code_cells(path)[0][1])


def markdown_after_last_code(path: Path) -> str:
    cells = load(path)["cells"]
    last_code = max(i for i, c in enumerate(cells) if c["cell_type"] == "code")
    return "\n\n".join(source(c) for c in cells[last_code + 1 :] if c["cell_type"] == "markdown")


def bib_keys() -> set[str]:
    text = (REPO / "book" / "references.bib").read_text(encoding="utf-8")
    entries = re.findall(r"^\s*@(\w+)\s*[{(]\s*([^,\s]+)\s*,", text, flags=re.MULTILINE)
    return {key for kind, key in entries if kind.lower() not in {"comment", "string", "preamble"}}


def notebook_params():
    return pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])


def test_there_are_chapter_notebooks():
    assert NOTEBOOKS, "no book/NN_*.ipynb found"


# --------------------------------------------------------------------------- title and badge


@notebook_params()
def test_first_cell_is_a_title_with_the_colab_badge_of_this_notebook(path):
    first = load(path)["cells"][0]
    assert first["cell_type"] == "markdown", f"{path.name}: the first cell must be markdown"
    text = source(first)
    assert text.startswith("# "), f"{path.name}: the first cell must start with a '# ' title"
    url = f"https://colab.research.google.com/github/{SLUG}/blob/{BRANCH}/book/{path.name}"
    badge = f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"
    assert badge in text, f"{path.name}: the first cell must carry the badge {badge}"


@notebook_params()
def test_states_the_expected_run_time_on_cpu_and_on_gpu(path):
    text = source(load(path)["cells"][0])
    match = re.search(r"Expected run time:(.*?)(?:\n\s*\n|$)", text, flags=re.DOTALL)
    assert match, f"{path.name}: the first cell must state 'Expected run time: ...'"
    sentence = match[1]
    assert re.search(r"\bCPU", sentence), f"{path.name}: no run time on a CPU in {sentence!r}"
    assert re.search(r"\bGPU", sentence), f"{path.name}: no run time on a GPU in {sentence!r}"


# --------------------------------------------------------------------------- the setup cell


@notebook_params()
def test_setup_cell_installs_only_on_colab_the_branch_its_badge_opens(path):
    """install ref == the badge's ref == the branch of _config.yml (CONTRIBUTING: "What Colab installs")."""
    code = setup_cell(path)
    assert COLAB_GUARD in code, f"{path.name}: the first code cell must test {COLAB_GUARD!r}"
    installs = [line for line in code.splitlines() if re.search(r"\bpip\b.*\binstall\b", line)]
    assert installs, f"{path.name}: the first code cell installs nothing"
    tree = ast.parse(without_magics(code))
    guarded = {
        id(call)
        for node in ast.walk(tree)
        if is_colab_guard(node)
        for call in ast.walk(node)
        if isinstance(call, ast.Call)
    }
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and ast.unparse(call.func) == "_magic_":
            line = call.args[0].value
            assert id(call) in guarded, f"{path.name}: {line!r} runs outside {COLAB_GUARD!r}"
    badges = [m for m in BADGE_REF.finditer(source(load(path)["cells"][0]))]
    assert [m["path"] for m in badges] == [f"book/{path.name}"], f"{path.name}: one badge, {badges}"
    badge_ref = badges[0]["ref"]
    expected = f'"{DIST_NAME} @ git+{REPO_URL}@{BRANCH}"'
    for line in installs:
        specs = list(INSTALL.finditer(line))
        assert len(specs) == 1, f"{path.name}: install {line.strip()!r} must be exactly {expected}"
        spec = specs[0]
        assert (spec["dist"], spec["slug"]) == (DIST_NAME, SLUG), (
            f"{path.name}: installs {spec['dist']} from {spec['slug']}, not {DIST_NAME} from {SLUG}"
        )
        assert spec["ref"] == badge_ref == BRANCH, (
            f"{path.name}: the install cell installs @{spec['ref']}, the badge opens @{badge_ref}, "
            f"_config.yml names branch {BRANCH!r}: all three must agree (install {expected})"
        )


def test_contributing_shows_the_install_line_the_notebooks_use():
    text = (REPO / "CONTRIBUTING.md").read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        for line in setup_cell(path).splitlines():
            if "pip" in line and "install" in line:
                assert line.strip() in text, f"CONTRIBUTING.md does not show {line.strip()!r}"
    assert "release tag" not in (REPO / "README.md").read_text(encoding="utf-8"), (
        "README.md still says Colab installs a release tag"
    )


# --------------------------------------------------------------------------- one version


def test_the_version_has_one_source_companion_version():
    project = PYPROJECT["project"]
    assert "version" not in project, "pyproject.toml must not repeat the version"
    assert "version" in project.get("dynamic", []), "pyproject.toml: dynamic = ['version']"
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]
    assert attr == {"attr": "companion.__version__"}, attr
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:(?:a|b|rc)\d+)?(?:\.dev\d+)?", cp.__version__), (
        cp.__version__
    )


def test_installed_metadata_version_is_companion_version():
    installed = metadata.version(DIST_NAME)
    assert installed == cp.__version__, (
        f"installed {DIST_NAME} {installed} but companion.__version__ is {cp.__version__}: "
        "reinstall (.venv/bin/pip install -e '.[book,test]' or touch pyproject.toml && make venv)"
    )


@notebook_params()
def test_setup_cell_is_inert_outside_colab(path, monkeypatch):
    code = without_magics(setup_cell(path))
    tree = ast.parse(code)
    for node in tree.body:
        assert isinstance(node, (ast.Import, ast.ImportFrom)) or is_colab_guard(node), (
            f"{path.name}: the setup cell runs {ast.unparse(node)!r} outside the Colab guard"
        )

    def run() -> list[str]:
        ran: list[str] = []
        exec(compile(code, f"{path.name}[setup]", "exec"), {"_magic_": ran.append})  # noqa: S102
        return ran

    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert run() == [], f"{path.name}: the setup cell runs a magic outside Colab"
    # The control: on Colab the install does run.
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert run(), f"{path.name}: the setup cell installs nothing even on Colab"


@notebook_params()
def test_device_is_chosen_by_get_device(path):
    code = "\n".join(source(c) for _, c in code_cells(path))
    assert re.search(r"\bdevice\s*=\s*cp\.get_device\(\s*\)", code), (
        f"{path.name}: no 'device = cp.get_device()'"
    )
    hard_coded = re.findall(r"torch\.device\(\s*['\"]cuda|\.cuda\(\)|device\s*=\s*['\"]cuda", code)
    assert not hard_coded, f"{path.name}: device hard-coded: {hard_coded}"


# --------------------------------------------------------------------------- stored outputs


@notebook_params()
def test_no_cell_contains_a_local_absolute_path(path):
    found = []
    for i, cell in enumerate(load(path)["cells"]):
        texts = [source(cell)] + [output_text(o) for o in cell.get("outputs", [])]
        found += [(i, m[0]) for text in texts for m in LOCAL_PATH.finditer(text)]
    assert not found, f"{path.name}: local absolute paths (cell, match): {found}"


@notebook_params()
def test_every_code_cell_was_executed_in_order_without_errors_or_warnings(path):
    cells = [(i, c) for i, c in code_cells(path) if source(c).strip()]
    counts = [c.get("execution_count") for _, c in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        f"{path.name}: execution counts {counts} are not 1..{len(cells)} (run it top to bottom: "
        "make execute)"
    )
    for i, cell in cells:
        for output in cell.get("outputs", []):
            assert output["output_type"] != "error", f"{path.name} cell {i}: stored error output"
            if output["output_type"] == "stream" and output["name"] == "stderr":
                text = output_text(output)
                assert not re.search(r"\w*Warning\b|warnings\.warn", text), (
                    f"{path.name} cell {i}: warning on stderr: {text[:300]!r}"
                )


@notebook_params()
def test_every_cell_calling_plt_show_has_a_png_output(path):
    for i, cell in code_cells(path):
        if "plt.show()" in source(cell):
            mimes = [m for o in cell.get("outputs", []) for m in o.get("data", {})]
            assert "image/png" in mimes, f"{path.name} cell {i}: plt.show() but no image/png output"


CHECK_CALL = re.compile(r"\bcp\.stats\.check(?:_better|_within|_below)?\(")


@notebook_params()
def test_claim_checks_are_shown_collapsed_never_removed(path):
    """A check cell (top-level assert or cp.stats.check*) is tagged hide-input: readers can open it."""
    for i, cell in code_cells(path):
        code = source(cell)
        tree = ast.parse(without_magics(code))
        is_check = any(isinstance(node, ast.Assert) for node in tree.body) or CHECK_CALL.search(
            code
        )
        if "remove-cell" in tags(cell):
            assert not is_check, (
                f"{path.name} cell {i}: a claim's check is removed from the book; tag it hide-input "
                "so that readers can open it"
            )
        if is_check and (path.stem, i) not in VISIBLE_TEACHING_ASSERTS:
            assert "hide-input" in tags(cell), (
                f"{path.name} cell {i}: a check cell must be tagged hide-input (shown collapsed), "
                "or listed in VISIBLE_TEACHING_ASSERTS with the reason"
            )


@notebook_params()
def test_check_cells_say_what_they_verified(path):
    """Every hide-input check cell that uses cp.stats.check* prints 'check passed: ...'."""
    for i, cell in code_cells(path):
        if CHECK_CALL.search(source(cell)):
            text = "".join(
                "".join(o.get("text", ""))
                for o in cell.get("outputs", [])
                if o.get("name") == "stdout"
            )
            assert "check passed: " in text, (
                f"{path.name} cell {i}: no 'check passed' output stored"
            )


# --------------------------------------------------------------------------- closing and citations


@notebook_params()
def test_ends_with_summary_exercises_and_bibliography(path):
    text = markdown_after_last_code(path)
    positions = [
        re.search(r"^#+\s*Summary\b", text, flags=re.MULTILINE),
        re.search(r"^#+\s*Exercises\b", text, flags=re.MULTILINE),
        re.search(r"^(```|:::)\{bibliography\}", text, flags=re.MULTILINE),
    ]
    names = ["a Summary heading", "an Exercises heading", "a {bibliography} directive"]
    for found, name in zip(positions, names, strict=True):
        assert found, f"{path.name}: the closing markdown cells lack {name}"
    starts = [p.start() for p in positions]
    assert starts == sorted(starts), f"{path.name}: expected Summary, Exercises, bibliography"


@notebook_params()
def test_every_cited_key_is_in_references_bib(path):
    known = bib_keys()
    cited = {
        key.strip()
        for cell in load(path)["cells"]
        if cell["cell_type"] == "markdown"
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]*)`", source(cell))
        for key in group.split(",")
    }
    assert not cited - known, f"{path.name}: cited but not in references.bib: {cited - known}"


# --------------------------------------------------------------------------- one repository URL


def github_repos(text: str) -> set[str]:
    return {f"{owner}/{name.removesuffix('.git')}" for owner, name in GITHUB.findall(text)}


def test_readme_pyproject_intro_and_badges_name_the_configured_repository():
    assert re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", SLUG), REPO_URL
    readme = github_repos((REPO / "README.md").read_text(encoding="utf-8"))
    assert readme == {SLUG}, f"README.md names {readme}, _config.yml {SLUG}"
    intro = github_repos((REPO / "book" / "intro.md").read_text(encoding="utf-8"))
    assert intro <= {SLUG}, f"book/intro.md names {intro}, _config.yml {SLUG}"
    urls = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["urls"]
    assert urls, "pyproject.toml has no [project.urls]"
    named = {repo for url in urls.values() for repo in github_repos(url)}
    assert named == {SLUG}, f"pyproject.toml [project.urls] names {named}, _config.yml {SLUG}"
    for path in NOTEBOOKS:
        text = "\n".join(source(c) for c in load(path)["cells"])
        badges = set(COLAB_GITHUB.findall(text))
        assert badges == {SLUG}, f"{path.name}: Colab badges name {badges}, _config.yml {SLUG}"
        assert github_repos(text) <= {SLUG}, f"{path.name}: names {github_repos(text)}"


# --------------------------------------------------------------------------- the results table


@pytest.fixture(scope="module")
def results_tool():
    spec = importlib.util.spec_from_file_location(
        "build_results_table", REPO / "tools" / "build_results_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def stored_headlines(path: Path) -> list[tuple[str, str]]:
    """Every (result, value) of the headline outputs stored in a notebook, read independently."""
    pairs = []
    for _, cell in code_cells(path):
        for output in cell.get("outputs", []):
            payload = output.get("data", {}).get(HEADLINE_MIME)
            if payload is not None:
                payload = json.loads(payload) if isinstance(payload, str) else payload
                pairs += list(payload["results"].items())
    return pairs


def test_results_table_has_a_row_for_every_headline(results_tool, tmp_path):
    out = tmp_path / "results.md"
    assert results_tool.main(["--out", str(out)]) == 0
    chapter, table = None, set()
    for line in out.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| ") or line.startswith(("| Chapter", "|---")):
            continue
        first, result, value = (cell.strip() for cell in re.split(r"(?<!\\)\|", line[1:-1]))
        link = re.fullmatch(r"\{doc\}`/(book/[^`]+)`", first)
        chapter = link[1] if link else chapter
        assert chapter, f"row before any chapter link: {line}"
        table.add((chapter, result.replace("\\|", "|"), value.replace("\\|", "|")))
    expected = {
        (f"book/{path.stem}", result, value)
        for path in NOTEBOOKS
        for result, value in stored_headlines(path)
    }
    assert expected <= table, f"headlines missing from the table: {sorted(expected - table)}"
    executed = [p for p in NOTEBOOKS if any(c.get("outputs") for _, c in code_cells(p))]
    for path in executed:
        assert stored_headlines(path), f"{path.name} is executed but publishes no headline"


def test_results_table_keeps_the_notebook_order_and_escapes_pipes(results_tool):
    shown = cp.report.headline("99_demo", {"zeta | first": "1", "alpha": "2 | 3"})
    bundle = shown._repr_mimebundle_()
    stored = json.loads(json.dumps(bundle[HEADLINE_MIME], sort_keys=True))  # as nbformat stores
    order = results_tool.display_order(stored["results"], bundle["text/plain"])
    assert order == ["zeta | first", "alpha"]
    rows = [results_tool.Row("book/99_demo", k, stored["results"][k]) for k in order]
    text = results_tool.render(rows)
    assert "| {doc}`/book/99_demo` | zeta \\| first | 1 |" in text
    assert "|  | alpha | 2 \\| 3 |" in text
