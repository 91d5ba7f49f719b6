"""Re-execute notebooks in place, top to bottom, and store their outputs.

Usage: python tools/execute_notebooks.py book/01_background.ipynb [...]

Each notebook runs in a fresh kernel with its own directory as the working
directory (as nbval and Colab run it); the wall-clock time is printed so that
the run-time estimates in the chapters stay honest.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def execute(path: Path, timeout: int = 1800) -> float:
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,  # keep wall-clock stamps out of the stored notebooks
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    nbformat.write(notebook, path)
    return seconds


def main(paths: list[str]) -> int:
    # Figures are outputs: the kernel must use the inline backend, not a headless one.
    os.environ.pop("MPLBACKEND", None)
    if not paths:
        print(__doc__)
        return 2
    total = 0.0
    for name in paths:
        seconds = execute(Path(name))
        total += seconds
        print(f"{name}: {seconds:.1f} s", flush=True)
    print(f"all notebooks: {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
