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
  the schedule. Given the optimizer, it also clears the momentum that the
  pruned weights had built up (:func:`clear_pruned_momentum_`).
* :func:`save_sparse` / :func:`load_sparse`, compressed sparse row (CSR)
  storage of a pruned model's nonzero weights: what zeros buy on disk.

The experiment protocols of chapter 3 run one arm of a comparison for one
seed; the chapter repeats them over seeds with
:func:`companion.stats.over_seeds` and compares arms with paired intervals.
Arms that share a seed share the initialisation and the data order.

* :func:`train_with_penalty`: the article network with an L2 penalty, weight
  decay or the L1 proximal step;
* :func:`train_reference`: the dense reference, with copies at chosen epochs;
* :func:`soft_from_scratch`: :class:`SoftPruner` while training from scratch;
* :func:`prune_and_finetune`: one-shot, gradual or soft pruning of a trained
  network with a fixed training budget;
* :func:`zeroed_neuron_gradients`: which zeroed ReLU neurons get gradient;
* :func:`latency_rounds`: interleaved per-round latencies, for paired intervals.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from .data import num_batches
from .io import ModelFileError, atomic_write, read_archive
from .masks import effective_weights, output_layers, prunable_layers
from .models import article_mlp, lenet_300_100
from .penalties import l2_penalty, soft_threshold_
from .pruning import (
    Scope,
    _check_norm,
    _check_scope,
    _layers,
    apply_masks,
    magnitude_masks,
    make_permanent,
)
from .speed import latency
from .training import evaluate, make_optimizer, train
from .utils import check_in_range, check_positive_int, clone_model, seed_everything

