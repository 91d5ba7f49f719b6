"""Pruning masks, built on ``torch.nn.utils.prune``.

The functional core computes masks (:func:`magnitude_masks`,
:func:`random_masks`); :mod:`companion.masks` puts them on a model
(:func:`~companion.masks.apply_masks`) and folds them in
(:func:`~companion.masks.make_permanent`), and :func:`iterative_prune` runs the
source article's prune-evaluate-restore loop. ``apply_masks``, ``current_masks``,
``is_pruned`` and ``make_permanent`` are importable from here too.

Masks use PyTorch's own re-parametrisation, so everything here interoperates
with ``torch.nn.utils.prune``: a pruned layer holds the parameter
``weight_orig`` and the buffer ``weight_mask``, and its ``weight`` is
recomputed as ``weight_orig * weight_mask`` before every forward pass. Pruned
weights therefore stay zero however the layer is trained, while their
original values are kept until :func:`make_permanent` folds the mask in.

A mask dict maps a layer's qualified name (``"fc1"``) to a tensor shaped like
its weight, with 1 for a kept weight and 0 for a pruned one.

Counting follows ``torch.nn.utils.prune``: pruning a fraction ``amount`` of
``n`` weights removes ``round(amount * n)`` of them. ``amount`` is always the
*total* fraction pruned in the result, and weights that are already masked
count as the smallest, so a larger ``amount`` prunes a superset of what a
smaller one pruned.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import prune

from .masks import (
    apply_masks,
    current_masks,
    current_weight,
    is_pruned,
    make_permanent,
    prunable_layers,
    refresh_masked_weights,
)
from .metrics import layer_sparsity, sparsity
from .utils import _check_callable, _check_generator, check_in_range, check_positive_int

__all__ = [
    "magnitude_masks",
    "random_masks",
    "apply_masks",
    "current_masks",
    "make_permanent",
    "is_pruned",
    "sparsity",
    "layer_sparsity",
    "structured_sparsity",
    "iterative_prune",
]

Scope = Literal["layer", "global"]


# --------------------------------------------------------------------------- validation


def _check_scope(scope: str) -> None:
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")


def _check_norm(norm: float) -> None:
    if isinstance(norm, bool) or not isinstance(norm, (int, float)) or not norm > 0:
        raise ValueError(f"norm must be a positive number (1 for L1, 2 for L2), got {norm!r}")


def _layers(model: nn.Module, structured: bool) -> dict[str, nn.Module]:
    """Layers a mask may cover: all prunable ones, minus the classifier when structured."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = prunable_layers(model)
    if not layers:
        raise ValueError("model has no prunable (Linear or Conv) layers")
    if structured:
        # The last layer's rows are the classes: removing one removes a class.
        layers = dict(list(layers.items())[:-1])
        if not layers:
            raise ValueError(
                "structured pruning needs a hidden layer; the model has only its output layer"
            )
    return layers


# --------------------------------------------------------------------------- mask core


def _mask_from_scores(
    scores: dict[str, torch.Tensor],
    amount: float,
    scope: str,
    shapes: dict[str, torch.Size],
    structured: bool,
) -> dict[str, torch.Tensor]:
    """Prune the lowest-scoring units; ``scores[name]`` has one entry per unit (weight or row)."""
    masks: dict[str, torch.Tensor] = {}
    if scope == "layer":
        for name, score in scores.items():
            n = score.numel()
            n_keep = n - round(amount * n)
            keep = torch.zeros(n, dtype=torch.bool, device=score.device)
            if n_keep > 0:
                # topk(largest=True) on the kept units, as torch.nn.utils.prune does.
                keep[torch.topk(score.flatten(), k=n_keep, largest=True).indices] = True
            masks[name] = keep
    else:
        names = list(scores)
        flat = torch.cat([scores[name].flatten() for name in names])
        guarded = flat.clone()
        # Global pruning never empties a layer: each layer's best unit is protected.
        # An emptied layer outputs a constant and the network collapses to chance.
        offset = 0
        for name in names:
            n = scores[name].numel()
            guarded[offset + int(torch.argmax(scores[name].flatten()))] = float("inf")
            offset += n
        total = flat.numel()
        n_prune = min(round(amount * total), total - len(names))
        drop = torch.zeros(total, dtype=torch.bool, device=flat.device)
        if n_prune > 0:
            drop[torch.topk(guarded, k=n_prune, largest=False).indices] = True
        offset = 0
        for name in names:
            n = scores[name].numel()
            masks[name] = ~drop[offset : offset + n]
            offset += n
    out = {}
    for name, keep in masks.items():
        shape = shapes[name]
        keep = keep.to(torch.float32)
        if structured:  # one entry per row: broadcast it over the row
            keep = keep.view(-1, *([1] * (len(shape) - 1))).expand(shape)
        out[name] = keep.reshape(shape).clone()
    return out


