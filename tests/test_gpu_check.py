"""tools/gpu_check.py (make gpu): what it selects, how it fails without CUDA, and its timed summary.

The GPU run itself needs a GPU; these tests run anywhere: the selection of CUDA-only tests, the
clear refusal without CUDA, and the notebook loop with its budget on a stand-in notebook.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_without_cuda_it_refuses_clearly_and_runs_nothing(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a GPU machine
    summary = tmp_path / "summary.md"
    done = subprocess.run(
        [sys.executable, str(TOOL), "--summary", str(summary)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "CUDA is not available" in done.stderr and "Nothing was run" in done.stderr
    assert not summary.exists()


def test_selects_exactly_the_cuda_tests(gpu_check, monkeypatch):
    monkeypatch.chdir(REPO)
    files = ("tests/test_data.py", "tests/test_determinism.py", "tests/test_utils.py")
    plugin, rc = gpu_check.run_tests(collect_only=True, paths=files)
    assert rc == 0
    assert plugin.selected, "no CUDA-only test found"
    assert all("cuda" in nodeid for nodeid in plugin.selected), plugin.selected
    assert not [n for n in plugin.selected if "[cpu" in n or "-cpu" in n]
    assert "tests/test_data.py::test_train_val_split_stays_on_the_data_device[cuda]" in (
        plugin.selected
    )
    # A test that only mentions CUDA in its name (it fakes is_available) runs on CPU machines.
    assert not [n for n in plugin.selected if "test_get_device_follows_cuda_availability" in n]


def _stand_in(path: Path, source: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_notebook_loop_times_each_notebook_and_spends_no_more_than_the_budget(
    gpu_check, monkeypatch, tmp_path
):
    book = tmp_path / "book"
    book.mkdir()
    quick = _stand_in(book / "01_quick.ipynb", "1 + 1")
    slow = _stand_in(book / "02_slow.ipynb", "import time\ntime.sleep(60)")
    late = _stand_in(book / "03_late.ipynb", "2 + 2")
    for path in (quick, slow, late):  # stored outputs for nbval to compare with
        nb = nbformat.read(path, as_version=4)
        nb.cells[0].execution_count = 1
        nb.cells[0].outputs = [
            nbformat.v4.new_output(
                "execute_result", {"text/plain": "2" if path is quick else "4"}, execution_count=1
            )
        ]
        nbformat.write(nb, path)
    monkeypatch.chdir(tmp_path)  # main() works from the repository root; restored afterwards
    monkeypatch.setenv("COMPANION_DATA", os.environ.get("COMPANION_DATA", str(REPO / "data")))
    monkeypatch.setattr(gpu_check, "notebooks", lambda: [quick, slow, late])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "Stand-in GPU")

    class Passed:
        selected = ["tests/x.py::t[cuda]"]
        outcomes = {"passed": 1}
        bad: list[str] = []

    monkeypatch.setattr(gpu_check, "run_tests", lambda collect_only, paths=(): (Passed(), 0))
    summary = tmp_path / "out" / "summary.md"
    rc = gpu_check.main(["--budget", "25", "--summary", str(summary)])
    assert rc == 1  # the slow notebook cannot finish in the budget
    rows = {r["step"]: r for r in json.loads(summary.with_suffix(".json").read_text())}
    assert rows["01_quick.ipynb"]["result"] == "passed", rows["01_quick.ipynb"]
    assert rows["02_slow.ipynb"]["result"] == "timed out"
    assert rows["03_late.ipynb"]["result"] == "not run (budget spent)"
    assert rows["total"]["seconds"] < 60
    text = summary.read_text(encoding="utf-8")
    assert "Stand-in GPU" in text and "| 01_quick.ipynb | passed |" in text