__all__ = [
    "cubic_sparsity",
    "SoftPruner",
    "GradualPruner",
    "clear_pruned_momentum_",
    "save_sparse",
    "load_sparse",
    "SPARSE_FORMAT",
    "train_with_penalty",
    "train_reference",
    "soft_from_scratch",
    "prune_and_finetune",
    "zeroed_neuron_gradients",
    "latency_rounds",
    "METHODS",
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
        structured: Prune whole output neurons (the output layers, found from
            the graph by :func:`~companion.masks.output_layers`, never are).
        norm: Row norm used when ``structured``.
        exclude: Layer names to leave completely unpruned.

    Only weights are zeroed at each epoch end, never a bias: a zeroed ReLU
    neuron with a positive bias keeps receiving gradient and can grow back
    (see :func:`zeroed_neuron_gradients`). :meth:`SoftPruner.finalize` kills the
    pruned units completely (bias and BatchNorm too) when ``structured``.

    Raises:
        ValueError: If ``amount``, ``scope`` or ``norm`` is invalid, the model
            has no prunable layer (no hidden one when ``structured``), it is
            already masked, or ``exclude`` names an unknown layer.
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
        exclude: Sequence[str] = (),
    ) -> None:
        check_in_range("amount", amount, 0.0, 1.0)
        _check_scope(scope)
        _check_norm(norm)
        _layers(model, structured, exclude)
        if any(hasattr(m, "weight_mask") for m in model.modules()):
            raise ValueError(
                "model already carries pruning masks; soft pruning needs plain weights "
                "(call companion.pruning.make_permanent first, or start from a dense model)"
            )
        self.model, self.amount, self.scope = model, float(amount), scope
        self.structured, self.norm, self.exclude = structured, norm, list(exclude)
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
            exclude=self.exclude,
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

        With ``structured=True`` the pruned units are killed completely
        (``apply_masks(..., structured=True)``: their biases, and a BatchNorm
        after them, become zero too), so they output exactly zero.

        Returns:
            The model, with the pruned weights exact zeros in plain ``weight``
            parameters; for structured pruning of an MLP, follow with
            :func:`companion.surgery.shrink` to remove the zero rows.

        Raises:
            RuntimeError: If :meth:`on_epoch_end` was never called.
        """
        if not self.masks:
            raise RuntimeError("finalize() needs at least one on_epoch_end() call first")
        apply_masks(self.model, self.masks, structured=self.structured)
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
        structured: Prune whole output neurons, killing each pruned one
            completely (``apply_masks(..., structured=True)``: bias and
            BatchNorm masked too).
        optimizer: The optimizer that trains ``model`` (pass the same instance
            to :func:`~companion.training.train` with ``optimizer=``). If
            given, every mask update also clears the optimizer's momentum at
            the pruned positions (:func:`clear_pruned_momentum_`). Without
            it, a momentum buffer built before a weight was pruned keeps
            moving that weight's stored value in ``weight_orig`` for a while
            (the effective weight stays zero, but the value a restore would
            bring back is no longer the value the weight had when pruned).
        exclude: Layer names to leave completely unpruned.

    Raises:
        ValueError: If an argument is outside its range, the model has no
            prunable layer (no hidden one when ``structured``), or ``exclude``
            names an unknown layer.
        TypeError: If ``model`` is not an ``nn.Module``, or ``optimizer`` is
            neither ``None`` nor a ``torch.optim.Optimizer``.

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
        optimizer: torch.optim.Optimizer | None = None,
        exclude: Sequence[str] = (),
    ) -> None:
        # validates final, initial, start and duration with the schedule's own checks
        cubic_sparsity(start, final=final, initial=initial, start=start, duration=duration)
        check_positive_int("every", every)
        _check_scope(scope)
        _layers(model, structured, exclude)
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be None or a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        self.model, self.final, self.initial = model, float(final), float(initial)
        self.start, self.duration, self.every = start, duration, every
        self.scope, self.structured, self.exclude = scope, structured, list(exclude)
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
        masks = magnitude_masks(
            self.model, amount, scope=self.scope, structured=self.structured, exclude=self.exclude
        )
        apply_masks(self.model, masks, structured=self.structured)
        if self.optimizer is not None:
            clear_pruned_momentum_(self.model, self.optimizer)
        self.history["step"].append(step)
        self.history["sparsity"].append(amount)


#: Optimizer state entries that move a parameter even when its gradient is zero.
_MOMENTUM_KEYS = ("momentum_buffer", "exp_avg")


@torch.no_grad()
def clear_pruned_momentum_(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    r"""Zero the optimizer's momentum at the masked positions of every pruned layer, in place.

    A mask stops the gradient, :math:`\partial L/\partial w_{orig} = m \odot
    \partial L/\partial w`, but not momentum. SGD with momentum :math:`\mu`
    updates :math:`b \leftarrow \mu b + g` and
    :math:`w_{orig} \leftarrow w_{orig} - \eta b`, so a buffer :math:`b`
    built before the mask keeps moving :math:`w_{orig}` where :math:`m = 0`
    (by :math:`\eta\mu b/(1-\mu)` in total). This multiplies SGD's
    ``momentum_buffer`` and Adam's ``exp_avg`` of each masked tensor's
    ``*_orig`` by its mask: every ``weight_orig``, and the biases and
    BatchNorm parameters that ``apply_masks(..., structured=True)`` masks
    (Adam's ``exp_avg_sq`` only scales steps and is left alone).

    Args:
        model: A model pruned with masks (``weight_orig``/``weight_mask``);
            unmasked tensors are skipped.
        optimizer: The optimizer training ``model``'s parameters.

    Returns:
        The number of masked tensors whose momentum was cleared.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module`` or ``optimizer`` is not
            a ``torch.optim.Optimizer``.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 1, bias=False))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.5)
        >>> net[0].weight.grad = torch.ones(1, 2)
        >>> opt.step()
        >>> _ = apply_masks(net, {"0": torch.tensor([[0.0, 1.0]])})
        >>> clear_pruned_momentum_(net, opt)
        1
        >>> opt.state[net[0].weight_orig]["momentum_buffer"].tolist()
        [[0.0, 1.0]]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    cleared = 0
    for module in model.modules():
        for name, orig in module.named_parameters(recurse=False):
            mask = getattr(module, f"{name[: -len('_orig')]}_mask", None)
            if not name.endswith("_orig") or mask is None or orig not in optimizer.state:
                continue
            touched = False
            for key in _MOMENTUM_KEYS:
                buffer = optimizer.state[orig].get(key)
                if isinstance(buffer, torch.Tensor) and buffer.shape == mask.shape:
                    buffer.mul_(mask)
                    touched = True
            cleared += touched
    return cleared


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


# --------------------------------------------------------------------------- chapter 3 protocols

#: The pruning methods of :func:`prune_and_finetune`.
METHODS = ("one-shot", "gradual", "soft")


def _check_seed(seed: int) -> int:
    return check_positive_int("seed", seed, allow_zero=True)


def _check_lr(lr: float) -> float:
    return check_in_range("lr", lr, 0.0, float("inf"), low_inclusive=False, high_inclusive=False)


def _device_of(dataset: TensorDataset) -> torch.device:
    if not isinstance(dataset, TensorDataset):
        raise TypeError(f"dataset must be a TensorDataset, got {type(dataset).__name__}")
    return dataset.tensors[0].device