def _unit_scores(
    layers: dict[str, nn.Module],
    structured: bool,
    norm: float,
    score_fn: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Size]]:
    scores, shapes = {}, {}
    for name, module in layers.items():
        weight = current_weight(module)
        shapes[name] = weight.shape
        pruned = weight == 0 if not prune.is_pruned(module) else module.weight_mask == 0
        if structured:
            rows = weight.flatten(1)
            score = score_fn(rows.norm(p=norm, dim=1))
            dead = pruned.flatten(1).all(dim=1)
            score = torch.where(dead, torch.full_like(score, -1.0), score)
        else:
            score = score_fn(weight.abs())
            if prune.is_pruned(module):
                score = torch.where(pruned, torch.full_like(score, -1.0), score)
        scores[name] = score
    return scores, shapes


@torch.no_grad()
def magnitude_masks(
    model: nn.Module,
    amount: float,
    *,
    scope: Scope = "layer",
    structured: bool = False,
    norm: float = 1,
) -> dict[str, torch.Tensor]:
    r"""Masks that prune the ``amount`` fraction of weights (or neurons) of smallest magnitude.

    Unstructured: weight :math:`w` is ranked by :math:`|w|`. Structured:
    output neuron (row) :math:`j` of a layer is ranked by the norm of its
    incoming weights, :math:`\lVert W_{j,:} \rVert_p` with :math:`p` = ``norm``
    (for a convolution, the whole filter), and the output layer is never
    pruned structurally. With ``scope="layer"`` every layer loses the same
    fraction; with ``scope="global"`` one ranking covers all layers, so layers
    with many small weights lose more; a guard keeps each layer's
    highest-ranked weight (neuron), because an emptied layer cuts the network.

    On a fresh model the masks equal those of ``prune.l1_unstructured``,
    ``prune.global_unstructured`` (``L1Unstructured``) and
    ``prune.ln_structured(dim=0)`` (ties aside).

    Args:
        model: The network; its effective (masked) weights are ranked and
            already-pruned weights rank lowest.
        amount: Total fraction to prune, in ``[0, 1]``.
        scope: ``"layer"`` or ``"global"``.
        structured: Prune whole output neurons (rows) instead of weights.
        norm: The norm ranking rows when ``structured`` (1 or 2 usually).

    Returns:
        ``{layer name: mask}`` with masks shaped like the weights (1 keep, 0 prune).

    Raises:
        ValueError: If ``amount`` is outside ``[0, 1]``, ``scope`` is unknown,
            ``norm`` is not positive, or the model has no prunable layer.
        TypeError: If ``model`` is not an ``nn.Module``.

    Example:
        >>> layer = nn.Linear(4, 1)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[0.1, -3.0, 0.2, 2.0]]))
        >>> magnitude_masks(nn.Sequential(layer), 0.5)["0"].tolist()
        [[0.0, 1.0, 0.0, 1.0]]
    """
    check_in_range("amount", amount, 0.0, 1.0)
    _check_scope(scope)
    _check_norm(norm)
    layers = _layers(model, structured)
    scores, shapes = _unit_scores(layers, structured, norm, lambda s: s)
    return _mask_from_scores(scores, amount, scope, shapes, structured)


