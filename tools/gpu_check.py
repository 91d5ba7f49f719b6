"""The GPU run in one command: the CUDA-only tests, then every notebook through nbval on CUDA, timed.

Usage: python tools/gpu_check.py [--budget 480] [--summary _build/gpu_check/summary.md] [--list]

1. The CUDA-only tests: every test of ``tests/`` that runs with ``device == "cuda"`` (the ``device``
   fixture of tests/conftest.py) or carries a ``skipif`` that names CUDA. On a GPU machine none of
   them may be skipped.
2. Every ``book/NN_*.ipynb`` through nbval exactly as ``make nbval`` runs it (strict comparisons,
   the same sanitizer); the chapters pick CUDA themselves (``cp.get_device()``). Each notebook's wall
   time is printed and written to the summary, which the chapters' "Expected run time" cites.

The whole run must finish within ``--budget`` seconds (8 minutes by default): a notebook still
running when the budget is spent is stopped and counts as a failure, and the notebooks after it are
not run. Without CUDA it stops at once with exit status 2 and says so. ``--list`` prints what would
run (no GPU needed). Exit status 0 only when every step passed in time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NBVAL_ARGS = [
    "--nbval",
    "--nbval-current-env",
    "--nbval-cell-timeout=900",
    "--nbval-sanitize-with",
    "book/nbval_sanitize.cfg",
    "-p",
    "no:cacheprovider",
    "-q",
]


def notebooks() -> list[Path]:
    return sorted(REPO.glob("book/[0-9][0-9]_*.ipynb"))


def is_cuda_only(item) -> bool:
    """A test parametrised with device "cuda", or one with a skipif that names CUDA."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("device") == "cuda":
        return True
    for mark in item.iter_markers("skipif"):
        text = f"{mark.kwargs.get('reason', '')} {mark.args}".lower()
        if "cuda" in text:
            return True
    return False


class CudaOnly:
    """A pytest plugin: keep the CUDA-only tests, count their outcomes."""

    def __init__(self) -> None:
        self.selected: list[str] = []
        self.outcomes: Counter[str] = Counter()
        self.bad: list[str] = []

    def pytest_collection_modifyitems(self, config, items) -> None:
        keep = [i for i in items if is_cuda_only(i)]
        drop = [i for i in items if not is_cuda_only(i)]
        items[:] = keep
        if drop:
            config.hook.pytest_deselected(items=drop)
        self.selected = [i.nodeid for i in keep]

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or report.outcome != "passed":
            self.outcomes[report.outcome] += 1
            if report.outcome != "passed":
                self.bad.append(f"{report.nodeid} ({report.when}: {report.outcome})")


def run_tests(collect_only: bool, paths: tuple[str, ...] = ("tests",)) -> tuple[CudaOnly, int]:
    import pytest

    plugin = CudaOnly()
    args = [*paths, "-p", "no:cacheprovider", "-q", "-rs"]
    rc = pytest.main([*args, "--collect-only"] if collect_only else args, plugins=[plugin])
    return plugin, int(rc)


def run_notebook(path: Path, timeout: float) -> tuple[str, float, str]:
    """nbval over one notebook; returns (result, seconds, the end of its output)."""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # figures are outputs
    cmd = [sys.executable, "-m", "pytest", *NBVAL_ARGS, str(path)]
    start = time.perf_counter()
    # A session of its own, so that a timeout stops the kernel too, not only pytest.
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return "timed out", time.perf_counter() - start, (out or "")[-3000:]
    seconds = time.perf_counter() - start
    result = "passed" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    return result, seconds, out[-3000:]


def write_summary(path: Path, rows: list[dict], header: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [*header, "", "| Step | Result | Wall time (s) |", "|---|---|---|"]
    lines += [f"| {r['step']} | {r['result']} | {r['seconds']:.1f} |" for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run")
    parser.add_argument(
        "--summary", type=Path, default=REPO / "_build" / "gpu_check" / "summary.md"
    )
    parser.add_argument("--list", action="store_true", help="print what would run and stop")
    args = parser.parse_args(argv)
    os.chdir(REPO)
    os.environ.setdefault("COMPANION_DATA", str(REPO / "data"))

    if args.list:
        plugin, rc = run_tests(collect_only=True)
        print("gpu_check: CUDA-only tests:\n  " + "\n  ".join(plugin.selected))
        print("gpu_check: notebooks:\n  " + "\n  ".join(str(p.name) for p in notebooks()))
        return 0 if rc == 0 and plugin.selected else 1

    import torch

    if not torch.cuda.is_available():
        print(
            f"gpu_check: CUDA is not available here (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda}); this check needs an NVIDIA GPU. Nothing was run.",
            file=sys.stderr,
        )
        return 2
    gpu = torch.cuda.get_device_name(0)
    header = [
        "# GPU check",
        "",
        f"{gpu}, torch {torch.__version__} (CUDA {torch.version.cuda}), budget {args.budget:.0f} s",
    ]
    print(f"gpu_check: {header[-1]}", flush=True)
    start = time.perf_counter()
    rows: list[dict] = []

    plugin, rc = run_tests(collect_only=False)
    counts = ", ".join(f"{n} {k}" for k, n in sorted(plugin.outcomes.items()))
    ok = rc == 0 and plugin.selected and not plugin.bad
    rows.append(
        {
            "step": f"CUDA-only tests ({len(plugin.selected)})",
            "result": ("passed" if ok else "FAILED") + f": {counts or 'none ran'}",
            "seconds": time.perf_counter() - start,
            "problems": plugin.bad,
        }
    )
    print(f"gpu_check: {rows[-1]['step']}: {rows[-1]['result']}", flush=True)

    for path in notebooks():
        left = args.budget - (time.perf_counter() - start)
        if left <= 0:
            rows.append({"step": path.name, "result": "not run (budget spent)", "seconds": 0.0})
            print(f"gpu_check: {path.name}: not run (budget spent)", flush=True)
            continue
        result, seconds, tail = run_notebook(path, left)
        rows.append({"step": path.name, "result": result, "seconds": seconds, "output": tail})
        print(f"gpu_check: {path.name}: {result} in {seconds:.1f} s", flush=True)
        if result != "passed":
            print(tail, flush=True)

    total = time.perf_counter() - start
    rows.append({"step": "total", "result": f"budget {args.budget:.0f} s", "seconds": total})
    write_summary(args.summary, rows, header)
    failed = [r["step"] for r in rows[:-1] if not r["result"].startswith("passed")]
    print(f"gpu_check: summary in {args.summary}")
    if failed or total > args.budget:
        print(f"gpu_check: FAILED: {', '.join(failed) or 'over budget'} ({total:.1f} s)")
        return 1
    print(f"gpu_check: everything passed on {gpu} in {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