def train_with_penalty(
    seed: int,
    dataset: TensorDataset,
    *,
    l2: float = 0.0,
    l1: float = 0.0,
    weight_decay: float = 0.0,
    include_bias: bool = False,
    epochs: int = 1,
    lr: float = 0.1,
    batch_size: int = 128,
    model_fn: Callable[[], nn.Module] = article_mlp,
) -> nn.Module:
    r"""Train a fresh network with plain SGD and at most one kind of weight penalty.

    * ``l2`` = :math:`\lambda`: the penalty :math:`\lambda \sum_i w_i^2` added
      to the loss (:func:`~companion.penalties.l2_penalty`);
    * ``weight_decay``: the optimizer's decay, :math:`\text{wd}\cdot w` added
      to every gradient (biases included), equal to ``l2 = wd / 2`` with
      ``include_bias=True``;
    * ``l1`` = :math:`\lambda`: the L1 proximal step, a soft threshold of
      :math:`\eta\lambda` after every step (:func:`~companion.penalties.soft_threshold_`).

    Args:
        seed: Logical seed of the initialisation and the data order (>= 0).
        dataset: Training data (its device is the model's).
        l2: L2 penalty weight, >= 0.
        l1: L1 weight of the proximal step, >= 0.
        weight_decay: The optimizer's weight decay, >= 0.
        include_bias: Penalise the biases too (``l2`` only).
        epochs: Passes over ``dataset``, >= 1.
        lr: SGD learning rate :math:`\eta`, > 0.
        batch_size: Examples per step, >= 1.
        model_fn: Builds the untrained network (default: the article's 784-128-10 MLP).

    Returns:
        The trained model.

    Raises:
        ValueError: For a negative penalty, more than one penalty at once, or
            other out-of-range numbers.
        TypeError: For arguments of the wrong type.

    Example:
        >>> ds = TensorDataset(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))
        >>> net = train_with_penalty(0, ds, l1=1e-2, batch_size=32)
        >>> bool((net.fc1.weight == 0).any())
        True
    """
    _check_seed(seed)
    device = _device_of(dataset)
    for name, value in (("l2", l2), ("l1", l1), ("weight_decay", weight_decay)):
        check_in_range(name, value, 0.0, float("inf"), high_inclusive=False)
    if sum(v > 0 for v in (l2, l1, weight_decay)) > 1:
        raise ValueError(
            f"use at most one of l2, l1 and weight_decay, got l2={l2}, l1={l1}, "
            f"weight_decay={weight_decay}"
        )
    _check_lr(lr)
    seed_everything(seed)
    model = model_fn().to(device)
    on_step = None
    if l1 > 0:

        def on_step(_step: int) -> None:
            soft_threshold_(model, lr * l1)

    train(
        model,
        dataset,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        penalty=(lambda m: l2_penalty(m, include_bias=include_bias)) if l2 > 0 else None,
        penalty_weight=l2,
        weight_decay=weight_decay,
        on_step=on_step,
        seed=seed,
        progress=False,
    )
    return model


def train_reference(
    seed: int,
    dataset: TensorDataset,
    *,
    epochs: int,
    lr: float,
    momentum: float = 0.9,
    batch_size: int = 128,
    eval_set: TensorDataset | None = None,
    keep: Sequence[int] = (),
    model_fn: Callable[[], nn.Module] = lenet_300_100,
) -> dict[str, object]:
    """Train the dense reference network for one seed, keeping copies of its weights at some epochs.

    With a constant learning rate, the copy after epoch ``k`` is exactly the
    network a ``k``-epoch run with the same seed would give, so one run
    provides references for several budgets.

    Args:
        seed: Logical seed of the initialisation and the data order (>= 0).
        dataset: Training data.
        epochs: Epochs, >= 1.
        lr: Learning rate, > 0.
        momentum: SGD momentum, in ``[0, 1)``.
        batch_size: Examples per step, >= 1.
        eval_set: Evaluated after every epoch (``history["eval_accuracy"]``).
        keep: Epochs (each in ``[1, epochs]``) after which a copy of the model is kept.
        model_fn: Builds the untrained network (default: LeNet-300-100).

    Returns:
        A dict with ``"model"`` (the trained model), ``"history"`` (train's
        history) and ``"snapshots"`` (``{epoch: copy of the model after it}``).

    Raises:
        ValueError: If an epoch in ``keep`` is outside ``[1, epochs]``, or a
            number is out of range.
        TypeError: For arguments of the wrong type.

    Example:
        >>> ds = TensorDataset(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))
        >>> run = train_reference(0, ds, epochs=2, lr=0.01, batch_size=32, keep=[1])
        >>> sorted(run["snapshots"]), run["history"]["epoch"]
        ([1], [1, 2])
    """
    _check_seed(seed)
    device = _device_of(dataset)
    check_positive_int("epochs", epochs)
    _check_lr(lr)
    keep = [check_positive_int("keep", k) for k in keep]
    if any(k > epochs for k in keep):
        raise ValueError(f"keep must hold epochs in [1, {epochs}], got {keep}")
    seed_everything(seed)
    model = model_fn().to(device)
    snapshots: dict[int, nn.Module] = {}

    def on_epoch_end(epoch: int) -> None:
        if epoch in keep:
            snapshots[epoch] = clone_model(model)

    history = train(
        model,
        dataset,
        epochs=epochs,
        lr=lr,
        momentum=momentum,
        batch_size=batch_size,
        eval_set=eval_set,
        seed=seed,
        on_epoch_end=on_epoch_end,
        progress=False,
    )
    return {"model": model, "history": history, "snapshots": snapshots}


