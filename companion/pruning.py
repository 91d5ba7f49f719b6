"""Pruning masks, built on ``torch.nn.utils.prune``.

The functional core computes masks (:func:`masks_from_scores` from any
scores, :func:`magnitude_masks`, :func:`random_masks`); :mod:`companion.masks` puts them on a model
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
import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import prune

from .masks import (
    _check_exclude,
    apply_masks,
    current_masks,
    current_weight,
    erase_masked_,
    is_pruned,
    make_permanent,
    output_layers,
    prunable_layers,
    refresh_masked_weights,
)
from .metrics import layer_sparsity, sparsity
from .utils import _check_callable, _check_generator, check_in_range, check_positive_int

__all__ = [
    "masks_from_scores",
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


def _layers(
    model: nn.Module, structured: bool, exclude: Sequence[str] = ()
) -> dict[str, nn.Module]:
    """Layers a mask may cover: the prunable ones but ``exclude`` and, when structured, the output layers."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = prunable_layers(model)
    if not layers:
        raise ValueError("model has no prunable (Linear or Conv) layers")
    excluded = _check_exclude(layers, exclude)
    # The output layers' units are the classes: removing one removes a class.
    protected = output_layers(model, exclude=excluded) if structured else excluded
    kept = {name: m for name, m in layers.items() if name not in protected}
    if not kept:
        if structured:
            raise ValueError(
                "structured pruning needs a hidden layer; the model has only its output layer(s) "
                f"{list(protected)}" + (f" and exclude={excluded}" if excluded else "")
            )
        raise ValueError(f"exclude={excluded} leaves no layer to prune")
    return kept


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
    weight_scores: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Size]]:
    """One score per unit (weight, or row when structured); already-pruned units score lowest.

    ``weight_scores`` (shaped like the weights) replace ``|w|``; a row's score is then the
    ``norm`` of its row of scores, as a row's magnitude is the norm of its weights.
    """
    scores, shapes = {}, {}
    for name, module in layers.items():
        weight = current_weight(module)
        shapes[name] = weight.shape
        base = weight.abs() if weight_scores is None else weight_scores[name]
        pruned = weight == 0 if not prune.is_pruned(module) else module.weight_mask == 0
        if structured:
            score = score_fn(base.flatten(1).norm(p=norm, dim=1))
            dead = pruned.flatten(1).all(dim=1)
            score = torch.where(dead, torch.full_like(score, -math.inf), score)
        else:
            score = score_fn(base)
            if prune.is_pruned(module):
                score = torch.where(pruned, torch.full_like(score, -math.inf), score)
        scores[name] = score
    return scores, shapes


def _check_scores(layers: dict[str, nn.Module], scores: object) -> dict[str, torch.Tensor]:
    if not isinstance(scores, dict):
        raise TypeError(
            f"scores must be a dict of {{layer name: tensor}}, got {type(scores).__name__}"
        )
    checked = {}
    for name, score in scores.items():
        if name not in layers:
            raise ValueError(
                f"scores names {name!r}, which is not a prunable layer of the model; "
                f"layers are {list(layers)}"
            )
        if not isinstance(score, torch.Tensor):
            raise TypeError(f"scores[{name!r}] must be a tensor, got {type(score).__name__}")
        weight = layers[name].weight
        if score.shape != weight.shape:
            raise ValueError(
                f"scores[{name!r}] has shape {tuple(score.shape)}, but the weight of {name!r} has "
                f"shape {tuple(weight.shape)}"
            )
        score = score.detach().to(weight.device)
        if not score.is_floating_point():
            score = score.to(weight.dtype)
        if not bool(torch.isfinite(score).all()):
            raise ValueError(f"scores[{name!r}] must be finite (it holds NaN or infinity)")
        checked[name] = score
    return checked


