"""Distillation beyond the logits: hint and cosine feature losses, and self-distillation.

The protocols of the chapter "Distillation beyond logits", each run over seeds with
every arm tuned on the validation split with the same number of candidates:

* :func:`compare_arms`: one small student trained four ways from the same
  initial weights per seed: alone, with Hinton's logit loss, with a FitNets
  hint (a learned regressor from a student layer to a teacher layer, mean
  squared error) or with a cosine hidden-state loss (as in PyTorch's
  distillation tutorial). The feature arms add their term to the plain
  cross-entropy (``alpha = 0``), so each of the three distilled arms uses one
  kind of teacher knowledge.
* :func:`born_again`: self-distillation (Furlanello et al. 2018): a student of
  its teacher's own architecture, from a fresh initialisation, distilled from
  that teacher, and compared with it, seed by seed.

Every training run is :func:`companion.distillation.fit` (SGD with momentum and
a cosine decay to zero), so two arms differ only in their loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .distillation import FeatureLoss, Recipe, capture_features, fit, make_regressor
from .models import MLP
from .training import evaluate, predict
from .utils import check_in_range, check_positive_int, seed_everything

#: The arms of :func:`compare_arms`, in order, with the loss of each.
ARMS = {
    "alone": "cross-entropy (with the recipe's label smoothing)",
    "logit KD": "Hinton's loss: (1 - alpha) CE + alpha T^2 KL of the softened outputs",
    "hint": "cross-entropy + weight x MSE(regressor(student layer), teacher layer)",
    "cosine": "cross-entropy + weight x (1 - cos(regressor(student layer), teacher layer))",
}

#: Added to a seed for the initialisation and data order of a born-again student, so that it
#: does not start from its teacher's initial weights (logical seeds: COMPANION_SEED_BASE applies).
BORN_AGAIN_SEED_OFFSET = 100


@dataclass(frozen=True)
class Setting:
    """One candidate of an arm: a training recipe and, for a feature arm, the term's weight.

    Attributes:
        recipe: How the student is trained (:class:`companion.distillation.Recipe`).
        weight: Weight of the hint or cosine term (feature arms only), >= 0.
    """

    recipe: Recipe
    weight: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.recipe, Recipe):
            raise TypeError(
                f"recipe must be a companion.distillation.Recipe, got {type(self.recipe).__name__}"
            )
        check_in_range("weight", self.weight, 0.0, float("inf"), high_inclusive=False)

    def __str__(self) -> str:
        r = self.recipe
        parts = [f"lr {r.lr:g}", f"{r.epochs} epochs"]
        if r.label_smoothing:
            parts.append(f"smoothing {r.label_smoothing:g}")
        if r.alpha:  # the recipe's temperature is unused without the soft term
            parts += [f"T {r.temperature:g}", f"alpha {r.alpha:g}"]
        if self.weight:
            parts.append(f"weight {self.weight:g}")
        return ", ".join(parts)


@dataclass
class ArmsResult:
    """What :func:`compare_arms` and :func:`born_again` return.

    Attributes:
        validation: ``{arm: {setting: validation accuracy of the tuning seed}}``.
        chosen: ``{arm: the setting with the best validation accuracy}``.
        test: ``{arm: [test accuracy per seed]}``, in the order of the seeds.
        models: ``{arm: [trained student per seed]}``.
    """

    validation: dict[str, dict[Setting, float]] = field(default_factory=dict)
    chosen: dict[str, Setting] = field(default_factory=dict)
    test: dict[str, list[float]] = field(default_factory=dict)
    models: dict[str, list[nn.Module]] = field(default_factory=dict)


def _check_arm(arm: object) -> str:
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {tuple(ARMS)}, got {arm!r}")
    assert isinstance(arm, str)
    return arm


def _check_labelled(labelled: object, name: str = "labelled") -> TensorDataset:
    if not isinstance(labelled, TensorDataset) or len(labelled.tensors) < 2:
        raise TypeError(f"{name} must be a TensorDataset of (inputs, targets)")
    if len(labelled) == 0:
        raise ValueError(f"{name} must hold at least one example, got none")
    return labelled


def _check_candidates(candidates: object, name: str) -> list[Setting]:
    if not isinstance(candidates, Sequence) or isinstance(candidates, str) or not candidates:
        raise ValueError(f"{name} must be a non-empty list of Setting candidates")
    for candidate in candidates:
        if not isinstance(candidate, Setting):
            raise TypeError(f"{name} must hold Setting objects, got {type(candidate).__name__}")
    if len(set(candidates)) != len(candidates):
        raise ValueError(f"{name} holds the same Setting twice")
    return list(candidates)


def train_arm(
    arm: str,
    setting: Setting,
    labelled: TensorDataset,
    *,
    seed: int,
    teacher: nn.Module | None = None,
    student_sizes: Sequence[int] = (784, 30, 10),
    student_layer: str = "fc1",
    teacher_layer: str = "fc2",
) -> nn.Module:
    """Train one student of ``arm`` from the initial weights of ``seed``.

    The student is ``MLP(student_sizes)`` built right after
    ``seed_everything(seed)``, so every arm of a seed starts from the same
    weights and sees the data in the same order; the arms differ only in the
    loss (:data:`ARMS`). A feature arm's regressor (a linear map from the
    student layer's width to the teacher layer's, initialised like a PyTorch
    ``Linear`` from ``seed``) is trained with the student.

    Args:
        arm: One of :data:`ARMS`.
        setting: The recipe (and feature weight) of this run.
        labelled: ``(inputs, targets)`` on the device of the models.
        seed: Logical seed of the initial weights and the data order.
        teacher: The trained teacher (every arm but ``"alone"``), left unchanged.
        student_sizes: Layer sizes of the student.
        student_layer: The student layer whose output imitates the teacher's.
        teacher_layer: The teacher layer it imitates.

    Returns:
        The trained student, in eval mode.

    Raises:
        ValueError: For an unknown ``arm``, a distilled arm without ``teacher``,
            a feature arm with weight 0, or a setting whose recipe does not fit
            the arm (a feature arm needs ``alpha = 0``, so its only teacher
            signal is the feature term), and whatever
            :func:`companion.distillation.fit` rejects.
        TypeError: If ``setting`` is not a :class:`Setting` or ``labelled`` is
            not a ``TensorDataset``.

    Example:
        >>> ds = TensorDataset(torch.randn(64, 6), torch.randint(0, 3, (64,)))
        >>> teacher = MLP((6, 12, 8, 3)).eval()
        >>> fast = Recipe(lr=0.05, epochs=1, batch_size=16, alpha=0.0)
        >>> student = train_arm("hint", Setting(fast, weight=0.1), ds, seed=0, teacher=teacher,
        ...                     student_sizes=(6, 4, 3))
        >>> student.fc1.out_features, student.training
        (4, False)
    """
    arm = _check_arm(arm)
    if not isinstance(setting, Setting):
        raise TypeError(f"setting must be a Setting, got {type(setting).__name__}")
    labelled = _check_labelled(labelled)
    if arm != "alone" and teacher is None:
        raise ValueError(f"the {arm!r} arm needs the teacher: pass teacher=")
    feature_arm = arm in ("hint", "cosine")
    if feature_arm and (setting.weight == 0 or setting.recipe.alpha != 0):
        raise ValueError(
            f"a {arm!r} setting needs weight > 0 and recipe.alpha = 0 (cross-entropy plus the "
            f"feature term), got weight {setting.weight} and alpha {setting.recipe.alpha}"
        )
    if not feature_arm and setting.weight != 0:
        raise ValueError(f"the {arm!r} arm has no feature term: its setting's weight must be 0")
    device = labelled.tensors[0].device
    seed_everything(seed)
    student = MLP(tuple(student_sizes)).to(device)
    if arm == "alone":
        fit(student, labelled, setting.recipe, seed=seed)
    elif arm == "logit KD":
        assert teacher is not None
        logits = predict(teacher, labelled.tensors[0])
        fit(student, labelled, setting.recipe, seed=seed, teacher_logits=logits)
    else:
        assert teacher is not None
        regressor = None
        if arm == "cosine":  # a hint builds its own regressor, seeded the same way
            with torch.no_grad():
                first = labelled.tensors[0][:2]
                widths = [
                    _layer_output(model, layer, first)
                    for model, layer in ((student, student_layer), (teacher, teacher_layer))
                ]
            regressor = make_regressor(*widths, seed=seed).to(device)
        term = FeatureLoss(
            student_layer, teacher_layer, kind=arm, weight=setting.weight, regressor=regressor
        )
        fit(student, labelled, setting.recipe, seed=seed, teacher=teacher, features=[term])
    return student.eval()


def _layer_output(model: nn.Module, layer: str, inputs: torch.Tensor) -> torch.Tensor:
    """The output of ``model``'s ``layer`` for ``inputs`` (eval mode, mode restored)."""
    was_training = model.training
    model.eval()
    try:
        with capture_features(model, [layer], detach=True) as seen:
            model(inputs)
    finally:
        model.train(was_training)
    return seen[layer]


