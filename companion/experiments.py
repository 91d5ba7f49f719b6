r"""Chapter 2's experiment protocols, each run over seeds.

Every comparison in chapter 2 rests on repeated runs: one trained reference
network per seed, and both arms of a comparison derived from the same
reference (same initialisation, same data order, and for random masks a
different draw per seed from :func:`companion.utils.make_generator`). Each
protocol returns plain rows (one dict per seed and setting) that
:func:`rows_values` turns into per-seed lists for
:func:`companion.stats.summarize` and :func:`companion.stats.paired_difference`,
and :func:`summary_table` into a table of intervals.

The functions train on whatever data set they are given; the chapter passes
MNIST, the tests pass tiny synthetic data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .data import _check_dataset
from .masks import prunable_layers
from .metrics import layer_sparsity, sparsity, weight_stats
from .models import MLP
from .penalties import l1_penalty, soft_threshold_
from .pruning import apply_masks, magnitude_masks, random_masks
from .stats import summarize
from .surgery import shrink
from .table import Table
from .training import evaluate, train
from .utils import check_in_range, check_positive_int, clone_model, make_generator, seed_everything

__all__ = [
    "train_references",
    "finetune",
    "l1_runs",
    "pruning_curves",
    "layer_sensitivity",
    "structured_vs_small_dense",
    "han_vs_dense",
    "rows_values",
    "summary_table",
]

Row = dict[str, object]


# --------------------------------------------------------------------------- validation


def _seeded_model(
    make_model: Callable[[], nn.Module], seed: int, device: torch.device | str
) -> nn.Module:
    """``make_model()`` built right after ``seed_everything(seed)`` (so seed ``s`` always gives the
    same initial weights), checked to be a module and moved to ``device``."""
    seed_everything(seed)
    model = make_model()
    if not isinstance(model, nn.Module):
        raise TypeError(f"make_model must return an nn.Module, got {type(model).__name__}")
    return model.to(device)


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = list(seeds)
    if len(seeds) < 1:
        raise ValueError("seeds must hold at least one seed, got none")
    for s in seeds:
        check_positive_int("seeds", s, allow_zero=True)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    return seeds


def _check_references(references: Sequence[nn.Module], seeds: Sequence[int]) -> list[int]:
    seeds = _check_seeds(seeds)
    if len(references) != len(seeds):
        raise ValueError(
            f"references and seeds must have the same length (one reference per seed), "
            f"got {len(references)} and {len(seeds)}"
        )
    for model in references:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"references must hold torch.nn.Module objects, got {type(model).__name__}"
            )
    return seeds


def _check_amounts(name: str, amounts: Sequence[float]) -> list[float]:
    amounts = list(amounts)
    if not amounts:
        raise ValueError(f"{name} must hold at least one fraction in [0, 1], got none")
    for a in amounts:
        check_in_range(name, a, 0.0, 1.0)
    return amounts


def _check_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------- training helpers


def train_references(
    make_model: Callable[[], nn.Module],
    train_set: TensorDataset,
    *,
    seeds: Sequence[int],
    epochs: int,
    lr: float,
    momentum: float = 0.9,
    batch_size: int = 128,
) -> list[nn.Module]:
    """Train one network per seed with SGD: the references every comparison starts from.

    For seed ``s``: ``seed_everything(s)``, ``model = make_model()`` on the
    data's device (so ``s`` fixes the initialisation), then
    ``train(..., seed=s)`` (so ``s`` fixes the data order).

    Args:
        make_model: Builds a fresh, untrained network.
        train_set: Training data (tensors on the device to train on).
        seeds: Distinct logical seeds, one network each.
        epochs: Training epochs, >= 1.
        lr: Learning rate, > 0.
        momentum: SGD momentum in ``[0, 1)``.
        batch_size: Examples per step, >= 1.

    Returns:
        The trained networks, in the order of ``seeds``.

    Raises:
        TypeError: If ``make_model`` is not callable or does not return an ``nn.Module``.
        ValueError: For empty or repeated seeds and out-of-range numbers (as :func:`companion.training.train`).

    Example:
        >>> ds = TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
        >>> nets = train_references(lambda: MLP((4, 3, 2)), ds, seeds=[0, 1], epochs=1, lr=0.1)
        >>> len(nets), torch.equal(nets[0].fc1.weight, nets[1].fc1.weight)
        (2, False)
    """
    if not callable(make_model):
        raise TypeError(f"make_model must be callable, got {type(make_model).__name__}")
    seeds = _check_seeds(seeds)
    _check_dataset(train_set, "train_set")
    device = train_set.tensors[0].device
    models = []
    for s in seeds:
        model = _seeded_model(make_model, s, device)
        train(
            model,
            train_set,
            epochs=epochs,
            lr=lr,
            momentum=momentum,
            batch_size=batch_size,
            seed=s,
            progress=False,
        )
        models.append(model)
    return models


def finetune(
    model: nn.Module,
    train_set: TensorDataset,
    *,
    seed: int,
    epochs: int = 1,
    lr: float = 0.005,
    momentum: float = 0.9,
    batch_size: int = 128,
) -> nn.Module:
    """Retrain ``model`` in place (masks stay in place) with SGD and momentum; return it.

    Args:
        model: The (pruned) network.
        train_set: The data to retrain on (a subset of the training split is fine).
        seed: Logical seed of the data order.
        epochs: Passes over ``train_set``, >= 1.
        lr: Learning rate, > 0 (default a tenth of the chapter's training rate 0.05,
            Han et al.'s rule).
        momentum: SGD momentum in ``[0, 1)``.
        batch_size: Examples per step.

    Returns:
        ``model``.

    Raises:
        TypeError, ValueError: As :func:`companion.training.train`.
    """
    train(
        model,
        train_set,
        epochs=epochs,
        lr=lr,
        momentum=momentum,
        batch_size=batch_size,
        seed=seed,
        progress=False,
    )
    return model


# --------------------------------------------------------------------------- section 1


def l1_runs(
    make_model: Callable[[], nn.Module],
    train_set: TensorDataset,
    eval_set: TensorDataset,
    *,
    lambdas: Sequence[float],
    seeds: Sequence[int],
    epochs: int,
    lr: float,
    batch_size: int = 128,
    small: float = 1e-3,
) -> tuple[list[Row], dict[tuple[int, float, str], nn.Module]]:
    r"""Train with the L1 penalty by subgradient and by the proximal step, per seed and :math:`\lambda`.

    For each seed and each :math:`\lambda > 0` two networks start from the
    same initialisation and see the data in the same order: one adds
    :math:`\lambda \sum |w|` to the loss (subgradient), the other applies the
    soft threshold :math:`\eta\lambda` after every plain-SGD step
    (:func:`~companion.penalties.soft_threshold_`). :math:`\lambda = 0`
    trains one unpenalised network (method ``"none"``).

    Args:
        make_model: Builds a fresh network.
        train_set: Training data.
        eval_set: Data the accuracy is measured on (the validation split).
        lambdas: Penalty weights, each >= 0.
        seeds: Distinct logical seeds.
        epochs: Training epochs, >= 1.
        lr: Plain-SGD learning rate :math:`\eta`, > 0.
        batch_size: Examples per step.
        small: The ``near_zero`` threshold of ``companion.metrics.weight_stats``.

    Returns:
        ``(rows, models)``: one row per run with keys ``seed``, ``lambda``,
        ``method``, ``accuracy``, ``exact_zeros``, ``near_zero``,
        ``mean_abs_w``; ``models[(seed, lambda, method)]`` the trained network.

    Raises:
        ValueError: For an empty or negative ``lambdas`` and the errors of :func:`companion.training.train`.
        TypeError: If ``make_model`` is not callable.

    Example:
        >>> ds = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
        >>> rows, _ = l1_runs(lambda: MLP((4, 3, 2)), ds, ds, lambdas=[0, 0.5], seeds=[0],
        ...                   epochs=1, lr=0.5, batch_size=8)
        >>> [(r["method"], r["exact_zeros"] > 0) for r in rows]
        [('none', False), ('subgradient', False), ('proximal', True)]
    """
    if not callable(make_model):
        raise TypeError(f"make_model must be callable, got {type(make_model).__name__}")
    lambdas = list(lambdas)
    if not lambdas:
        raise ValueError("lambdas must hold at least one penalty weight >= 0, got none")
    for lam in lambdas:
        check_in_range("lambdas", lam, 0.0, float("inf"), high_inclusive=False)
    check_in_range("lr", lr, 0.0, float("inf"), low_inclusive=False, high_inclusive=False)
    seeds = _check_seeds(seeds)
    device = train_set.tensors[0].device
    rows: list[Row] = []
    models: dict[tuple[int, float, str], nn.Module] = {}
    for s in seeds:
        for lam in lambdas:
            for method in ("subgradient", "proximal") if lam > 0 else ("none",):
                seed_everything(s)
                model = make_model().to(device)
                on_step = None
                if method == "proximal":

                    def on_step(step: int, model: nn.Module = model, tau: float = lr * lam) -> None:
                        soft_threshold_(model, tau)

                train(
                    model,
                    train_set,
                    epochs=epochs,
                    lr=lr,
                    batch_size=batch_size,
                    seed=s,
                    progress=False,
                    penalty=l1_penalty if method == "subgradient" else None,
                    penalty_weight=lam if method == "subgradient" else 0.0,
                    on_step=on_step,
                )
                models[(s, lam, method)] = model
                rows.append(
                    {
                        "seed": s,
                        "lambda": lam,
                        "method": method,
                        "accuracy": evaluate(model, eval_set)["accuracy"],
                        **weight_stats(model, small=small),
                    }
                )
    return rows, models


# --------------------------------------------------------------------------- section 3


def pruning_curves(
    references: Sequence[nn.Module],
    seeds: Sequence[int],
    eval_set: TensorDataset,
    *,
    amounts: Sequence[float],
    finetune_fn: Callable[[nn.Module, int], object] | None = None,
    finetune_amounts: Sequence[float] = (),
    scopes: Sequence[str] = ("layer", "global"),
    criteria: Sequence[str] = ("magnitude", "random"),
) -> tuple[list[Row], dict[tuple[int, str, str, float], nn.Module]]:
    """Prune each reference by magnitude and at random, per scope and amount; evaluate before and after fine-tuning.

    Random masks for seed ``s`` come from ``make_generator(s)`` (one generator
    per seed, so every seed draws different masks and the average over seeds
    averages over mask draws). The references are not modified.

    Args:
        references: One trained network per seed.
        seeds: The references' logical seeds, in the same order.
        eval_set: Data the accuracies are measured on.
        amounts: Fractions of weights to prune, each in ``[0, 1]``.
        finetune_fn: ``finetune_fn(model, seed)`` retrains a pruned model in place.
        finetune_amounts: The amounts (a subset of ``amounts``) whose pruned
            models are fine-tuned; ``"fine-tuned"`` is ``None`` for the others.
        scopes: A subset of ``("layer", "global")``.
        criteria: A subset of ``("magnitude", "random")``.

    Returns:
        ``(rows, finetuned)``: rows with keys ``seed``, ``scope``, ``criterion``,
        ``amount``, ``sparsity``, ``pruned``, ``fine-tuned``; ``finetuned`` maps
        ``(seed, scope, criterion, amount)`` to the fine-tuned model.

    Raises:
        ValueError: For mismatched lengths, bad amounts, a fine-tune amount not in
            ``amounts``, ``finetune_amounts`` without ``finetune_fn``, or an unknown
            scope or criterion.
        TypeError: If a reference is not an ``nn.Module`` or ``finetune_fn`` is not callable.
    """
    seeds = _check_references(references, seeds)
    amounts = _check_amounts("amounts", amounts)
    finetune_amounts = list(finetune_amounts)
    for a in finetune_amounts:
        if a not in amounts:
            raise ValueError(f"finetune_amounts must be a subset of amounts {amounts}, got {a}")
    if finetune_amounts and finetune_fn is None:
        raise ValueError("finetune_amounts needs a finetune_fn to retrain with")
    if finetune_fn is not None and not callable(finetune_fn):
        raise TypeError(f"finetune_fn must be callable, got {type(finetune_fn).__name__}")
    for scope in scopes:
        if scope not in ("layer", "global"):
            raise ValueError(f"scopes must be 'layer' or 'global', got {scope!r}")
    for criterion in criteria:
        if criterion not in ("magnitude", "random"):
            raise ValueError(f"criteria must be 'magnitude' or 'random', got {criterion!r}")
    rows: list[Row] = []
    finetuned: dict[tuple[int, str, str, float], nn.Module] = {}
    for reference, s in zip(references, seeds, strict=True):
        generator = make_generator(s)
        for scope in scopes:
            for criterion in criteria:
                for amount in amounts:
                    model = clone_model(reference)
                    if criterion == "magnitude":
                        masks = magnitude_masks(model, amount, scope=scope)
                    else:
                        masks = random_masks(model, amount, scope=scope, generator=generator)
                    apply_masks(model, masks)
                    row: Row = {
                        "seed": s,
                        "scope": scope,
                        "criterion": criterion,
                        "amount": amount,
                        "sparsity": sparsity(model),
                        "pruned": evaluate(model, eval_set)["accuracy"],
                        "fine-tuned": None,
                    }
                    if amount in finetune_amounts:
                        finetune_fn(model, s)
                        row["fine-tuned"] = evaluate(model, eval_set)["accuracy"]
                        finetuned[(s, scope, criterion, amount)] = model
                    rows.append(row)
    return rows, finetuned


# --------------------------------------------------------------------------- section 6


def layer_sensitivity(
    references: Sequence[nn.Module],
    seeds: Sequence[int],
    eval_set: TensorDataset,
    *,
    amounts: Sequence[float],
) -> list[Row]:
    """Prune one layer at a time by magnitude (no fine-tuning) and evaluate, per reference.

    Args:
        references: One trained network per seed (not modified).
        seeds: Their logical seeds.
        eval_set: Data the accuracy is measured on (the validation split: the
            scan informs choices).
        amounts: Fractions of the layer's weights to prune, each in ``[0, 1]``.

    Returns:
        Rows with keys ``seed``, ``layer``, ``amount``, ``accuracy``.

    Raises:
        ValueError, TypeError: For mismatched lengths, bad amounts or non-modules.

    Example:
        >>> ds = TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
        >>> rows = layer_sensitivity([MLP((4, 3, 2))], [0], ds, amounts=[0.5])
        >>> [(r["layer"], r["amount"]) for r in rows]
        [('fc1', 0.5), ('fc2', 0.5)]
    """
    seeds = _check_references(references, seeds)
    amounts = _check_amounts("amounts", amounts)
    rows: list[Row] = []
    for reference, s in zip(references, seeds, strict=True):
        for name in prunable_layers(reference):
            for amount in amounts:
                model = clone_model(reference)
                apply_masks(model, {name: magnitude_masks(model, amount)[name]})
                rows.append(
                    {
                        "seed": s,
                        "layer": name,
                        "amount": amount,
                        "accuracy": evaluate(model, eval_set)["accuracy"],
                    }
                )
    return rows


# --------------------------------------------------------------------------- section 5


def structured_vs_small_dense(
    references: Sequence[nn.Module],
    seeds: Sequence[int],
    train_set: TensorDataset,
    eval_set: TensorDataset,
    *,
    amount: float,
    finetune_epochs: int,
    finetune_lr: float,
    scratch_epochs: int,
    scratch_lr: float,
    momentum: float = 0.9,
    batch_size: int = 128,
) -> tuple[list[Row], dict[int, tuple[nn.Module, MLP]]]:
    """Structured pruning then shrinking, against the shrunk architecture trained from scratch.

    Per seed ``s``: the weakest ``amount`` of each hidden layer's neurons of
    the reference (ranked by the L2 norm of their incoming weights) are masked,
    the masked network is fine-tuned and shrunk
    (:func:`~companion.surgery.shrink`). The control (Liu et al. 2019) is a
    fresh :class:`~companion.models.MLP` of the shrunk network's sizes, seeded
    with ``s`` and trained from scratch for ``scratch_epochs`` (the chapter
    gives it the reference's epochs plus the fine-tuning epochs).

    Args:
        references: One trained :class:`~companion.models.MLP` per seed (not modified).
        seeds: Their logical seeds.
        train_set: Training data.
        eval_set: Data the accuracies are measured on.
        amount: Fraction of each hidden layer's neurons to remove, in ``[0, 1)``.
        finetune_epochs: Fine-tuning epochs of the pruned network, >= 1.
        finetune_lr: Its learning rate, > 0.
        scratch_epochs: Training epochs of the small dense control, >= 1.
        scratch_lr: Its learning rate, > 0.
        momentum: SGD momentum of both.
        batch_size: Examples per step of both.

    Returns:
        ``(rows, models)``: rows with keys ``seed``, ``sizes``, ``pruned``
        (accuracy right after masking), ``fine-tuned`` (of the shrunk network),
        ``small dense``; ``models[s] = (masked, shrunk)``.

    Raises:
        TypeError: If a reference is not an MLP.
        ValueError: For out-of-range numbers or mismatched lengths.
    """
    seeds = _check_references(references, seeds)
    check_in_range("amount", amount, 0.0, 1.0, high_inclusive=False)
    check_positive_int("finetune_epochs", finetune_epochs)
    check_positive_int("scratch_epochs", scratch_epochs)
    for name, value in (("finetune_lr", finetune_lr), ("scratch_lr", scratch_lr)):
        check_in_range(name, value, 0.0, float("inf"), low_inclusive=False, high_inclusive=False)
    rows: list[Row] = []
    models: dict[int, tuple[nn.Module, MLP]] = {}
    for reference, s in zip(references, seeds, strict=True):
        if not isinstance(reference, MLP):
            raise TypeError(
                f"references must be companion.models.MLP, got {type(reference).__name__}"
            )
        masked = clone_model(reference)
        apply_masks(masked, magnitude_masks(masked, amount, structured=True, norm=2))
        pruned_acc = evaluate(masked, eval_set)["accuracy"]
        finetune(
            masked,
            train_set,
            seed=s,
            epochs=finetune_epochs,
            lr=finetune_lr,
            momentum=momentum,
            batch_size=batch_size,
        )
        small = shrink(masked)
        seed_everything(s)
        scratch = MLP(small.sizes).to(_check_device(reference))
        train(
            scratch,
            train_set,
            epochs=scratch_epochs,
            lr=scratch_lr,
            momentum=momentum,
            batch_size=batch_size,
            seed=s,
            progress=False,
        )
        rows.append(
            {
                "seed": s,
                "sizes": small.sizes,
                "pruned": pruned_acc,
                "fine-tuned": evaluate(small, eval_set)["accuracy"],
                "small dense": evaluate(scratch, eval_set)["accuracy"],
            }
        )
        models[s] = (masked, small)
    return rows, models


# --------------------------------------------------------------------------- section 7


def han_vs_dense(
    references: Sequence[nn.Module],
    seeds: Sequence[int],
    train_set: TensorDataset,
    eval_set: TensorDataset,
    *,
    schedule: Sequence[float],
    epochs_per_round: int = 1,
    lr: float = 0.005,
    momentum: float = 0.9,
    batch_size: int = 128,
) -> tuple[list[Row], dict[int, nn.Module]]:
    """Han et al.'s iterative prune-retrain against a dense control with the same extra training.

    Per seed ``s``: a copy of the reference is pruned by global magnitude to
    each fraction of ``schedule`` in turn, retrained ``epochs_per_round``
    epochs after each; the control is another copy retrained, unpruned, for
    the same total number of epochs with the same optimizer settings and data
    order seed. Both arms share the reference, so their difference is paired.

    Args:
        references: One trained network per seed (not modified).
        seeds: Their logical seeds.
        train_set: Retraining data.
        eval_set: Data the accuracies are measured on.
        schedule: Increasing fractions of weights pruned after each round, in ``[0, 1]``.
        epochs_per_round: Retraining epochs per round, >= 1.
        lr: Retraining learning rate, > 0.
        momentum: SGD momentum.
        batch_size: Examples per step.

    Returns:
        ``(rows, pruned)``: rows with keys ``seed``, ``reference``, ``pruned``,
        ``control`` (accuracies), ``kept`` (fraction of weights left) and
        ``kept_<layer>`` per layer; ``pruned[s]`` the pruned network.

    Raises:
        ValueError: If ``schedule`` is empty, out of range or not increasing,
            and for mismatched lengths.
        TypeError: If a reference is not an ``nn.Module``.

    Example:
        >>> ds = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
        >>> rows, _ = han_vs_dense([MLP((4, 8, 2))], [0], ds, ds, schedule=[0.5, 0.75])
        >>> rows[0]["kept"]
        0.25
    """
    seeds = _check_references(references, seeds)
    schedule = _check_amounts("schedule", schedule)
    if any(b <= a for a, b in zip(schedule[:-1], schedule[1:], strict=True)):
        raise ValueError(f"schedule must be strictly increasing, got {schedule}")
    check_positive_int("epochs_per_round", epochs_per_round)
    rows: list[Row] = []
    pruned_models: dict[int, nn.Module] = {}
    for reference, s in zip(references, seeds, strict=True):
        options = {"lr": lr, "momentum": momentum, "batch_size": batch_size}
        pruned = clone_model(reference)
        for i, amount in enumerate(schedule):
            apply_masks(pruned, magnitude_masks(pruned, amount, scope="global"))
            finetune(pruned, train_set, seed=s + i, epochs=epochs_per_round, **options)
        control = clone_model(reference)
        for i in range(len(schedule)):
            finetune(control, train_set, seed=s + i, epochs=epochs_per_round, **options)
        kept = {name.split(".")[0]: 1 - v for name, v in layer_sparsity(pruned).items()}
        rows.append(
            {
                "seed": s,
                "reference": evaluate(reference, eval_set)["accuracy"],
                "pruned": evaluate(pruned, eval_set)["accuracy"],
                "control": evaluate(control, eval_set)["accuracy"],
                "kept": 1 - sparsity(pruned),
                **{f"kept_{name}": value for name, value in kept.items()},
            }
        )
        pruned_models[s] = pruned
    return rows, pruned_models


# --------------------------------------------------------------------------- summaries


def rows_values(rows: Sequence[Row], column: str, **where: object) -> list[float]:
    """The ``column`` values of the rows matching ``where``, ordered by seed (ready for pairing).

    Args:
        rows: Rows with a ``seed`` key, as the protocols above return.
        column: The value to collect.
        **where: ``key=value`` filters, e.g. ``scope="global", amount=0.9``.

    Returns:
        One float per matching row, sorted by ``seed``.

    Raises:
        ValueError: If no row matches, or two matching rows share a seed.
        KeyError: If ``column`` is missing from a matching row.

    Example:
        >>> rows = [{"seed": 1, "m": "a", "acc": 0.9}, {"seed": 0, "m": "a", "acc": 0.8},
        ...         {"seed": 0, "m": "b", "acc": 0.7}]
        >>> rows_values(rows, "acc", m="a")
        [0.8, 0.9]
    """
    matching = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
    if not matching:
        raise ValueError(f"no row matches {where}")
    seeds = [r["seed"] for r in matching]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"rows matching {where} repeat a seed ({seeds}); filter on more keys")
    return [float(r[column]) for r in sorted(matching, key=lambda r: r["seed"])]


def summary_table(
    rows: Sequence[Row],
    keys: Sequence[str],
    columns: Sequence[str],
    formats: dict[str, str] | None = None,
) -> Table:
    """One row per distinct setting of ``keys``, each of ``columns`` summarised over seeds.

    Args:
        rows: Rows with a ``seed`` key.
        keys: The columns that define a setting (e.g. ``["scope", "criterion", "amount"]``).
        columns: The measured values to summarise (mean ± 95% interval, n); a
            setting where a column is ``None`` gets ``None`` (printed ``n/a``).
        formats: Format specs per column, passed to :class:`~companion.table.Table`.

    Returns:
        A :class:`~companion.table.Table` in the order settings first appear.

    Raises:
        ValueError: If ``rows`` is empty.

    Example:
        >>> rows = [{"seed": s, "m": "a", "acc": 0.9 + s / 100} for s in range(3)]
        >>> print(summary_table(rows, ["m"], ["acc"], {"acc": ".1%"}))
        m                acc
        a  91.0 ± 2.5% (n=3)
    """
    if not rows:
        raise ValueError("rows must hold at least one row, got none")
    settings: list[tuple[object, ...]] = []
    for r in rows:
        key = tuple(r[k] for k in keys)
        if key not in settings:
            settings.append(key)
    out = []
    for key in settings:
        where = dict(zip(keys, key, strict=True))
        row: Row = dict(where)
        for column in columns:
            matching = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
            if any(r.get(column) is None for r in matching):
                row[column] = None
            else:
                row[column] = summarize(rows_values(rows, column, **where))
        out.append(row)
    return Table(out, dict(formats or {}))