@torch.no_grad()
def masks_from_scores(
    model: nn.Module,
    scores: dict[str, torch.Tensor],
    amount: float,
    *,
    scope: Scope = "layer",
    structured: bool = False,
    norm: float = 1,
    exclude: Sequence[str] = (),
) -> dict[str, torch.Tensor]:
    r"""Masks that prune the ``amount`` fraction of weights (or units) with the lowest scores.

    Any importance criterion (magnitude, a saliency, a random draw) gives one
    score per weight; this turns the scores into masks with the counting
    rules of the module docstring: ``round(amount * n)`` pruned per layer
    (``scope="layer"``) or over all scored layers (``scope="global"``, with
    a guard that keeps each layer's best weight or unit, since an emptied
    layer cuts the network), and weights already masked on the model rank
    lowest, so a larger ``amount`` prunes a superset. Structured: output
    unit :math:`j` scores :math:`\lVert s_{j,:} \rVert_p` (the ``norm`` of
    its row of scores; for a convolution, the whole filter), and the layers
    that produce the model's output (:func:`~companion.masks.output_layers`)
    are skipped even when scored. :func:`magnitude_masks` is this with
    :math:`s = |w|`.

    Args:
        model: The network; its current masks decide what is already pruned.
        scores: ``{layer name: tensor shaped like its weight}``; higher is more
            important. Only the layers named here get masks.
        amount: Total fraction to prune, in ``[0, 1]``.
        scope: ``"layer"`` or ``"global"``.
        structured: Prune whole output units (rows) instead of weights.
        norm: The norm that turns a row of scores into a unit's score.
        exclude: Layer names to leave completely unpruned.

    Returns:
        ``{layer name: mask}`` with masks shaped like the weights (1 keep, 0 prune).

    Raises:
        ValueError: If ``amount``, ``scope`` or ``norm`` is invalid, a score
            names an unknown layer, has the wrong shape or is not finite,
            ``exclude`` names an unknown layer, or no scored layer may be pruned.
        TypeError: If ``model`` is not a module or ``scores`` not a dict of tensors.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 1))
        >>> masks_from_scores(net, {"0": torch.tensor([[0.1, 3.0, 0.2, 2.0]])}, 0.5)["0"].tolist()
        [[0.0, 1.0, 0.0, 1.0]]
    """
    check_in_range("amount", amount, 0.0, 1.0)
    _check_scope(scope)
    _check_norm(norm)
    layers = _layers(model, structured, exclude)
    checked = _check_scores(prunable_layers(model), scores)
    chosen = {name: m for name, m in layers.items() if name in checked}
    if not chosen:
        raise ValueError(
            f"scores cover no layer that may be pruned: scored {list(checked)}, prunable here "
            f"{list(layers)}"
        )
    return _scored_masks(chosen, checked, amount, scope, structured, norm)


def _scored_masks(
    layers: dict[str, nn.Module],
    weight_scores: dict[str, torch.Tensor],
    amount: float,
    scope: str,
    structured: bool,
    norm: float,
) -> dict[str, torch.Tensor]:
    unit_scores, shapes = _unit_scores(layers, structured, norm, lambda s: s, weight_scores)
    return _mask_from_scores(unit_scores, amount, scope, shapes, structured)


