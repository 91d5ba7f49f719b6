"""Sparse matmul kernels against dense: from which sparsity does a pruned layer compute faster?

A pruned weight ``W`` (``out x in``) multiplies a batch of inputs ``X``
(``in x batch``); this script times ``W @ X`` on the CPU with ``W`` stored

* dense (``torch.mm``, zeros multiplied like any other number),
* as ``torch.sparse`` CSR (``W.to_sparse_csr()``), pruned unstructured by
  magnitude (:func:`companion.pruning.magnitude_masks`),
* as BSR (``W.to_sparse_bsr((4, 4))``), pruned in whole 4x4 blocks by their L1
  norm: BSR stores every block that holds a nonzero, so unstructured masks
  (at 90%, four blocks in five still hold one) would leave it almost dense,

for a LeNet-300-100 layer (300x784) and a large one (4096x4096), at several
sparsities and batch sizes, with ``torch.utils.benchmark`` (median of blocked
runs after warm-up). It prints one table of medians and speed-ups and, per
(layer, batch), the break-even sparsity: the lowest swept sparsity from which
on (it and every higher one) the sparse kernel beats dense, or "none".

On a CUDA GPU of compute capability >= 8.0 it also times 2:4 semi-structured
sparsity (``torch.sparse.to_sparse_semi_structured``, masks from
:func:`companion.saliency.nm_masks`) against dense ``F.linear`` in float16;
elsewhere it says why it skipped that part.

Run (one thread, as the book's CPU figures are; ``--quick`` takes a few minutes)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sparse_kernels.py --quick

This is a measurement, not a test: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import logging
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import companion as cp
from companion.saliency import nm_masks

LAYERS = {"LeNet fc1": (300, 784), "large": (4096, 4096)}
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
BATCHES = (1, 16, 64, 256)
QUICK_SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.99)
QUICK_BATCHES = (1, 16, 256)
BLOCK = 4


def _timer_module():
    # torch.utils.benchmark logs "No CUDA runtime is found" on CPU-only machines; it is noise here.
    logger = logging.getLogger("torch.utils.cpp_extension")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import torch.utils.benchmark as benchmark
    finally:
        logger.setLevel(previous)
    return benchmark


def median_ms(stmt: str, min_run_time: float, **tensors: torch.Tensor) -> float:
    """Median time of one ``stmt`` in milliseconds (``torch.utils.benchmark``, after warm-up)."""
    benchmark = _timer_module()
    timer = benchmark.Timer(
        stmt=stmt, globals={"torch": torch, "F": F, **tensors}, num_threads=torch.get_num_threads()
    )
    timer.timeit(1)  # warm-up: first-call allocations, MKL handle set-up
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def unstructured(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """``weight`` with the ``sparsity`` fraction of smallest magnitudes set to zero."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return weight * cp.pruning.magnitude_masks(nn.Sequential(layer), sparsity)["0"]