def soft_from_scratch(
    seed: int,
    dataset: TensorDataset,
    *,
    amount: float,
    structured: bool = False,
    scope: Scope = "layer",
    epochs: int,
    lr: float,
    momentum: float = 0.9,
    batch_size: int = 128,
    eval_set: TensorDataset | None = None,
    model_fn: Callable[[], nn.Module] = lenet_300_100,
) -> dict[str, object]:
    """Train a fresh network with soft pruning at every epoch end (:class:`~companion.soft.SoftPruner`).

    With the same ``seed`` as :func:`train_reference`, the network starts from
    the same initialisation and sees the data in the same order, so the two
    are paired. Unstructured, this is soft *weight* pruning with regrowth;
    structured, soft filter (neuron) pruning in the sense of He et al. (2018).

    Args:
        seed: Logical seed of the initialisation and the data order (>= 0).
        dataset: Training data.
        amount: Fraction zeroed at every epoch end, in ``[0, 1]``.
        structured: Zero whole hidden neurons instead of single weights.
        scope: ``"layer"`` or ``"global"``.
        epochs: Epochs, >= 1.
        lr: Learning rate, > 0.
        momentum: SGD momentum, in ``[0, 1)``.
        batch_size: Examples per step, >= 1.
        eval_set: Evaluated after every epoch, after the zeroing.
        model_fn: Builds the untrained network.

    Returns:
        A dict with ``"model"`` (the network after the last zeroing, plain
        weights, not finalized), ``"pruner"`` (the SoftPruner, with its
        regrowth history) and ``"history"`` (train's history).

    Raises:
        ValueError, TypeError: For invalid arguments (as :class:`~companion.soft.SoftPruner`
            and :func:`~companion.training.train`).

    Example:
        >>> ds = TensorDataset(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))
        >>> run = soft_from_scratch(0, ds, amount=0.5, epochs=2, lr=0.01, batch_size=32)
        >>> run["pruner"].history["epoch"]
        [1, 2]
    """
    _check_seed(seed)
    device = _device_of(dataset)
    _check_lr(lr)
    seed_everything(seed)
    model = model_fn().to(device)
    pruner = SoftPruner(model, amount, scope=scope, structured=structured, norm=2)
    history = train(
        model,
        dataset,
        epochs=epochs,
        lr=lr,
        momentum=momentum,
        batch_size=batch_size,
        eval_set=eval_set,
        seed=seed,
        on_epoch_end=pruner.on_epoch_end,
        progress=False,
    )
    return {"model": model, "pruner": pruner, "history": history}