@torch.no_grad()
def magnitude_masks(
    model: nn.Module,
    amount: float,
    *,
    scope: Scope = "layer",
    structured: bool = False,
    norm: float = 1,
    exclude: Sequence[str] = (),
) -> dict[str, torch.Tensor]:
    r"""Masks that prune the ``amount`` fraction of weights (or neurons) of smallest magnitude.

    Unstructured: weight :math:`w` is ranked by :math:`|w|`. Structured:
    output neuron (row) :math:`j` of a layer is ranked by the norm of its
    incoming weights, :math:`\lVert W_{j,:} \rVert_p` with :math:`p` = ``norm``
    (for a convolution, the whole filter), and the layers that produce the
    model's output (:func:`~companion.masks.output_layers`, read from the
    graph: their units are the classes) are never pruned structurally. With
    ``scope="layer"`` every layer loses the same fraction; with
    ``scope="global"`` one ranking covers all layers, so layers with many
    small weights lose more; a guard keeps each layer's highest-ranked weight
    (neuron), because an emptied layer cuts the network. This is
    :func:`masks_from_scores` with the scores :math:`|w|`.

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
        exclude: Layer names to leave completely unpruned (also the way to
            name the output layers of a model ``torch.fx`` cannot trace).

    Returns:
        ``{layer name: mask}`` with masks shaped like the weights (1 keep, 0 prune).

    Raises:
        ValueError: If ``amount`` is outside ``[0, 1]``, ``scope`` is unknown,
            ``norm`` is not positive, ``exclude`` names an unknown layer, the
            model has no prunable layer (no hidden one when ``structured``),
            or its output layers cannot be found (see
            :func:`~companion.masks.output_layers`).
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
    layers = _layers(model, structured, exclude)
    scores = {name: current_weight(m).abs() for name, m in layers.items()}
    # masks_from_scores with these scores, without tracing the model a second time
    return _scored_masks(layers, scores, amount, scope, structured, norm)


@torch.no_grad()
def random_masks(
    model: nn.Module,
    amount: float,
    *,
    scope: Scope = "layer",
    structured: bool = False,
    generator: torch.Generator | None = None,
    exclude: Sequence[str] = (),
) -> dict[str, torch.Tensor]:
    """Masks that prune a random ``amount`` fraction of weights (or neurons).

    This is what the source article's algorithm text describes ("randomly
    delete part of the neurons and connections"); it is the baseline that a
    pruning criterion must beat. Same counts, scopes, guard, protected output
    layers and composition rules as :func:`magnitude_masks`.

    Args:
        model: The network.
        amount: Total fraction to prune, in ``[0, 1]``.
        scope: ``"layer"`` or ``"global"``.
        structured: Prune whole output neurons.
        generator: A CPU ``torch.Generator`` for reproducible masks.
        exclude: Layer names to leave completely unpruned.

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
    layers = _layers(model, structured, exclude)

    def random_score(s: torch.Tensor) -> torch.Tensor:
        return torch.rand(s.shape, generator=generator).to(s.device)

    scores, shapes = _unit_scores(layers, structured, 1, random_score)
    return _mask_from_scores(scores, amount, scope, shapes, structured)


def structured_sparsity(model: nn.Module, *, exclude: Sequence[str] = ()) -> float:
    """Fraction of hidden units whose weights are all zero.

    The units counted are the rows (filters) of every prunable layer except
    the output layers (:func:`~companion.masks.output_layers`) and ``exclude``:
    exactly the units structured pruning may remove.

    Args:
        model: The network.
        exclude: Layer names left out of the count, as in :func:`magnitude_masks`.

    Returns:
        The dead fraction, in ``[0, 1]``.

    Raises:
        ValueError: If the model has no hidden layer or ``exclude`` names an unknown layer.
        TypeError: If ``model`` is not an ``nn.Module``.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> with torch.no_grad():
        ...     _ = net[0].weight[:1].zero_()
        >>> structured_sparsity(net)
        0.25
    """
    layers = _layers(model, structured=True, exclude=exclude)
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
    exclude: Sequence[str] = (),
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

    With ``structured=True`` the masks are applied with
    ``apply_masks(..., structured=True)``: a pruned neuron's bias (and the
    BatchNorm after it) is masked too, so the neuron outputs exactly zero. The
    output layers (:func:`~companion.masks.output_layers`) are never pruned
    structurally.

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
        exclude: Layer names to leave completely unpruned.

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
    layers = _layers(model, structured, exclude)
    if reference is None:
        reference = float(evaluate(model))
    # Give every layer a mask up front (and, when structured, its bias and BatchNorm) so that
    # the state dict keeps one shape and a snapshot can be restored with load_state_dict.
    existing = current_masks(model)
    apply_masks(
        model,
        {name: existing.get(name, torch.ones_like(m.weight)) for name, m in layers.items()},
        structured=structured,
    )
    amount = structured_sparsity(model, exclude=exclude) if structured else sparsity(model)
    history: list[dict[str, object]] = []
    for round_ in range(1, max_rounds + 1):
        if amount >= target:
            break
        new_amount = min(amount + step, target)
        snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
        optimizer_state = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
        if criterion == "magnitude":
            masks = magnitude_masks(
                model, new_amount, scope=scope, structured=structured, norm=norm, exclude=exclude
            )
        else:
            masks = random_masks(
                model,
                new_amount,
                scope=scope,
                structured=structured,
                generator=generator,
                exclude=exclude,
            )
        apply_masks(model, masks, structured=structured)
        if mode == "hard":
            erase_masked_(model)
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