def _accuracy(model: nn.Module, dataset: TensorDataset) -> float:
    return evaluate(model, dataset)["accuracy"]


def compare_arms(
    labelled: TensorDataset,
    val_set: TensorDataset,
    test_set: TensorDataset,
    *,
    seeds: Sequence[int],
    teachers: Sequence[nn.Module],
    candidates: Mapping[str, Sequence[Setting]],
    student_sizes: Sequence[int] = (784, 30, 10),
    student_layer: str = "fc1",
    teacher_layer: str = "fc2",
) -> ArmsResult:
    """Tune every arm on validation with the first seed, then train it on every seed.

    For each arm of ``candidates`` (keys from :data:`ARMS`), every candidate
    is trained with ``seeds[0]`` and ``teachers[0]`` and scored on
    ``val_set``; the best is then trained on each seed ``s`` with that seed's
    teacher (the tuning run is reused for the first seed). The test set only
    reports. Give every arm the same number of candidates: that is the
    "same tuning budget" the comparison needs.

    Args:
        labelled: The students' labelled training data.
        val_set: Where candidates are compared.
        test_set: Where the chosen students are reported.
        seeds: Logical seeds, one student per arm each.
        teachers: One trained teacher per seed (the same object repeated is
            one teacher for every seed), left unchanged.
        candidates: ``{arm: [Setting, ...]}``.
        student_sizes, student_layer, teacher_layer: As :func:`train_arm`.

    Returns:
        An :class:`ArmsResult`.

    Raises:
        ValueError: For no seeds, ``teachers`` of another length than
            ``seeds``, an unknown arm, empty or repeated candidates, and
            whatever :func:`train_arm` rejects.
        TypeError: For data sets that are not ``TensorDataset`` or candidates
            that are not :class:`Setting` objects.

    Example:
        >>> ds = TensorDataset(torch.randn(64, 6), torch.randint(0, 3, (64,)))
        >>> teacher = MLP((6, 12, 8, 3)).eval()
        >>> fast = Recipe(lr=0.05, epochs=1, batch_size=16, alpha=0.0)
        >>> result = compare_arms(ds, ds, ds, seeds=[0, 1], teachers=[teacher] * 2,
        ...                       candidates={"alone": [Setting(fast)]}, student_sizes=(6, 4, 3))
        >>> len(result.test["alone"]), str(result.chosen["alone"])
        (2, 'lr 0.05, 1 epochs')
    """
    seeds = _check_seeds(seeds)
    if len(teachers) != len(seeds):
        raise ValueError(
            f"teachers must hold one teacher per seed ({len(seeds)}), got {len(teachers)}"
        )
    for name, data in (("val_set", val_set), ("test_set", test_set)):
        _check_labelled(data, name)
    if not isinstance(candidates, Mapping) or not candidates:
        raise ValueError("candidates must be a non-empty {arm: [Setting, ...]} mapping")
    grids = {
        _check_arm(arm): _check_candidates(c, f"candidates[{arm!r}]")
        for arm, c in candidates.items()
    }
    common = dict(
        student_sizes=student_sizes, student_layer=student_layer, teacher_layer=teacher_layer
    )
    result = ArmsResult()
    for arm, grid in grids.items():
        tuned: dict[Setting, nn.Module] = {}
        result.validation[arm] = {}
        for setting in grid:
            model = train_arm(arm, setting, labelled, seed=seeds[0], teacher=teachers[0], **common)
            tuned[setting] = model
            result.validation[arm][setting] = _accuracy(model, val_set)
        best = max(grid, key=lambda s: result.validation[arm][s])
        result.chosen[arm] = best
        models = [tuned[best]] + [
            train_arm(arm, best, labelled, seed=seed, teacher=teacher, **common)
            for seed, teacher in zip(seeds[1:], teachers[1:], strict=True)
        ]
        result.models[arm] = models
        result.test[arm] = [_accuracy(m, test_set) for m in models]
    return result


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must hold at least one seed, got none")
    for seed in seeds:
        check_positive_int("seeds", seed, allow_zero=True)
    return seeds