def prune_and_finetune(
    model: nn.Module,
    dataset: TensorDataset,
    *,
    method: Literal["one-shot", "gradual", "soft"],
    amount: float,
    seed: int,
    epochs: int,
    lr: float,
    momentum: float = 0.9,
    batch_size: int = 128,
    scope: Scope = "layer",
    structured: bool = False,
    gradual_fraction: float = 0.6,
    every: int = 20,
    zeroing_eval: TensorDataset | None = None,
) -> dict[str, object]:
    """Prune a copy of a trained network to ``amount`` with one method and a fixed training budget.

    Every method gets the same ``epochs`` over ``dataset`` with the same
    optimizer settings and, for one ``seed``, the same data order:

    * ``"one-shot"``: magnitude masks at ``amount`` first, then fine-tuning
      with the masks fixed;
    * ``"gradual"``: :class:`~companion.soft.GradualPruner` raises the
      sparsity on the cubic schedule over the first ``gradual_fraction`` of
      the steps (a mask update every ``every`` steps; the optimizer's momentum
      is cleared at pruned positions), then the masks stay fixed;
    * ``"soft"``: :class:`~companion.soft.SoftPruner` zeroes the smallest
      ``amount`` before training and at every epoch end; the zeroed weights
      keep training in between.

    Args:
        model: The trained network; it is copied, not modified.
        dataset: Training data for the budget.
        method: ``"one-shot"``, ``"gradual"`` or ``"soft"``.
        amount: Final pruned fraction, in ``[0, 1]``.
        seed: Logical seed of the data order (>= 0).
        epochs: Training epochs after (or during) pruning, >= 1.
        lr: Learning rate, > 0.
        momentum: SGD momentum, in ``[0, 1)``.
        batch_size: Examples per step, >= 1.
        scope: ``"layer"`` (every layer loses ``amount``) or ``"global"``.
        structured: Prune whole hidden neurons (by L2 norm of their rows); the
            one-shot and gradual masks then kill each pruned neuron completely
            (bias masked too), the soft zeroing touches weights only.
        gradual_fraction: Share of the steps over which ``"gradual"`` raises
            the sparsity, in ``(0, 1]``.
        every: Steps between gradual mask updates, >= 1.
        zeroing_eval: For ``"soft"``: if given, its accuracy is measured just
            before and just after every epoch-end zeroing.

    Returns:
        A dict with ``"model"`` (the pruned, trained copy: masked for one-shot
        and gradual, plain weights after the last zeroing for soft),
        ``"pruner"`` (the GradualPruner or SoftPruner, ``None`` for one-shot),
        ``"history"`` (train's history) and ``"zeroing"`` (one dict with
        ``"epoch"``, ``"before"`` and ``"after"`` per epoch-end zeroing; empty
        unless ``method="soft"`` with ``zeroing_eval``).

    Raises:
        ValueError: For an unknown ``method`` or ``scope``, an out-of-range number.
        TypeError: For arguments of the wrong type.

    Example:
        >>> from companion.metrics import sparsity
        >>> ds = TensorDataset(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))
        >>> net = lenet_300_100()
        >>> run = prune_and_finetune(net, ds, method="gradual", amount=0.9, seed=0, epochs=2,
        ...                          lr=0.01, batch_size=16, every=1)
        >>> round(sparsity(run["model"]), 3)
        0.9
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    _check_seed(seed)
    _device_of(dataset)
    check_in_range("amount", amount, 0.0, 1.0)
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    _check_lr(lr)
    check_in_range("momentum", momentum, 0.0, 1.0, high_inclusive=False)
    _check_scope(scope)
    check_in_range("gradual_fraction", gradual_fraction, 0.0, 1.0, low_inclusive=False)
    check_positive_int("every", every)
    net = clone_model(model)
    optimizer = make_optimizer(net, lr=lr, momentum=momentum)
    budget = dict(epochs=epochs, batch_size=batch_size, optimizer=optimizer, seed=seed)
    zeroing: list[dict[str, float]] = []
    pruner: GradualPruner | SoftPruner | None = None
    if method == "one-shot":
        masks = magnitude_masks(net, amount, scope=scope, structured=structured, norm=2)
        apply_masks(net, masks, structured=structured)
        history = train(net, dataset, progress=False, **budget)
    elif method == "gradual":
        steps = epochs * num_batches(dataset, batch_size)
        pruner = GradualPruner(
            net,
            final=amount,
            duration=max(1, int(gradual_fraction * steps)),
            every=every,
            scope=scope,
            structured=structured,
            optimizer=optimizer,
        )
        history = train(net, dataset, on_step=pruner.on_step, progress=False, **budget)
    else:
        soft = SoftPruner(net, amount, scope=scope, structured=structured, norm=2)
        soft.on_epoch_end(0)  # start from the pruned network, like the other methods
        pruner = soft

        def on_epoch_end(epoch: int) -> None:
            if zeroing_eval is None:
                soft.on_epoch_end(epoch)
                return
            before = evaluate(net, zeroing_eval)["accuracy"]
            soft.on_epoch_end(epoch)
            after = evaluate(net, zeroing_eval)["accuracy"]
            zeroing.append({"epoch": epoch, "before": before, "after": after})

        history = train(net, dataset, on_epoch_end=on_epoch_end, progress=False, **budget)
    return {"model": net, "pruner": pruner, "history": history, "zeroing": zeroing}


def zeroed_neuron_gradients(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> dict[str, dict[str, int | bool]]:
    """For every hidden layer: which neurons with all-zero incoming weights receive gradient.

    A hidden ReLU neuron whose incoming weights are all zero has the constant
    pre-activation ``b`` (its bias). With ``b <= 0`` its output and derivative
    are zero on every input, so no gradient reaches its weights; with
    ``b > 0`` the gradient can be nonzero. This computes the cross-entropy
    gradient on ``(inputs, targets)`` and compares.

    Args:
        model: An MLP whose hidden layers are followed by ReLU (e.g. LeNet-300-100).
        inputs: A batch of inputs on the model's device.
        targets: Their class indices.

    Returns:
        ``{layer name: counts}`` for every prunable layer but the output layers, where
        counts holds ``"zeroed"``, ``"positive_bias"`` and ``"with_gradient"``
        (numbers of zeroed neurons) and
        ``"gradient_exactly_where_bias_positive"`` (a bool).

    Raises:
        TypeError: If ``model`` is not an ``nn.Module`` or ``inputs``/``targets`` are not tensors.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.zero_(); _ = net[0].bias.copy_(torch.tensor([1.0, -1.0]))
        >>> zeroed_neuron_gradients(net, torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))["0"]
        {'zeroed': 2, 'positive_bias': 1, 'with_gradient': 1, 'gradient_exactly_where_bias_positive': True}
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise TypeError("inputs and targets must be tensors")
    outputs = output_layers(model)
    layers = [(name, m) for name, m in prunable_layers(model).items() if name not in outputs]
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(inputs), targets).backward()
    report: dict[str, dict[str, int | bool]] = {}
    for name, layer in layers:
        weight = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        grad = layer.weight.grad.reshape(weight.shape)
        zeroed = weight.abs().sum(1) == 0
        has_gradient = zeroed & (grad.abs().sum(1) > 0)
        positive = zeroed & (layer.bias.detach() > 0)
        report[name] = {
            "zeroed": int(zeroed.sum()),
            "positive_bias": int(positive.sum()),
            "with_gradient": int(has_gradient.sum()),
            "gradient_exactly_where_bias_positive": bool(torch.equal(has_gradient, positive)),
        }
    model.zero_grad(set_to_none=True)
    return report


