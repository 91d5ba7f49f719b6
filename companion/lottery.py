r"""Chapter 7's protocols over seeds: saliency criteria, lottery tickets, and 2:4 against 50%.

Every protocol starts from one trained network per seed and returns plain rows
(one dict per seed and setting) for :func:`companion.experiments.rows_values`
and :func:`companion.experiments.summary_table`:

* :func:`train_from_init` trains one network per seed and keeps its initial
  weights :math:`\theta_0`, which the lottery ticket rewinds to;
* :func:`criteria_sweep` prunes each trained network one-shot, without
  fine-tuning, by magnitude, Taylor, Optimal Brain Damage or at random
  (:func:`companion.saliency.saliency_scores`,
  :func:`companion.pruning.masks_from_scores`);
* :func:`lottery_rounds` runs iterative magnitude pruning with rewinding to
  :math:`\theta_0` (Frankle and Carbin, 2019) and, at every round's mask, two
  controls trained with the same budget: the same mask with a fresh random
  initialisation, and a random mask with the same per-layer fractions;
* :func:`nm_vs_unstructured` compares 2:4 semi-structured pruning with
  unstructured magnitude pruning of the same 50% per layer, each fine-tuned
  the same way.

The trained networks passed in are never modified. The functions train on
whatever data they are given; the chapter passes MNIST, the tests tiny
synthetic data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .experiments import _check_amounts, _check_references, _check_seeds, _seeded_model
from .masks import apply_masks, output_layers, prunable_layers
from .metrics import layer_sparsity, sparsity
from .pruning import magnitude_masks, masks_from_scores, random_masks
from .saliency import CRITERIA as SALIENCY_CRITERIA
from .saliency import nm_masks, saliency_scores
from .training import evaluate
from .utils import check_in_range, check_positive_int, clone_model, make_generator, seed_everything

__all__ = [
    "CRITERIA",
    "train_from_init",
    "criteria_sweep",
    "round_fractions",
    "lottery_rounds",
    "nm_vs_unstructured",
]

#: The criteria :func:`criteria_sweep` compares: the saliency criteria and a random draw.
CRITERIA: tuple[str, ...] = (*SALIENCY_CRITERIA, "random")

#: Logical seeds of the controls' random draws start here, above any seed the book uses
#: for its networks, so a control never repeats a network's initialisation.
_CONTROL_SEED_OFFSET = 10_000

Row = dict[str, object]


# --------------------------------------------------------------------------- validation


def _check_train_fn(name: str, fn: object) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable as {name}(model, seed), got {type(fn).__name__}")


def _check_criteria(criteria: Sequence[str]) -> list[str]:
    criteria = list(criteria)
    if not criteria:
        raise ValueError(f"criteria must name at least one of {CRITERIA}, got none")
    for c in criteria:
        if c not in CRITERIA:
            raise ValueError(f"criteria must be among {CRITERIA}, got {c!r}")
    return criteria


def _control_seed(seed: int, round_: int) -> int:
    return _CONTROL_SEED_OFFSET + 100 * seed + round_


# --------------------------------------------------------------------------- references


def train_from_init(
    make_model: Callable[[], nn.Module],
    train_fn: Callable[[nn.Module, int], object],
    *,
    seeds: Sequence[int],
    device: str | torch.device = "cpu",
) -> tuple[list[nn.Module], list[nn.Module]]:
    r"""Build one network per seed, keep a copy of its initial weights, and train it.

    For seed ``s``: ``seed_everything(s)``, ``make_model()`` on ``device`` (so
    ``s`` fixes :math:`\theta_0`), a copy kept untouched, then
    ``train_fn(model, s)`` trains the network in place.

    Args:
        make_model: Builds a fresh, untrained network.
        train_fn: ``train_fn(model, seed)`` trains ``model`` in place (the same
            function trains every arm of the chapter, so all get the same budget).
        seeds: Distinct logical seeds.
        device: Where the networks live.

    Returns:
        ``(initial, trained)``: two lists in the order of ``seeds``.

    Raises:
        TypeError: If ``make_model`` or ``train_fn`` is not callable, or
            ``make_model`` does not return an ``nn.Module``.
        ValueError: For empty or repeated seeds.

    Example:
        >>> from companion.models import MLP
        >>> init, trained = train_from_init(lambda: MLP((4, 3, 2)), lambda m, s: None, seeds=[0, 1])
        >>> torch.equal(init[0].fc1.weight, trained[0].fc1.weight), init[0] is trained[0]
        (True, False)
    """
    if not callable(make_model):
        raise TypeError(f"make_model must be callable, got {type(make_model).__name__}")
    _check_train_fn("train_fn", train_fn)
    seeds = _check_seeds(seeds)
    initial, trained = [], []
    for s in seeds:
        model = _seeded_model(make_model, s, device)
        initial.append(clone_model(model))
        train_fn(model, s)
        trained.append(model)
    return initial, trained


# --------------------------------------------------------------------------- criteria


def _scores(
    model: nn.Module, criterion: str, score_set: TensorDataset | None, seed: int
) -> dict[str, torch.Tensor]:
    if criterion == "random":
        generator = make_generator(seed)
        return {
            name: torch.rand(m.weight.shape, generator=generator).to(m.weight.device)
            for name, m in prunable_layers(model).items()
        }
    return saliency_scores(model, score_set if criterion != "magnitude" else None, criterion)


def criteria_sweep(
    references: Sequence[nn.Module],
    seeds: Sequence[int],
    score_set: TensorDataset,
    eval_set: TensorDataset,
    *,
    amounts: Sequence[float],
    criteria: Sequence[str] = ("magnitude", "taylor", "obd", "random"),
    scope: str = "global",
) -> list[Row]:
    """Prune each trained network one-shot by each criterion and amount; evaluate without fine-tuning.

    Scores come from :func:`companion.saliency.saliency_scores` on
    ``score_set`` (``"magnitude"`` needs no data), or for ``"random"`` from a
    uniform draw with ``make_generator(seed)`` (a different draw per seed);
    :func:`companion.pruning.masks_from_scores` keeps the highest scores.
    One set of scores per network serves every amount, as in one-shot pruning.

    Args:
        references: One trained network per seed (not modified).
        seeds: Their logical seeds, same order.
        score_set: Data the data-dependent criteria are computed on (a
            training subset, never the evaluation data).
        eval_set: Data the accuracies are measured on.
        amounts: Fractions of weights to prune, each in ``[0, 1]``.
        criteria: A subset of :data:`CRITERIA`.
        scope: ``"global"`` (one ranking over all layers) or ``"layer"``.

    Returns:
        Rows with keys ``seed``, ``criterion``, ``amount``, ``sparsity`` and
        ``accuracy``.

    Raises:
        ValueError: For mismatched lengths, bad amounts, an unknown criterion or scope.
        TypeError: If a reference is not an ``nn.Module``.

    Example:
        >>> from companion.models import MLP
        >>> ds = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
        >>> rows = criteria_sweep([MLP((4, 8, 2))], [0], ds, ds, amounts=[0.5],
        ...                       criteria=["magnitude", "random"])
        >>> [(r["criterion"], r["amount"]) for r in rows]
        [('magnitude', 0.5), ('random', 0.5)]
    """
    seeds = _check_references(references, seeds)
    amounts = _check_amounts("amounts", amounts)
    criteria = _check_criteria(criteria)
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    rows: list[Row] = []
    for reference, s in zip(references, seeds, strict=True):
        for criterion in criteria:
            scores = _scores(reference, criterion, score_set, s)
            for amount in amounts:
                model = clone_model(reference)
                apply_masks(model, masks_from_scores(model, scores, amount, scope=scope))
                rows.append(
                    {
                        "seed": s,
                        "criterion": criterion,
                        "amount": amount,
                        "sparsity": sparsity(model),
                        "accuracy": evaluate(model, eval_set)["accuracy"],
                    }
                )
    return rows


# --------------------------------------------------------------------------- lottery ticket


def round_fractions(rounds: int, rate: float, output_rate: float | None = None) -> list[tuple]:
    r"""The fractions of weights kept after each round of iterative pruning.

    Each round removes ``rate`` of the weights still present in every hidden
    layer and ``output_rate`` of those of the output layer (Frankle and Carbin
    prune the output layer at half the rate), so after round :math:`r` a
    hidden layer keeps :math:`(1 - \text{rate})^r`.

    Args:
        rounds: Number of rounds, >= 1.
        rate: Fraction removed per round from the hidden layers, in ``(0, 1)``.
        output_rate: The same for the output layer (default ``rate / 2``).

    Returns:
        ``[(hidden kept, output kept), ...]``, one pair per round.

    Raises:
        ValueError: If ``rounds`` or a rate is out of range.

    Example:
        >>> [(round(h, 3), round(o, 3)) for h, o in round_fractions(2, 0.5)]
        [(0.5, 0.75), (0.25, 0.562)]
    """
    rounds = check_positive_int("rounds", rounds)
    check_in_range("rate", rate, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    output_rate = rate / 2 if output_rate is None else output_rate
    check_in_range("output_rate", output_rate, 0.0, 1.0, high_inclusive=False)
    return [((1 - rate) ** r, (1 - output_rate) ** r) for r in range(1, rounds + 1)]


def _layerwise(
    model: nn.Module, make_masks: Callable, hidden_amount: float, output_amount: float
) -> dict[str, torch.Tensor]:
    """Masks pruning ``hidden_amount`` of every hidden layer and ``output_amount`` of the output layers."""
    layers = prunable_layers(model)
    outputs = output_layers(model)
    hidden = [name for name in layers if name not in outputs]
    masks = make_masks(model, hidden_amount, exclude=outputs) if hidden else {}
    if outputs:
        masks.update(make_masks(model, output_amount, exclude=hidden))
    return masks


def _evaluate_row(
    model: nn.Module, eval_set: TensorDataset, seed: int, round_: int, arm: str
) -> Row:
    kept = {name.split(".")[0]: 1 - v for name, v in layer_sparsity(model).items()}
    return {
        "seed": seed,
        "round": round_,
        "arm": arm,
        "kept": 1 - sparsity(model),
        **{f"kept_{name}": value for name, value in kept.items()},
        "accuracy": evaluate(model, eval_set)["accuracy"],
    }


def lottery_rounds(
    initial: Sequence[nn.Module],
    trained: Sequence[nn.Module],
    seeds: Sequence[int],
    eval_set: TensorDataset,
    *,
    make_model: Callable[[], nn.Module],
    train_fn: Callable[[nn.Module, int], object],
    rounds: int,
    rate: float,
    output_rate: float | None = None,
) -> list[Row]:
    r"""Iterative magnitude pruning with rewinding to :math:`\theta_0`, against two controls.

    For seed ``s``, round 0 is the trained dense network (arm ``"dense"``).
    Round :math:`r \ge 1` prunes the previous round's trained ticket by
    magnitude, per layer, to the fractions of :func:`round_fractions`, and trains

    * ``"ticket"``: the surviving weights rewound to their initial values
      :math:`\theta_0` (the lottery ticket);
    * ``"reinit"``: the same mask on a fresh initialisation (``make_model()``
      after ``seed_everything`` with a control seed);
    * ``"random mask"``: a random mask with the same per-layer fractions
      (``make_generator`` with a control seed) on :math:`\theta_0`,

    each with ``train_fn(model, s)``: the same budget, optimiser and data
    order as the dense network.

    Args:
        initial: Each seed's untrained network :math:`\theta_0` (not modified).
        trained: The same networks trained by ``train_fn`` (not modified).
        seeds: Their logical seeds.
        eval_set: Data the accuracies are measured on.
        make_model: Builds a fresh network of the same architecture.
        train_fn: ``train_fn(model, seed)`` trains in place; masks stay.
        rounds: Pruning rounds, >= 1.
        rate: Fraction of the remaining hidden-layer weights removed per round.
        output_rate: The same for the output layer (default ``rate / 2``).

    Returns:
        Rows with keys ``seed``, ``round``, ``arm``, ``kept`` (fraction of all
        weights kept), ``kept_<layer>`` per layer and ``accuracy``.

    Raises:
        ValueError: For mismatched lengths or out-of-range numbers.
        TypeError: If ``make_model`` or ``train_fn`` is not callable.
    """
    seeds = _check_references(trained, seeds)
    _check_references(initial, seeds)
    if not callable(make_model):
        raise TypeError(f"make_model must be callable, got {type(make_model).__name__}")
    _check_train_fn("train_fn", train_fn)
    fractions = round_fractions(rounds, rate, output_rate)
    rows: list[Row] = []
    for init, dense, s in zip(initial, trained, seeds, strict=True):
        rows.append(_evaluate_row(dense, eval_set, s, 0, "dense"))
        previous = dense
        device = next(init.parameters()).device
        for r, (hidden_kept, output_kept) in enumerate(fractions, start=1):
            scored = clone_model(previous)
            masks = _layerwise(scored, magnitude_masks, 1 - hidden_kept, 1 - output_kept)

            ticket = clone_model(init)
            apply_masks(ticket, masks)
            train_fn(ticket, s)
            rows.append(_evaluate_row(ticket, eval_set, s, r, "ticket"))

            seed_everything(_control_seed(s, r))
            reinit = make_model().to(device)
            apply_masks(reinit, masks)
            train_fn(reinit, s)
            rows.append(_evaluate_row(reinit, eval_set, s, r, "reinit"))

            generator = make_generator(_control_seed(s, r))

            def draw(model, amount, exclude, generator=generator):
                return random_masks(model, amount, exclude=exclude, generator=generator)

            shuffled = clone_model(init)
            apply_masks(shuffled, _layerwise(shuffled, draw, 1 - hidden_kept, 1 - output_kept))
            train_fn(shuffled, s)
            rows.append(_evaluate_row(shuffled, eval_set, s, r, "random mask"))
            previous = ticket
    return rows


# --------------------------------------------------------------------------- 2:4 against 50%


def nm_vs_unstructured(
    references: Sequence[nn.Module],
    seeds: Sequence[int],
    eval_set: TensorDataset,
    *,
    finetune_fn: Callable[[nn.Module, int], object],
    n: int = 2,
    m: int = 4,
) -> list[Row]:
    """N:M semi-structured pruning against unstructured magnitude pruning of the same fraction per layer.

    For each reference: ``"n:m"`` keeps the ``n`` largest of every ``m``
    consecutive weights of every row (:func:`companion.saliency.nm_masks`);
    ``"unstructured"`` prunes the same fraction ``1 - n/m`` of every layer by
    magnitude, anywhere in the layer (:func:`companion.pruning.magnitude_masks`,
    ``scope="layer"``). Both are evaluated before and after
    ``finetune_fn(model, seed)``, the same fine-tuning for both.

    Args:
        references: One trained network per seed (not modified).
        seeds: Their logical seeds.
        eval_set: Data the accuracies are measured on.
        finetune_fn: ``finetune_fn(model, seed)`` retrains in place; masks stay.
        n: Weights kept per group.
        m: Group length; every layer's rows must split into groups of ``m``.

    Returns:
        Rows with keys ``seed``, ``pattern`` (``"n:m"`` written out, e.g.
        ``"2:4"``, or ``"unstructured"``), ``sparsity``, ``pruned`` and ``fine-tuned``.

    Raises:
        ValueError: For mismatched lengths, bad ``n``/``m`` or rows not divisible by ``m``.
        TypeError: If ``finetune_fn`` is not callable.

    Example:
        >>> from companion.models import MLP
        >>> ds = TensorDataset(torch.randn(16, 8), torch.randint(0, 2, (16,)))
        >>> rows = nm_vs_unstructured([MLP((8, 4, 2))], [0], ds, finetune_fn=lambda m, s: None)
        >>> [(r["pattern"], r["sparsity"]) for r in rows]
        [('2:4', 0.5), ('unstructured', 0.5)]
    """
    seeds = _check_references(references, seeds)
    _check_train_fn("finetune_fn", finetune_fn)
    name = f"{n}:{m}"
    rows: list[Row] = []
    for reference, s in zip(references, seeds, strict=True):
        for pattern in (name, "unstructured"):
            model = clone_model(reference)
            if pattern == name:
                masks = nm_masks(model, n, m)
            else:
                masks = magnitude_masks(model, 1 - n / m, scope="layer")
            apply_masks(model, masks)
            row: Row = {
                "seed": s,
                "pattern": pattern,
                "sparsity": sparsity(model),
                "pruned": evaluate(model, eval_set)["accuracy"],
            }
            finetune_fn(model, s)
            row["fine-tuned"] = evaluate(model, eval_set)["accuracy"]
            rows.append(row)
    return rows