@torch.no_grad()
def random_masks(
    model: nn.Module,
    amount: float,
    *,
    scope: Scope = "layer",
    structured: bool = False,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Masks that prune a random ``amount`` fraction of weights (or neurons).

    This is what the source article's algorithm text describes ("randomly
    delete part of the neurons and connections"); it is the baseline that a
    pruning criterion must beat. Same counts, scopes, guard and composition
    rules as :func:`magnitude_masks`.

    Args:
        model: The network.
        amount: Total fraction to prune, in ``[0, 1]``.
        scope: ``"layer"`` or ``"global"``.
        structured: Prune whole output neurons.
        generator: A CPU ``torch.Generator`` for reproducible masks.

    Returns:
        ``{layer name: mask}``.

    Raises:
        ValueError: As :func:`magnitude_masks`.
        TypeError: If ``model`` is not an ``nn.Module`` or ``generator`` is
            not a ``torch.Generator``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> masks = random_masks(nn.Sequential(nn.Linear(10, 10)), 0.3, generator=g)
        >>> int((masks["0"] == 0).sum())
        30
    """
    check_in_range("amount", amount, 0.0, 1.0)
    _check_scope(scope)
    _check_generator(generator)
    layers = _layers(model, structured)

    def random_score(s: torch.Tensor) -> torch.Tensor:
        return torch.rand(s.shape, generator=generator).to(s.device)

    scores, shapes = _unit_scores(layers, structured, 1, random_score)
    return _mask_from_scores(scores, amount, scope, shapes, structured)


def structured_sparsity(model: nn.Module) -> float:
    """Fraction of hidden neurons (rows of every layer but the last) whose weights are all zero."""
    layers = _layers(model, structured=True)
    dead = sum(int((current_weight(m).flatten(1).abs().sum(1) == 0).sum()) for m in layers.values())
    total = sum(m.weight.shape[0] for m in layers.values())
    return dead / total


# --------------------------------------------------------------------------- the article's loop


def iterative_prune(
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    *,
    step: float,
    target: float,
    tolerance: float,
    criterion: Literal["magnitude", "random"] = "magnitude",
    structured: bool = False,
    scope: Scope = "layer",
    norm: float = 1,
    finetune: Callable[[nn.Module], object] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    mode: Literal["hard", "soft"] = "soft",
    min_step: float | None = None,
    reference: float | None = None,
    generator: torch.Generator | None = None,
    max_rounds: int = 100,
) -> list[dict[str, object]]:
    """The source article's loop: prune a little more, evaluate, restore if accuracy fell too far.

    Each round raises the pruned fraction by ``step`` (up to ``target``),
    builds new masks with the chosen criterion, applies them, optionally
    fine-tunes, and evaluates. If the accuracy is more than ``tolerance``
    below the reference, the round is undone: weights, masks and the
    optimizer's state are restored exactly as they were, and the loop either
    halves the step (while it stays >= ``min_step``) or stops. It also stops
    once ``target`` is reached.

    Two modes follow the article's two definitions:

    * ``mode="soft"``: pruned weights are set to zero through masks but kept
      in ``weight_orig``; the model ends still masked, and can be un-pruned.
    * ``mode="hard"``: pruned weights are also erased from ``weight_orig``
      (gone for good), and the masks are made permanent at the end; with
      ``structured=True`` the result is ready for :func:`companion.surgery.shrink`.

    Args:
        model: The trained network, modified in place.
        evaluate: ``evaluate(model) -> accuracy`` (on a validation set).
        step: Pruned fraction added per round, in ``(0, 1]``.
        target: Pruned fraction to reach, in ``[0, 1]``.
        tolerance: Largest accepted drop below the reference accuracy, >= 0.
        criterion: ``"magnitude"`` or ``"random"``.
        structured: Prune whole hidden neurons (fractions then count neurons).
        scope: ``"layer"`` or ``"global"``.
        norm: Row norm for structured magnitude pruning.
        finetune: ``finetune(model)`` called after each pruning step.
        optimizer: An optimizer used by ``finetune``; its state is restored
            together with the weights when a round is undone.
        mode: ``"soft"`` or ``"hard"`` (see above).
        min_step: Halve the step after a rejected round while it stays at or
            above this; ``None`` stops at the first rejection.
        reference: The accuracy to compare with, in ``[0, 1]`` (default:
            ``evaluate(model)`` before pruning).
        generator: Random-number generator for ``criterion="random"``.
        max_rounds: Safety limit on the number of rounds, >= 1.

    Returns:
        A list with one dict per round, with keys ``round``, ``step``, ``amount`` (pruned fraction
        tried), ``sparsity`` (weight sparsity after the round), ``accuracy``,
        ``accepted``.

    Raises:
        ValueError: For out-of-range ``step``, ``target``, ``tolerance``,
            ``min_step``, ``reference`` or ``max_rounds``, an unknown
            ``criterion``, ``scope`` or ``mode``, or a model without prunable
            layers.
        TypeError: If ``evaluate`` or ``finetune`` is not callable,
            ``optimizer`` is not a ``torch.optim.Optimizer``, ``generator`` is
            not a ``torch.Generator``, or ``max_rounds`` is not an int.

    Example:
        >>> net = nn.Sequential(nn.Linear(8, 2))
        >>> history = iterative_prune(net, lambda m: 1.0, step=0.25, target=0.5, tolerance=0.0)
        >>> [(r["amount"], r["accepted"]) for r in history]
        [(0.25, True), (0.5, True)]
    """
    check_in_range("step", step, 0.0, 1.0, low_inclusive=False)
    check_in_range("target", target, 0.0, 1.0)
    check_in_range("tolerance", tolerance, 0.0, 1.0)
    if min_step is not None:
        check_in_range("min_step", min_step, 0.0, step, low_inclusive=False)
    if criterion not in ("magnitude", "random"):
        raise ValueError(f"criterion must be 'magnitude' or 'random', got {criterion!r}")
    if mode not in ("hard", "soft"):
        raise ValueError(f"mode must be 'hard' or 'soft', got {mode!r}")
    if not callable(evaluate):
        raise TypeError(f"evaluate must be callable, got {type(evaluate).__name__}")
    _check_callable("finetune", finetune)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}"
        )
    if reference is not None:
        check_in_range("reference", reference, 0.0, 1.0)
    check_positive_int("max_rounds", max_rounds)
    _check_generator(generator)
    _check_scope(scope)
    layers = _layers(model, structured)
    if reference is None:
        reference = float(evaluate(model))
    # Give every layer a mask up front so that the state dict keeps one shape
    # and a snapshot can be restored with load_state_dict.
    apply_masks(
        model,
        {
            name: current_masks(model).get(name, torch.ones_like(m.weight))
            for name, m in layers.items()
        },
    )
    amount = structured_sparsity(model) if structured else sparsity(model)
    history: list[dict[str, object]] = []
    for round_ in range(1, max_rounds + 1):
        if amount >= target:
            break
        new_amount = min(amount + step, target)
        snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
        optimizer_state = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
        if criterion == "magnitude":
            masks = magnitude_masks(
                model, new_amount, scope=scope, structured=structured, norm=norm
            )
        else:
            masks = random_masks(
                model, new_amount, scope=scope, structured=structured, generator=generator
            )
        apply_masks(model, masks)
        if mode == "hard":
            with torch.no_grad():
                for name in masks:
                    layers[name].weight_orig.mul_(layers[name].weight_mask)
        if finetune is not None:
            finetune(model)
        accuracy = float(evaluate(model))
        accepted = accuracy >= reference - tolerance
        history.append(
            {
                "round": round_,
                "step": step,
                "amount": new_amount,
                "sparsity": sparsity(model),
                "accuracy": accuracy,
                "accepted": accepted,
            }
        )
        if accepted:
            amount = new_amount
            continue
        model.load_state_dict(snapshot)
        refresh_masked_weights(model)  # load_state_dict leaves the computed weight stale
        if optimizer is not None:
            optimizer.load_state_dict(optimizer_state)
        if min_step is not None and step / 2 >= min_step:
            step = step / 2
        else:
            break
    if mode == "hard":
        make_permanent(model)
    return history
