r"""Sparse matrix kernels against dense: from which sparsity does a pruned layer compute faster?

A pruned weight :math:`W` (``out x in``) multiplies a batch of inputs
:math:`X` (``in x batch``). :func:`sparse_matmul_sweep` times :math:`W X` on
the CPU with :math:`W` stored

* dense (``torch.mm``: the zeros are multiplied like any other number),
* as ``torch.sparse`` CSR (``W.to_sparse_csr()``), pruned unstructured by
  magnitude (:func:`unstructured`), and
* as BSR (``W.to_sparse_bsr((b, b))``), pruned in whole ``b x b`` blocks
  (:func:`block_pruned`): BSR stores every block that holds a nonzero, so an
  unstructured mask would leave it almost dense,

with ``torch.utils.benchmark`` (median of blocked runs after a warm-up).
:func:`break_even` reads the lowest swept sparsity from which on a sparse
format beats dense. :func:`semi_structured_sweep` times 2:4 semi-structured
sparsity (``torch.sparse.to_sparse_semi_structured``) against dense on a CUDA
GPU of compute capability 8.0 or newer, the hardware with sparse tensor cores;
:func:`semi_structured_unavailable` says why it cannot run elsewhere.

Timings are measurements of one machine at one moment; nothing here asserts a
speed. Every sparse product is first checked against the dense product of the
same pruned weight, so a fast wrong kernel cannot enter a table.
``benchmarks/sparse_kernels.py`` runs the full sweep from the command line.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .pruning import magnitude_masks
from .utils import check_in_range, check_positive_int, make_generator

__all__ = [
    "LENET_FC1",
    "median_ms",
    "unstructured",
    "block_pruned",
    "break_even",
    "sparse_matmul_sweep",
    "semi_structured_unavailable",
    "semi_structured_sweep",
]

#: The weight shape of LeNet-300-100's first layer, ``(out, in)``.
LENET_FC1: tuple[int, int] = (300, 784)

Row = dict[str, object]


# --------------------------------------------------------------------------- validation


def _check_weight(weight: torch.Tensor) -> None:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(
            f"weight must be a 2-D floating-point matrix, got shape {tuple(weight.shape)} "
            f"and dtype {weight.dtype}"
        )


def _check_sparsities(sparsities: Sequence[float]) -> list[float]:
    values = list(sparsities)
    if not values:
        raise ValueError("sparsities must hold at least one fraction in [0, 1), got none")
    for s in values:
        check_in_range("sparsities", s, 0.0, 1.0, high_inclusive=False)
    return values


def _check_layers(layers: Mapping[str, tuple[int, int]], block: int) -> dict[str, tuple[int, int]]:
    if not isinstance(layers, Mapping) or not layers:
        raise ValueError("layers must be a non-empty dict {name: (out, in)}")
    checked = {}
    for name, shape in layers.items():
        if len(tuple(shape)) != 2:
            raise ValueError(f"layers[{name!r}] must be (out, in), got {shape!r}")
        rows, cols = (check_positive_int(f"layers[{name!r}]", int(v)) for v in shape)
        if rows % block or cols % block:
            raise ValueError(
                f"layers[{name!r}] = {(rows, cols)} must split into {block}x{block} blocks "
                f"(both sides multiples of block={block})"
            )
        checked[name] = (rows, cols)
    return checked


def _timer_module():
    # torch.utils.benchmark logs "No CUDA runtime is found" on CPU-only machines: noise here.
    logger = logging.getLogger("torch.utils.cpp_extension")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import torch.utils.benchmark as benchmark
    finally:
        logger.setLevel(previous)
    return benchmark


# --------------------------------------------------------------------------- building blocks


def median_ms(stmt: str, min_run_time: float = 0.05, **tensors: torch.Tensor) -> float:
    """Median time of one ``stmt`` in milliseconds, measured with ``torch.utils.benchmark``.

    One call first (first-call allocations, library handles), then
    ``blocked_autorange(min_run_time)``, with as many threads as torch uses now.

    Args:
        stmt: The statement to time, e.g. ``"w @ x"``; ``torch`` and ``F``
            (``torch.nn.functional``) are available in it.
        min_run_time: Seconds of repeated runs to take the median over, > 0.
        **tensors: The names the statement uses.

    Returns:
        The median time of one run, in milliseconds.

    Raises:
        ValueError: If ``min_run_time`` is not positive.

    Example:
        >>> median_ms("a + b", 0.001, a=torch.ones(4), b=torch.ones(4)) > 0
        True
    """
    check_in_range("min_run_time", min_run_time, 0.0, float("inf"), low_inclusive=False)
    benchmark = _timer_module()
    timer = benchmark.Timer(
        stmt=stmt, globals={"torch": torch, "F": F, **tensors}, num_threads=torch.get_num_threads()
    )
    timer.timeit(1)
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def unstructured(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """``weight`` with the ``sparsity`` fraction of smallest magnitudes set to zero.

    The mask is :func:`companion.pruning.magnitude_masks` of a Linear layer
    holding ``weight``, so exactly ``round(sparsity * weight.numel())`` entries
    become zero. ``weight`` itself is not changed.

    Args:
        weight: A 2-D floating-point matrix.
        sparsity: Fraction to zero, in ``[0, 1)``.

    Returns:
        A new tensor of the same shape.

    Raises:
        TypeError: If ``weight`` is not a tensor.
        ValueError: If ``weight`` is not a 2-D float matrix or ``sparsity`` is outside ``[0, 1)``.

    Example:
        >>> unstructured(torch.tensor([[0.1, -3.0, 0.2, 2.0]]), 0.5).tolist()
        [[0.0, -3.0, 0.0, 2.0]]
    """
    _check_weight(weight)
    check_in_range("sparsity", sparsity, 0.0, 1.0, high_inclusive=False)
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False).to(weight.device, weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return weight * magnitude_masks(nn.Sequential(layer), sparsity)["0"]


def block_pruned(weight: torch.Tensor, sparsity: float, block: int = 4) -> torch.Tensor:
    """``weight`` with the ``sparsity`` fraction of ``block x block`` tiles of smallest L1 norm zeroed.

    Exactly ``round(sparsity * tiles)`` whole tiles become zero, the pattern a
    BSR matrix with that block size stores without padding. ``weight`` itself
    is not changed.

    Args:
        weight: A 2-D floating-point matrix whose sides are multiples of ``block``.
        sparsity: Fraction of tiles to zero, in ``[0, 1)``.
        block: Tile side, >= 1.

    Returns:
        A new tensor of the same shape.

    Raises:
        TypeError: If ``weight`` is not a tensor.
        ValueError: For a bad ``weight``, ``sparsity`` or ``block``, or sides
            that are not multiples of ``block``.

    Example:
        >>> w = torch.tensor([[1.0, 1.0, 0.1, 0.1], [1.0, 1.0, 0.1, 0.1]])
        >>> block_pruned(w, 0.5, block=2).tolist()
        [[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]
    """
    _check_weight(weight)
    check_in_range("sparsity", sparsity, 0.0, 1.0, high_inclusive=False)
    block = check_positive_int("block", block)
    rows, cols = weight.shape
    if rows % block or cols % block:
        raise ValueError(
            f"weight of shape {(rows, cols)} does not split into {block}x{block} blocks"
        )
    tiles = weight.reshape(rows // block, block, cols // block, block).abs().sum((1, 3))
    keep = torch.zeros(tiles.numel(), device=weight.device, dtype=weight.dtype)
    n_keep = tiles.numel() - round(sparsity * tiles.numel())
    keep[torch.topk(tiles.flatten(), n_keep).indices] = 1.0
    mask = keep.view_as(tiles).repeat_interleave(block, 0).repeat_interleave(block, 1)
    return weight * mask


def break_even(sparsities: Sequence[float], speedups: Sequence[float]) -> float | None:
    """The lowest sparsity from which on (it and every higher one) the speed-up exceeds 1.

    A single lucky point below a slower one does not count: the sparsities
    are walked from the highest down and the walk stops at the first
    speed-up of 1 or less.

    Args:
        sparsities: The swept sparsities.
        speedups: Dense time / sparse time at each, same length.

    Returns:
        The break-even sparsity, or ``None`` if the sparse kernel is not faster
        even at the highest sparsity swept.

    Raises:
        ValueError: If the lengths differ or the sequences are empty.

    Example:
        >>> break_even([0.5, 0.9, 0.99], [0.3, 1.2, 4.0])
        0.9
        >>> break_even([0.5, 0.9, 0.99], [1.1, 0.9, 4.0])
        0.99
        >>> break_even([0.5, 0.9], [0.2, 0.8]) is None
        True
    """
    sparsities, speedups = list(sparsities), list(speedups)
    if not sparsities or len(sparsities) != len(speedups):
        raise ValueError(
            "sparsities and speedups must be non-empty and of the same length, got "
            f"{len(sparsities)} and {len(speedups)}"
        )
    found = None
    for sparsity, speedup in sorted(zip(sparsities, speedups, strict=True), reverse=True):
        if not speedup > 1:
            break
        found = sparsity
    return found


# --------------------------------------------------------------------------- the CPU sweep


def sparse_matmul_sweep(
    layers: Mapping[str, tuple[int, int]],
    sparsities: Sequence[float],
    batches: Sequence[int],
    *,
    min_run_time: float = 0.05,
    block: int = 4,
    seed: int = 0,
) -> list[Row]:
    r"""Time :math:`W X` dense, as CSR (unstructured pruning) and as BSR (block pruning).

    For each layer shape a Gaussian weight is drawn (``make_generator(seed)``),
    pruned to each sparsity by :func:`unstructured` (for CSR) and by
    :func:`block_pruned` (for BSR), and multiplied with a Gaussian
    ``in x batch`` input on the CPU. Before timing, each sparse product is
    checked against the dense product of the same pruned weight.

    Args:
        layers: ``{name: (out, in)}``; both sides multiples of ``block``.
        sparsities: Fractions in ``[0, 1)``.
        batches: Batch sizes (columns of :math:`X`), each >= 1.
        min_run_time: Seconds of repeated runs per figure (see :func:`median_ms`).
        block: BSR block side, >= 1.
        seed: Logical seed of the random weights and inputs.

    Returns:
        One row per (layer, batch, sparsity) with keys ``layer``, ``shape``,
        ``batch``, ``sparsity``, ``dense_ms``, ``csr_ms``, ``bsr_ms``,
        ``csr_speedup`` and ``bsr_speedup`` (dense time / sparse time). The
        dense time of a (layer, batch) is measured once and repeated in its rows.

    Raises:
        ValueError: For empty or out-of-range arguments or shapes that do not
            split into blocks.
        AssertionError: If a sparse product differs from the dense one.

    Example:
        >>> rows = sparse_matmul_sweep({"tiny": (8, 8)}, [0.5], [2], min_run_time=0.001)
        >>> [(r["layer"], r["shape"], r["batch"], r["sparsity"]) for r in rows]
        [('tiny', '8x8', 2, 0.5)]
    """
    block = check_positive_int("block", block)
    layers = _check_layers(layers, block)
    sparsities = _check_sparsities(sparsities)
    batches = [check_positive_int("batches", b) for b in batches]
    if not batches:
        raise ValueError("batches must hold at least one batch size, got none")
    check_in_range("min_run_time", min_run_time, 0.0, float("inf"), low_inclusive=False)
    generator = make_generator(seed)
    rows: list[Row] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse (CSR|BSR) tensor support is in beta")
        for name, (out, inp) in layers.items():
            weight = torch.randn(out, inp, generator=generator)
            pruned = {s: unstructured(weight, s) for s in sparsities}
            blocked = {s: block_pruned(weight, s, block) for s in sparsities}
            for batch in batches:
                x = torch.randn(inp, batch, generator=generator)
                dense_ms = median_ms("w @ x", min_run_time, w=weight, x=x)
                for s in sparsities:
                    csr = pruned[s].to_sparse_csr()
                    bsr = blocked[s].to_sparse_bsr((block, block))
                    torch.testing.assert_close(csr @ x, pruned[s] @ x, rtol=1e-4, atol=1e-3)
                    torch.testing.assert_close(bsr @ x, blocked[s] @ x, rtol=1e-4, atol=1e-3)
                    csr_ms = median_ms("w @ x", min_run_time, w=csr, x=x)
                    bsr_ms = median_ms("w @ x", min_run_time, w=bsr, x=x)
                    rows.append(
                        {
                            "layer": name,
                            "shape": f"{out}x{inp}",
                            "batch": batch,
                            "sparsity": s,
                            "dense_ms": dense_ms,
                            "csr_ms": csr_ms,
                            "bsr_ms": bsr_ms,
                            "csr_speedup": dense_ms / csr_ms,
                            "bsr_speedup": dense_ms / bsr_ms,
                        }
                    )
    return rows


# --------------------------------------------------------------------------- 2:4 on the GPU


def semi_structured_unavailable() -> str | None:
    """Why 2:4 semi-structured kernels cannot run here, or ``None`` if they can.

    They need CUDA and a GPU of compute capability >= 8.0 (sparse tensor
    cores, NVIDIA Ampere and later).

    Returns:
        A sentence naming the reason, or ``None``.

    Example:
        >>> reason = semi_structured_unavailable()
        >>> reason is None or isinstance(reason, str)
        True
    """
    if not torch.cuda.is_available():
        return "no CUDA device: 2:4 sparse kernels need a GPU with sparse tensor cores"
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 0):
        return (
            f"{torch.cuda.get_device_name()} has compute capability {major}.{minor}; "
            "sparse tensor cores need >= 8.0"
        )
    return None


def semi_structured_sweep(
    layers: Mapping[str, tuple[int, int]],
    batches: Sequence[int],
    *,
    min_run_time: float = 0.05,
    seed: int = 0,
) -> list[Row]:
    """Time float16 ``F.linear`` with a 2:4 semi-structured weight against the dense weight (CUDA).

    The weight is pruned 2:4 by magnitude (:func:`companion.saliency.nm_masks`),
    converted with ``torch.sparse.to_sparse_semi_structured`` and checked
    against the dense product before timing.

    Args:
        layers: ``{name: (out, in)}``; ``in`` a multiple of 64 and ``out`` of
            32 suit the kernels (others may be rejected, recorded in ``note``).
        batches: Batch sizes (rows of the input), each >= 1.
        min_run_time: Seconds of repeated runs per figure.
        seed: Logical seed of the random weights and inputs.

    Returns:
        One row per (layer, batch) with keys ``layer``, ``shape``, ``batch``,
        ``dense_ms``, ``sparse_ms``, ``speedup`` and ``note`` (empty, or why
        the kernel refused; the times are then ``None``).

    Raises:
        RuntimeError: If :func:`semi_structured_unavailable` gives a reason.
        ValueError: For empty or out-of-range arguments.
    """
    reason = semi_structured_unavailable()
    if reason is not None:
        raise RuntimeError(f"2:4 semi-structured kernels unavailable: {reason}")
    from torch.sparse import to_sparse_semi_structured

    from .saliency import nm_masks

    layers = _check_layers(layers, 1)
    batches = [check_positive_int("batches", b) for b in batches]
    if not batches:
        raise ValueError("batches must hold at least one batch size, got none")
    generator = make_generator(seed)
    rows: list[Row] = []
    for name, (out, inp) in layers.items():
        layer = nn.Linear(inp, out, bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(out, inp, generator=generator))
        mask = nm_masks(nn.Sequential(layer), 2, 4)["0"]
        weight = (layer.weight.detach() * mask).half().to("cuda")
        base = {"layer": name, "shape": f"{out}x{inp}"}
        try:
            sparse = to_sparse_semi_structured(weight)
        except RuntimeError as error:
            note = str(error).splitlines()[0]
            rows += [
                {
                    **base,
                    "batch": b,
                    "dense_ms": None,
                    "sparse_ms": None,
                    "speedup": None,
                    "note": note,
                }
                for b in batches
            ]
            continue
        for batch in batches:
            x = torch.randn(batch, inp, generator=generator).half().to("cuda")
            try:
                out_sparse = F.linear(x, sparse)
            except RuntimeError as error:
                rows.append(
                    {
                        **base,
                        "batch": batch,
                        "dense_ms": None,
                        "sparse_ms": None,
                        "speedup": None,
                        "note": str(error).splitlines()[0],
                    }
                )
                continue
            torch.testing.assert_close(out_sparse, F.linear(x, weight), rtol=1e-2, atol=1e-1)
            dense_ms = median_ms("F.linear(x, w)", min_run_time, w=weight, x=x)
            sparse_ms = median_ms("F.linear(x, w)", min_run_time, w=sparse, x=x)
            rows.append(
                {
                    **base,
                    "batch": batch,
                    "dense_ms": dense_ms,
                    "sparse_ms": sparse_ms,
                    "speedup": dense_ms / sparse_ms,
                    "note": "",
                }
            )
    return rows