def block_pruned(weight: torch.Tensor, sparsity: float, block: int = BLOCK) -> torch.Tensor:
    """``weight`` with the ``sparsity`` fraction of ``block x block`` tiles of smallest L1 norm zeroed."""
    rows, cols = weight.shape
    tiles = weight.reshape(rows // block, block, cols // block, block).abs().sum((1, 3))
    keep = torch.zeros(tiles.numel())
    n_keep = tiles.numel() - round(sparsity * tiles.numel())
    keep[torch.topk(tiles.flatten(), n_keep).indices] = 1.0
    mask = keep.view_as(tiles).repeat_interleave(block, 0).repeat_interleave(block, 1)
    return weight * mask


def break_even(sparsities: list[float], speedups: list[float]) -> str:
    """Lowest sparsity from which on every speed-up exceeds 1, or "none"."""
    found = "none"
    for sparsity, speedup in sorted(zip(sparsities, speedups, strict=True), reverse=True):
        if speedup <= 1:
            break
        found = f"{sparsity:.0%}"
    return found


def cpu_sweep(sparsities: tuple, batches: tuple, min_run_time: float) -> None:
    generator = torch.Generator().manual_seed(0)
    header = (
        f"{'layer':>10s} {'shape':>10s} {'batch':>5s} {'sparsity':>8s} {'dense ms':>9s} "
        f"{'CSR ms':>9s} {'CSR x':>6s} {'BSR ms':>9s} {'BSR x':>6s}"
    )
    print(header)
    print("-" * len(header))
    summary = []
    for name, (rows, cols) in LAYERS.items():
        weight = torch.randn(rows, cols, generator=generator)
        pruned = {s: unstructured(weight, s) for s in sparsities}
        blocked = {s: block_pruned(weight, s) for s in sparsities}
        for batch in batches:
            x = torch.randn(cols, batch, generator=generator)
            dense_ms = median_ms("w @ x", min_run_time, w=weight, x=x)
            csr_speedups, bsr_speedups = [], []
            for sparsity in sparsities:
                csr = pruned[sparsity].to_sparse_csr()
                bsr = blocked[sparsity].to_sparse_bsr((BLOCK, BLOCK))
                # The kernels must compute what the dense product of the same weight computes.
                torch.testing.assert_close(csr @ x, pruned[sparsity] @ x, rtol=1e-4, atol=1e-3)
                torch.testing.assert_close(bsr @ x, blocked[sparsity] @ x, rtol=1e-4, atol=1e-3)
                csr_ms = median_ms("w @ x", min_run_time, w=csr, x=x)
                bsr_ms = median_ms("w @ x", min_run_time, w=bsr, x=x)
                csr_speedups.append(dense_ms / csr_ms)
                bsr_speedups.append(dense_ms / bsr_ms)
                print(
                    f"{name:>10s} {f'{rows}x{cols}':>10s} {batch:5d} {sparsity:8.0%} "
                    f"{dense_ms:9.4f} {csr_ms:9.4f} {dense_ms / csr_ms:6.2f} "
                    f"{bsr_ms:9.4f} {dense_ms / bsr_ms:6.2f}",
                    flush=True,
                )
            summary.append(
                (
                    name,
                    batch,
                    break_even(list(sparsities), csr_speedups),
                    break_even(list(sparsities), bsr_speedups),
                )
            )
    print()
    print("break-even sparsity (sparse faster than dense from here up; 'none': never in the sweep)")
    print(f"{'layer':>10s} {'batch':>5s} {'CSR':>6s} {'BSR 4x4':>8s}")
    for name, batch, csr, bsr in summary:
        print(f"{name:>10s} {batch:5d} {csr:>6s} {bsr:>8s}")


def cuda_semi_structured(batches: tuple, min_run_time: float) -> None:
    """2:4 semi-structured float16 ``F.linear`` against dense, where the GPU supports it."""
    if not torch.cuda.is_available():
        print("CUDA 2:4 semi-structured: skipped (no CUDA device)")
        return
    capability = torch.cuda.get_device_capability()
    device_name = torch.cuda.get_device_name()
    if capability < (8, 0):
        print(
            f"CUDA 2:4 semi-structured: skipped ({device_name} has compute capability "
            f"{capability[0]}.{capability[1]}; sparse tensor cores need >= 8.0)"
        )
        return
    from torch.sparse import to_sparse_semi_structured

    print(
        f"CUDA 2:4 semi-structured, float16, on {device_name} "
        f"(compute capability {capability[0]}.{capability[1]})"
    )
    header = (
        f"{'layer':>10s} {'shape':>10s} {'batch':>5s} {'dense ms':>9s} {'2:4 ms':>9s} {'2:4 x':>6s}"
    )
    print(header)
    print("-" * len(header))
    generator = torch.Generator().manual_seed(0)
    for name, (rows, cols) in LAYERS.items():
        layer = nn.Linear(cols, rows, bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(rows, cols, generator=generator))
        mask = nm_masks(nn.Sequential(layer), 2, 4)["0"]
        weight = (layer.weight.detach() * mask).half().cuda()
        try:
            sparse = to_sparse_semi_structured(weight)
        except RuntimeError as error:
            print(f"{name:>10s} {f'{rows}x{cols}':>10s}  unsupported: {str(error).splitlines()[0]}")
            continue
        for batch in batches:
            x = torch.randn(batch, cols, generator=generator).half().cuda()
            try:
                out = F.linear(x, sparse)
            except RuntimeError as error:
                print(f"{name:>10s} {f'{rows}x{cols}':>10s} {batch:5d}  unsupported: {error}")
                continue
            torch.testing.assert_close(out, F.linear(x, weight), rtol=1e-2, atol=1e-1)
            dense_ms = median_ms("F.linear(x, w)", min_run_time, w=weight, x=x)
            sparse_ms = median_ms("F.linear(x, w)", min_run_time, w=sparse, x=x)
            print(
                f"{name:>10s} {f'{rows}x{cols}':>10s} {batch:5d} {dense_ms:9.4f} "
                f"{sparse_ms:9.4f} {dense_ms / sparse_ms:6.2f}  ({type(sparse).__name__})",
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
    warnings.filterwarnings("ignore", message="Sparse (CSR|BSR) tensor support is in beta")
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
