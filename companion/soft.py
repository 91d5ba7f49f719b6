r"""Soft pruning: weights that are zeroed but kept, so they can come back.

Three tools, all driven by :func:`companion.training.train`'s callbacks:

* :class:`SoftPruner`, soft filter (neuron) pruning after He et al. (2018): at
  the end of every epoch the smallest-magnitude weights (or rows) are *set* to
  zero, not masked. Their gradients are not blocked, so during the next epoch
  they are updated like every other weight and may grow back above the
  threshold; the set of pruned weights is chosen anew each epoch. At the end,
  :meth:`SoftPruner.finalize` turns the last selection into a permanent one.
* :func:`cubic_sparsity` and :class:`GradualPruner`, gradual magnitude pruning
  with the schedule of Zhu and Gupta (2017):

  .. math:: s_t = s_f + (s_i - s_f)\left(1 - \frac{t - t_0}{n\,\Delta t}\right)^3,

  raising the sparsity quickly while many redundant weights remain and slowly
  near the target. Pruned weights are masked (hard) here; what is gradual is
  the schedule.
* :func:`save_sparse` / :func:`load_sparse`, compressed sparse row (CSR)
  storage of a pruned model's nonzero weights: what zeros buy on disk.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .io import ModelFileError, atomic_write, read_archive
from .metrics import effective_weights, prunable_layers
from .pruning import (
    Scope,
    _check_norm,
    _check_scope,
    _layers,
    apply_masks,
    magnitude_masks,
    make_permanent,
)
from .utils import check_in_range, check_positive_int

__all__ = [
    "cubic_sparsity",
    "SoftPruner",
    "GradualPruner",
    "save_sparse",
    "load_sparse",
    "SPARSE_FORMAT",
]

SPARSE_FORMAT = "companion-sparse"


# --------------------------------------------------------------------------- soft filter pruning


class SoftPruner:
    """Soft filter/neuron pruning (He et al. 2018): zero the smallest weights every epoch, keep training them.

    Pass :meth:`on_epoch_end` to :func:`~companion.training.train`. Each call
    ranks the model's current weights by magnitude (rows by their norm when
    ``structured``), writes zeros into the ``amount`` fraction that ranks
    lowest, and records how many weights that were zeroed at the previous
    call have grown back into the kept set (``history["regrown"]``). Nothing
    is masked, so the optimizer keeps updating the zeroed weights.

    Args:
        model: The network; it must not carry ``torch.nn.utils.prune`` masks.
        amount: Fraction pruned at every epoch end, in ``[0, 1]``.
        scope: ``"layer"`` or ``"global"``, as in :func:`~companion.pruning.magnitude_masks`.
        structured: Prune whole output neurons (the output layer is never pruned).
        norm: Row norm used when ``structured``.

    Raises:
        ValueError: If ``amount``, ``scope`` or ``norm`` is invalid, the model
            has no prunable layer (no hidden one when ``structured``), or it is
            already masked.
        TypeError: If ``model`` is not an ``nn.Module``.

    Example:
        >>> from companion.models import MLP
        >>> net = MLP((4, 6, 2))
        >>> pruner = SoftPruner(net, 0.5, structured=True)
        >>> pruner.on_epoch_end(1)
        >>> int((net.fc1.weight.abs().sum(1) == 0).sum())
        3
    """

    def __init__(
        self,
        model: nn.Module,
        amount: float,
        *,
        scope: Scope = "layer",
        structured: bool = False,
        norm: float = 2,
    ) -> None:
        check_in_range("amount", amount, 0.0, 1.0)
        _check_scope(scope)
        _check_norm(norm)
        _layers(model, structured)
        if any(hasattr(m, "weight_mask") for m in model.modules()):
            raise ValueError(
                "model already carries pruning masks; soft pruning needs plain weights "
                "(call companion.pruning.make_permanent first, or start from a dense model)"
            )
        self.model, self.amount, self.scope = model, float(amount), scope
        self.structured, self.norm = structured, norm
        self.masks: dict[str, torch.Tensor] = {}
        self.history: dict[str, list] = {"epoch": [], "regrown": [], "pruned": []}

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> None:
        """Recompute the magnitude masks and zero the selected weights in place."""
        masks = magnitude_masks(
            self.model,
            self.amount,
            scope=self.scope,
            structured=self.structured,
            norm=self.norm,
        )
        regrown = 0
        if self.masks:
            regrown = sum(
                int(((self.masks[name] == 0) & (mask == 1)).sum()) for name, mask in masks.items()
            )
        layers = prunable_layers(self.model)
        for name, mask in masks.items():
            layers[name].weight.mul_(mask)
        self.masks = masks
        self.history["epoch"].append(epoch)
        self.history["regrown"].append(regrown)
        self.history["pruned"].append(sum(int((m == 0).sum()) for m in masks.values()))

    def finalize(self) -> nn.Module:
        """End soft pruning: fix the last selection with masks and fold them in (hard step).

        Returns:
            The model, with the pruned weights exact zeros in plain ``weight``
            parameters; for structured pruning of an MLP, follow with
            :func:`companion.surgery.shrink` to remove the zero rows.

        Raises:
            RuntimeError: If :meth:`on_epoch_end` was never called.
        """
        if not self.masks:
            raise RuntimeError("finalize() needs at least one on_epoch_end() call first")
        apply_masks(self.model, self.masks)
        return make_permanent(self.model)


# --------------------------------------------------------------------------- gradual pruning


def cubic_sparsity(
    step: int,
    *,
    final: float,
    initial: float = 0.0,
    start: int = 0,
    duration: int,
) -> float:
    r"""The sparsity target of Zhu and Gupta's (2017) gradual pruning at ``step``.

    .. math:: s_t = s_f + (s_i - s_f)\left(1 - \frac{t - t_0}{n\,\Delta t}\right)^3

    with :math:`t_0` = ``start`` and :math:`n\,\Delta t` = ``duration``;
    :math:`s_i` before ``start`` and :math:`s_f` after ``start + duration``.

    Args:
        step: The training step :math:`t` (>= 0).
        final: :math:`s_f`, in ``[0, 1]``.
        initial: :math:`s_i`, in ``[0, final]``.
        start: :math:`t_0` (>= 0).
        duration: :math:`n\,\Delta t` (>= 1).

    Returns:
        The target sparsity in ``[initial, final]``, non-decreasing in ``step``.

    Raises:
        ValueError: If an argument is outside its range.

    Example:
        >>> [round(cubic_sparsity(t, final=0.9, duration=10), 4) for t in (0, 1, 5, 10, 20)]
        [0.0, 0.2439, 0.7875, 0.9, 0.9]
    """
    check_in_range("final", final, 0.0, 1.0)
    check_in_range("initial", initial, 0.0, final)
    check_positive_int("step", step, allow_zero=True)
    check_positive_int("start", start, allow_zero=True)
    check_positive_int("duration", duration)
    progress = min(max((step - start) / duration, 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


class GradualPruner:
    """Gradual magnitude pruning on the cubic schedule, as an ``on_step`` callback.

    Every ``every`` steps from ``start`` to ``start + duration`` the model is
    re-masked to :func:`cubic_sparsity` of the current step with
    :func:`~companion.pruning.magnitude_masks` (already-pruned weights rank
    lowest, so each mask contains the previous one).

    Args:
        model: The network.
        final: Target sparsity :math:`s_f`.
        duration: Steps over which the sparsity rises (>= 1).
        initial: Starting sparsity :math:`s_i`.
        start: First pruning step :math:`t_0`.
        every: Steps between mask updates :math:`\\Delta t` (>= 1).
        scope: ``"layer"`` or ``"global"``.
        structured: Prune whole output neurons.

    Raises:
        ValueError: If an argument is outside its range, or the model has no
            prunable layer (no hidden one when ``structured``).
        TypeError: If ``model`` is not an ``nn.Module``.

    Example:
        >>> from companion.models import MLP
        >>> from companion.metrics import sparsity
        >>> net = MLP((10, 10, 2))
        >>> pruner = GradualPruner(net, final=0.5, duration=4, every=2)
        >>> for step in range(1, 6):
        ...     pruner.on_step(step)
        >>> round(sparsity(net), 2)
        0.5
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        final: float,
        duration: int,
        initial: float = 0.0,
        start: int = 0,
        every: int = 1,
        scope: Scope = "layer",
        structured: bool = False,
    ) -> None:
        # validates final, initial, start and duration with the schedule's own checks
        cubic_sparsity(start, final=final, initial=initial, start=start, duration=duration)
        check_positive_int("every", every)
        _check_scope(scope)
        _layers(model, structured)
        self.model, self.final, self.initial = model, float(final), float(initial)
        self.start, self.duration, self.every = start, duration, every
        self.scope, self.structured = scope, structured
        self.history: dict[str, list] = {"step": [], "sparsity": []}

    def target(self, step: int) -> float:
        """The schedule's sparsity at ``step``."""
        return cubic_sparsity(
            step, final=self.final, initial=self.initial, start=self.start, duration=self.duration
        )

    def on_step(self, step: int) -> None:
        """Update the masks if ``step`` is a pruning step of the schedule."""
        end = self.start + self.duration
        if step < self.start:
            return
        due = step <= end and (step - self.start) % self.every == 0
        # when duration is not a multiple of every, the final sparsity comes at the first step past the end
        finishing = step >= end and (
            not self.history["sparsity"] or self.history["sparsity"][-1] < self.final
        )
        if not (due or finishing):
            return
        amount = self.target(step)
        masks = magnitude_masks(self.model, amount, scope=self.scope, structured=self.structured)
        apply_masks(self.model, masks)
        self.history["step"].append(step)
        self.history["sparsity"].append(amount)