def born_again(
    teachers: Sequence[nn.Module],
    labelled: TensorDataset,
    val_set: TensorDataset,
    test_set: TensorDataset,
    *,
    seeds: Sequence[int],
    candidates: Sequence[Recipe],
    student_sizes: Sequence[int] = (784, 30, 10),
) -> ArmsResult:
    """Self-distillation: each teacher's architecture, trained again from its soft targets.

    The student of seed ``s`` is ``MLP(student_sizes)`` (the teachers'
    architecture) built from logical seed ``s + BORN_AGAIN_SEED_OFFSET``, so
    it does not start from its teacher's weights, and is trained with
    :func:`companion.distillation.fit` on ``teachers[i]``'s logits. The
    recipe is chosen among ``candidates`` on ``val_set`` with the first seed
    (the tuning run is reused for it). Compare ``result.test["born again"]``
    with the teachers' own test accuracies, seed by seed.

    Args:
        teachers: One trained teacher per seed, of architecture ``student_sizes``.
        labelled: The labelled training data (the teachers' own, for
            self-distillation proper).
        val_set, test_set: As :func:`compare_arms`.
        seeds: Logical seeds, one per teacher.
        candidates: Distillation recipes to choose from.
        student_sizes: The layer sizes of the teachers and students.

    Returns:
        An :class:`ArmsResult` with the single arm ``"born again"``.

    Raises:
        ValueError: For no seeds, ``teachers`` of another length, an empty or
            repeated candidate list, and whatever :func:`companion.distillation.fit` rejects.
        TypeError: For candidates that are not recipes, or data sets that are
            not ``TensorDataset``.

    Example:
        >>> ds = TensorDataset(torch.randn(64, 6), torch.randint(0, 3, (64,)))
        >>> teacher = MLP((6, 4, 3)).eval()
        >>> result = born_again([teacher], ds, ds, ds, seeds=[0], student_sizes=(6, 4, 3),
        ...                     candidates=[Recipe(lr=0.05, epochs=1, batch_size=16)])
        >>> len(result.test["born again"])
        1
    """
    seeds = _check_seeds(seeds)
    if len(teachers) != len(seeds):
        raise ValueError(
            f"teachers must hold one teacher per seed ({len(seeds)}), got {len(teachers)}"
        )
    labelled = _check_labelled(labelled)
    for name, data in (("val_set", val_set), ("test_set", test_set)):
        _check_labelled(data, name)
    grid = _check_candidates(
        [Setting(c) if isinstance(c, Recipe) else c for c in candidates], "candidates"
    )
    device = labelled.tensors[0].device

    def student_of(teacher: nn.Module, seed: int, recipe: Recipe) -> nn.Module:
        logits = predict(teacher, labelled.tensors[0])
        seed_everything(seed + BORN_AGAIN_SEED_OFFSET)
        student = MLP(tuple(student_sizes)).to(device)
        fit(student, labelled, recipe, seed=seed + BORN_AGAIN_SEED_OFFSET, teacher_logits=logits)
        return student.eval()

    result = ArmsResult(validation={"born again": {}})
    tuned = {}
    for setting in grid:
        tuned[setting] = student_of(teachers[0], seeds[0], setting.recipe)
        result.validation["born again"][setting] = _accuracy(tuned[setting], val_set)
    best = max(grid, key=lambda s: result.validation["born again"][s])
    result.chosen["born again"] = best
    models = [tuned[best]] + [
        student_of(teacher, seed, best.recipe)
        for teacher, seed in zip(teachers[1:], seeds[1:], strict=True)
    ]
    result.models["born again"] = models
    result.test["born again"] = [_accuracy(m, test_set) for m in models]
    return result
