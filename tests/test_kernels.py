"""companion.kernels: pruned weights for the sparse formats, break-even, the timing sweep (no speed asserted)."""

from __future__ import annotations

import pytest
import torch

from companion import kernels


def _weight(rows: int = 8, cols: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9])
def test_unstructured_zeros_the_smallest_magnitudes_exactly(sparsity):
    weight = _weight()
    pruned = kernels.unstructured(weight, sparsity)
    zeros = int((pruned == 0).sum())
    assert zeros == round(sparsity * weight.numel())
    kept = pruned != 0
    if zeros and kept.any():
        assert weight[~kept].abs().max() <= weight[kept].abs().min()
    torch.testing.assert_close(pruned[kept], weight[kept])


def test_unstructured_leaves_its_input_alone():
    weight = _weight()
    before = weight.clone()
    kernels.unstructured(weight, 0.5)
    assert torch.equal(weight, before)


@pytest.mark.parametrize("block", [2, 4])
def test_block_pruned_zeros_whole_tiles_of_smallest_norm(block):
    weight = _weight(8, 16)
    pruned = kernels.block_pruned(weight, 0.5, block)
    tiles = pruned.reshape(8 // block, block, 16 // block, block).abs().sum((1, 3))
    original = weight.reshape(8 // block, block, 16 // block, block).abs().sum((1, 3))
    zero_tiles = tiles == 0
    assert int(zero_tiles.sum()) == round(0.5 * tiles.numel())
    assert original[zero_tiles].max() <= original[~zero_tiles].min()
    # a kept tile is kept whole: its BSR form has exactly the kept tiles as blocks
    assert pruned.to_sparse_bsr((block, block)).values().shape[0] == int((~zero_tiles).sum())


def test_break_even_needs_every_higher_sparsity_faster():
    assert kernels.break_even([0.5, 0.8, 0.9, 0.99], [0.2, 1.1, 1.5, 3.0]) == 0.8
    assert kernels.break_even([0.5, 0.8, 0.9, 0.99], [1.5, 0.9, 1.5, 3.0]) == 0.9
    assert kernels.break_even([0.99, 0.5], [3.0, 2.0]) == 0.5  # order of the input does not matter
    assert kernels.break_even([0.5, 0.99], [0.5, 1.0]) is None  # equal is not faster


def test_sweep_rows_cover_the_grid_and_multiply_correctly():
    rows = kernels.sparse_matmul_sweep(
        {"a": (8, 8), "b": (4, 12)}, [0.5, 0.75], [1, 3], min_run_time=0.001, block=4
    )
    grid = [(r["layer"], r["batch"], r["sparsity"]) for r in rows]
    assert grid == [
        (layer, batch, s) for layer in ("a", "b") for batch in (1, 3) for s in (0.5, 0.75)
    ]
    for r in rows:
        assert r["shape"] == {"a": "8x8", "b": "4x12"}[r["layer"]]
        for key in ("dense_ms", "csr_ms", "bsr_ms", "csr_speedup", "bsr_speedup"):
            assert r[key] > 0
        assert r["csr_speedup"] == pytest.approx(r["dense_ms"] / r["csr_ms"])
    # one dense measurement per (layer, batch)
    assert len({(r["layer"], r["batch"], r["dense_ms"]) for r in rows}) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": {"a": (6, 8)}}, "blocks"),
        ({"layers": {}}, "non-empty"),
        ({"sparsities": [1.0]}, "sparsities"),
        ({"sparsities": []}, "sparsities"),
        ({"batches": [0]}, "batches"),
        ({"batches": []}, "batches"),
        ({"min_run_time": 0.0}, "min_run_time"),
    ],
)
def test_sweep_rejects_bad_arguments(kwargs, message):
    arguments = {"layers": {"a": (8, 8)}, "sparsities": [0.5], "batches": [1], **kwargs}
    with pytest.raises(ValueError, match=message):
        kernels.sparse_matmul_sweep(
            arguments.pop("layers"),
            arguments.pop("sparsities"),
            arguments.pop("batches"),
            **arguments,
        )


def test_pruning_helpers_reject_bad_input():
    with pytest.raises(ValueError, match="sparsity"):
        kernels.unstructured(_weight(), 1.0)
    with pytest.raises(ValueError, match="2-D"):
        kernels.unstructured(torch.ones(3), 0.5)
    with pytest.raises(TypeError, match="weight"):
        kernels.unstructured([[1.0]], 0.5)
    with pytest.raises(ValueError, match="blocks"):
        kernels.block_pruned(_weight(6, 8), 0.5, 4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only answer")
def test_semi_structured_says_why_it_cannot_run_without_cuda():
    reason = kernels.semi_structured_unavailable()
    assert "CUDA" in reason
    with pytest.raises(RuntimeError, match="unavailable"):
        kernels.semi_structured_sweep({"a": (64, 64)}, [16])


@pytest.mark.skipif(
    kernels.semi_structured_unavailable() is not None, reason="needs CUDA with capability >= 8.0"
)
def test_semi_structured_sweep_on_a_capable_gpu():
    rows = kernels.semi_structured_sweep({"a": (128, 128)}, [32], min_run_time=0.001)
    assert [(r["layer"], r["batch"]) for r in rows] == [("a", 32)]
    assert rows[0]["note"] or rows[0]["speedup"] > 0