# --------------------------------------------------------------------------- sparse storage


def _index_dtype(limit: int) -> torch.dtype:
    return torch.int16 if limit < 2**15 else torch.int32 if limit < 2**31 else torch.int64


def save_sparse(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save the effective weights of ``model`` with its layers' weights in CSR form.

    Every prunable layer's weight (flattened to rows for convolutions) is
    stored as compressed sparse rows: the nonzero values, their column
    indices and row pointers, with the smallest integer type that holds them.
    Biases and other tensors are stored dense. The archive loads with
    ``weights_only=True`` and is written atomically.

    Args:
        model: A dense or pruned model (masks are read, not required).
        path: Destination file; its folder must exist.

    Returns:
        The path written.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``, or ``path`` is not a
            ``str`` or ``os.PathLike``.
        FileNotFoundError: If the destination folder does not exist.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    weights = effective_weights(model)
    dense: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.endswith(("_orig", "_mask")):
            continue
        dense[key] = value.detach().cpu().clone()
    sparse: dict[str, dict[str, Any]] = {}
    for key, weight in weights.items():
        dense.pop(key, None)
        rows = weight.detach().cpu().reshape(weight.shape[0], -1)
        kept = rows != 0
        crow = torch.cat([torch.zeros(1, dtype=torch.int64), kept.sum(1).cumsum(0)])
        sparse[key] = {
            "shape": list(weight.shape),
            "values": rows[kept].clone(),
            "col_indices": kept.nonzero()[:, 1].to(_index_dtype(rows.shape[1])),
            "crow_indices": crow.to(_index_dtype(rows.numel() + 1)),
        }
    payload = {"format": SPARSE_FORMAT, "version": 1, "dense": dense, "sparse": sparse}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_sparse(path: str | os.PathLike, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Read a file written by :func:`save_sparse` back into a dense state dict.

    Args:
        path: The file.
        model: If given, a plain (unmasked) model of the same architecture to
            load the weights into.

    Returns:
        The dense state dict (``"fc1.weight"``, ``"fc1.bias"``, ...).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        companion.io.ModelFileError: If the file is damaged or of another format.
        TypeError: If ``model`` is neither ``None`` nor an ``nn.Module``.
        ValueError: If ``model``'s parameters do not match the file's.
    """
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
    payload = read_archive(path, SPARSE_FORMAT)
    state = dict(payload["dense"])
    for key, entry in payload["sparse"].items():
        shape = entry["shape"]
        n_rows, n_cols = shape[0], math.prod(shape[1:])
        crow, cols, values = (
            entry["crow_indices"].long(),
            entry["col_indices"].long(),
            entry["values"],
        )
        consistent = (
            crow.numel() == n_rows + 1
            and int(crow[0]) == 0
            and bool((crow.diff() >= 0).all())
            and int(crow[-1]) == values.numel() == cols.numel()
            and (cols.numel() == 0 or (int(cols.min()) >= 0 and int(cols.max()) < n_cols))
        )
        if not consistent:
            raise ModelFileError(
                f"{path}: the CSR arrays of {key!r} are inconsistent; the file is corrupt"
            )
        dense = torch.zeros(n_rows, n_cols, dtype=values.dtype)
        dense[torch.repeat_interleave(torch.arange(n_rows), crow.diff()), cols] = values
        state[key] = dense.reshape(shape)
    if model is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ValueError(
                f"model does not match the file {path} (load it into a plain model of the saved "
                f"architecture): {error}"
            ) from error
    return state