def latency_rounds(
    models: Mapping[str, nn.Module],
    batch_size: int = 256,
    *,
    rounds: int = 7,
    seconds_per_round: float = 0.1,
    input_shape: Sequence[int] = (1, 28, 28),
    device: str | torch.device = "cpu",
) -> dict[str, list[float]]:
    """Forward-pass latency of several models, one median per interleaved round.

    Every round times every model for ``seconds_per_round`` (with
    :func:`companion.speed.latency`), so a burst of background load lands on
    all models of a round alike; ratios taken round by round are paired
    measurements that :func:`companion.stats.summarize` can put an interval on.

    Args:
        models: ``{label: model}``; copies are timed on ``device``.
        batch_size: Batch size, >= 1.
        rounds: Interleaved rounds, >= 2.
        seconds_per_round: Measurement time per model and round, > 0.
        input_shape: Shape of one example.
        device: Where to time the copies.

    Returns:
        ``{label: [seconds per forward pass, one per round]}``.

    Raises:
        ValueError: If ``models`` is empty or a number is out of range.

    Example:
        >>> times = latency_rounds({"a": nn.Linear(4, 2)}, 8, rounds=2, seconds_per_round=0.01,
        ...                        input_shape=(4,))
        >>> len(times["a"])
        2
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty mapping of {label: model}")
    check_positive_int("batch_size", batch_size)
    if check_positive_int("rounds", rounds) < 2:
        raise ValueError(f"rounds must be an integer >= 2 for an interval, got {rounds}")
    check_in_range("seconds_per_round", seconds_per_round, 0.0, float("inf"), low_inclusive=False)
    copies = {label: clone_model(m).to(torch.device(device)) for label, m in models.items()}
    samples: dict[str, list[float]] = {label: [] for label in copies}
    for _ in range(rounds):
        for label, net in copies.items():
            samples[label].append(
                latency(net, batch_size, input_shape=input_shape, min_run_time=seconds_per_round)
            )
    return samples
