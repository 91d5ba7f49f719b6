"""Sparse matmul kernels against dense: from which sparsity does a pruned layer compute faster?

The measurement itself lives in the package (:mod:`companion.kernels`, tested, and used by
chapter 7 on a quick subset); this script runs the full sweep and prints it:

* ``W @ X`` on the CPU with ``W`` dense, as ``torch.sparse`` CSR (pruned unstructured by
  magnitude) and as BSR 4x4 (pruned in whole blocks), for a LeNet-300-100 layer (300x784) and a
  large one (4096x4096), at several sparsities and batch sizes (``kernels.sparse_matmul_sweep``),
  with the break-even sparsity per (layer, batch) (``kernels.break_even``);
* on a CUDA GPU of compute capability >= 8.0, 2:4 semi-structured sparsity
  (``torch.sparse.to_sparse_semi_structured``) against dense ``F.linear`` in float16
  (``kernels.semi_structured_sweep``); elsewhere a line says why it was skipped.

Run (one thread, as the book's CPU figures are; ``--quick`` takes a few minutes)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sparse_kernels.py --quick

This is a measurement, not a test: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse

import torch

from companion import kernels

LAYERS = {"LeNet fc1": kernels.LENET_FC1, "large": (4096, 4096)}
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
BATCHES = (1, 16, 64, 256)
QUICK_SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.99)
QUICK_BATCHES = (1, 16, 256)


def _percent(value: float | None) -> str:
    return "none" if value is None else f"{value:.0%}"


def cpu_sweep(sparsities: tuple, batches: tuple, min_run_time: float) -> None:
    header = (
        f"{'layer':>10s} {'shape':>10s} {'batch':>5s} {'sparsity':>8s} {'dense ms':>9s} "
        f"{'CSR ms':>9s} {'CSR x':>6s} {'BSR ms':>9s} {'BSR x':>6s}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for name, shape in LAYERS.items():
        for batch in batches:
            found = kernels.sparse_matmul_sweep(
                {name: shape}, sparsities, [batch], min_run_time=min_run_time
            )
            for r in found:
                print(
                    f"{name:>10s} {r['shape']:>10s} {batch:5d} {r['sparsity']:8.0%} "
                    f"{r['dense_ms']:9.4f} {r['csr_ms']:9.4f} {r['csr_speedup']:6.2f} "
                    f"{r['bsr_ms']:9.4f} {r['bsr_speedup']:6.2f}",
                    flush=True,
                )
            rows += found
    print()
    print("break-even sparsity (sparse faster than dense from here up; 'none': never in the sweep)")
    print(f"{'layer':>10s} {'batch':>5s} {'CSR':>6s} {'BSR 4x4':>8s}")
    for name in LAYERS:
        for batch in batches:
            mine = [r for r in rows if r["layer"] == name and r["batch"] == batch]
            swept = [r["sparsity"] for r in mine]
            csr = kernels.break_even(swept, [r["csr_speedup"] for r in mine])
            bsr = kernels.break_even(swept, [r["bsr_speedup"] for r in mine])
            print(f"{name:>10s} {batch:5d} {_percent(csr):>6s} {_percent(bsr):>8s}")


def cuda_semi_structured(batches: tuple, min_run_time: float) -> None:
    reason = kernels.semi_structured_unavailable()
    if reason is not None:
        print(f"CUDA 2:4 semi-structured: skipped ({reason})")
        return
    capability = torch.cuda.get_device_capability()
    print(
        f"CUDA 2:4 semi-structured, float16, on {torch.cuda.get_device_name()} "
        f"(compute capability {capability[0]}.{capability[1]})"
    )
    header = (
        f"{'layer':>10s} {'shape':>10s} {'batch':>5s} {'dense ms':>9s} {'2:4 ms':>9s} {'2:4 x':>6s}"
    )
    print(header)
    print("-" * len(header))
    for r in kernels.semi_structured_sweep(LAYERS, batches, min_run_time=min_run_time):
        if r["note"]:
            print(f"{r['layer']:>10s} {r['shape']:>10s} {r['batch']:5d}  unsupported: {r['note']}")
            continue
        print(
            f"{r['layer']:>10s} {r['shape']:>10s} {r['batch']:5d} {r['dense_ms']:9.4f} "
            f"{r['sparse_ms']:9.4f} {r['speedup']:6.2f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sparsities and batch sizes")
    parser.add_argument(
        "--min-run-time",
        type=float,
        default=None,
        help="seconds per figure (default 0.2, quick 0.05)",
    )
    parser.add_argument("--skip-cpu", action="store_true", help="only the CUDA 2:4 part")
    args = parser.parse_args()
    min_run_time = args.min_run_time or (0.05 if args.quick else 0.2)
    sparsities = QUICK_SPARSITIES if args.quick else SPARSITIES
    batches = QUICK_BATCHES if args.quick else BATCHES
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s); median of "
        f">= {min_run_time:g} s of runs per figure; x = dense time / sparse time"
    )
    if not args.skip_cpu:
        cpu_sweep(sparsities, batches, min_run_time)
        print()
    cuda_semi_structured(batches, min_run_time)


if __name__ == "__main__":
    main()
