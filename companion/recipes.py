"""Compressing your own model: a ResNet-18 for 28x28 images and chapter 6's protocol.

The chapter takes a network the book did not design (torchvision's
ResNet-18), prunes whole channels inside its residual blocks, removes them
physically with :func:`companion.surgery.shrink`, and recovers accuracy either
by fine-tuning on labels or by distilling from the dense model. The pieces:

* :func:`resnet18_28x28`: the torchvision model with a stem for 1x28x28 images;
* :func:`block_channel_masks` and :func:`prune_block_channels`: masks on the
  first convolution of every residual block, with the BatchNorm that follows
  masked in the same channels, so that each pruned channel outputs exactly zero
  and :func:`companion.surgery.shrink` can delete it;
* :func:`recovery_arms`: the two recovery pipelines over seeds, each with its
  learning rate chosen on the validation split;
* :func:`cost_table`: accuracy, parameters, FLOPs and latency side by side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .distillation import Recipe, fit
from .masks import apply_masks
from .metrics import count_parameters
from .pruning import magnitude_masks
from .speed import flops, latency
from .stats import Summary
from .table import Table
from .training import evaluate
from .utils import check_in_range, check_positive_int, clone_model

__all__ = [
    "ARMS",
    "resnet18_28x28",
    "residual_blocks",
    "block_channel_masks",
    "prune_block_channels",
    "RecoveryRuns",
    "recovery_arms",
    "cost_table",
]

#: The recovery pipelines of :func:`recovery_arms`, in order, with what each one trains on.
ARMS = {
    "fine-tuned": "cross-entropy on the labels",
    "distilled": "kd_loss: the dense model's soft targets and the labels",
}


def resnet18_28x28(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """torchvision's ResNet-18 with a stem for small grey images (28x28 by default).

    Only the first convolution changes: ``in_channels`` input channels (1 for
    grey images instead of 3) and a 3x3 kernel instead of 7x7 (a 7x7 kernel
    covers a quarter of a 28-pixel image). Its stride of 2 and the max-pool
    after it are kept, so the four stages run at 7x7, 4x4, 2x2 and 1x1. The
    CIFAR-style stem (stride 1, no max-pool) keeps 28x28 in the first stage:
    about 16 times the FLOPs, too slow to train on two CPU cores.

    Args:
        num_classes: Output classes, >= 1.
        in_channels: Channels of the input images, >= 1.

    Returns:
        The untrained model (``torchvision.models.ResNet``), with
        ``example_input_shape = (in_channels, 28, 28)`` for
        :func:`companion.speed.flops`.

    Raises:
        ValueError, TypeError: If a count is not a positive int.

    Example:
        >>> net = resnet18_28x28()
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    import torchvision

    check_positive_int("num_classes", num_classes)
    check_positive_int("in_channels", in_channels)
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=2, padding=1, bias=False)
    model.example_input_shape = (in_channels, 28, 28)
    return model


def residual_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """The residual blocks of ``model`` whose inner channels can be pruned freely.

    A block here is any sub-module with a ``conv1`` followed by a ``bn1`` and
    a ``conv2`` (torchvision's ``BasicBlock`` and ``Bottleneck``). The output
    channels of ``conv1`` are read only by ``bn1`` and ``conv2``; the block's
    output channels, by contrast, are added to the shortcut and so tied to every
    other block of the stage.

    Args:
        model: Any network.

    Returns:
        ``{qualified name: block}`` in definition order.

    Raises:
        TypeError: If ``model`` is not a ``torch.nn.Module``.
        ValueError: If it has no such block.

    Example:
        >>> list(residual_blocks(resnet18_28x28()))[:3]
        ['layer1.0', 'layer1.1', 'layer2.0']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    blocks = {
        name: module
        for name, module in model.named_modules()
        if isinstance(getattr(module, "conv1", None), nn.Conv2d)
        and isinstance(getattr(module, "bn1", None), nn.BatchNorm2d)
        and isinstance(getattr(module, "conv2", None), nn.Conv2d)
    }
    if not blocks:
        raise ValueError(
            "model has no residual block (a module with conv1, bn1 and conv2), "
            "e.g. a torchvision ResNet"
        )
    return blocks


def block_channel_masks(model: nn.Module, amount: float) -> dict[str, torch.Tensor]:
    """Structured masks that prune ``amount`` of the channels inside every residual block.

    In every block of :func:`residual_blocks`, the output channels (filters)
    of ``conv1`` with the smallest L1 norm are pruned, the same fraction in
    each block (:func:`companion.pruning.magnitude_masks` with
    ``structured=True``, restricted to these layers).

    Args:
        model: The trained network; it is not modified.
        amount: Fraction of each block's inner channels to prune, in ``[0, 1)``.

    Returns:
        ``{"<block>.conv1": mask}``, masks shaped like the weights (1 keep, 0 prune).

    Raises:
        ValueError: If ``amount`` is outside ``[0, 1)`` or ``model`` has no block.
        TypeError: If ``model`` is not a ``torch.nn.Module``.

    Example:
        >>> masks = block_channel_masks(resnet18_28x28(), 0.5)
        >>> len(masks), int(masks["layer1.0.conv1"].flatten(1)[:, 0].sum())
        (8, 32)
    """
    check_in_range("amount", amount, 0.0, 1.0, high_inclusive=False)
    names = [f"{name}.conv1" for name in residual_blocks(model)]
    masks = magnitude_masks(model, amount, structured=True)
    return {name: masks[name] for name in names}


def prune_block_channels(model: nn.Module, amount: float) -> nn.Module:
    r"""A copy of ``model`` with :func:`block_channel_masks` applied and the channels made dead.

    A masked filter outputs zero, but the BatchNorm after it turns that zero
    into its bias :math:`\beta` (minus the normalised running mean), and the
    ReLU passes a constant on. The masks are therefore applied with
    :func:`companion.masks.apply_masks` and ``structured=True``, which masks
    the BatchNorm's weight and bias in the pruned channels too: each one
    outputs exactly zero, in training and in eval mode, which is what
    :func:`companion.surgery.shrink` needs before it deletes a channel.

    Args:
        model: The trained network; it is not modified.
        amount: Fraction of each block's inner channels to prune, in ``[0, 1)``.

    Returns:
        The masked copy (``torch.nn.utils.prune`` masks on the ``conv1`` layers
        and their BatchNorms), in the same mode and on the same device.

    Raises:
        ValueError, TypeError: As :func:`block_channel_masks`.

    Example:
        >>> net = resnet18_28x28().eval()
        >>> pruned = prune_block_channels(net, 0.25)
        >>> int((pruned.layer1[0].bn1.weight == 0).sum())
        16
    """
    masks = block_channel_masks(model, amount)
    return apply_masks(clone_model(model), masks, structured=True)


@dataclass
class RecoveryRuns:
    """What :func:`recovery_arms` measured.

    Attributes:
        seeds: The logical seeds, in order.
        learning_rates: The candidate learning rates.
        validation: ``{arm: {lr: validation accuracy}}`` of the first seed's runs.
        chosen: ``{arm: the learning rate with the best validation accuracy}``.
        test: ``{arm: [test accuracy of each seed]}``, in the order of ``seeds``.
        models: ``{arm: the first seed's model, trained with the chosen rate}``.
    """

    seeds: list[int]
    learning_rates: list[float]
    validation: dict[str, dict[float, float]] = field(default_factory=dict)
    chosen: dict[str, float] = field(default_factory=dict)
    test: dict[str, list[float]] = field(default_factory=dict)
    models: dict[str, nn.Module] = field(default_factory=dict)

    def summary(self, arm: str) -> Summary:
        """Mean test accuracy of ``arm`` over the seeds with its 95% interval."""
        from .stats import summarize

        return summarize(self.test[arm])

    def difference(self, arm: str, baseline: str) -> Summary:
        """Paired (by seed) test-accuracy difference ``arm - baseline``."""
        from .stats import paired_difference

        return paired_difference(self.test[arm], self.test[baseline])


def _check_rates(learning_rates: Sequence[float]) -> list[float]:
    rates = list(learning_rates)
    if not rates:
        raise ValueError("learning_rates must hold at least one rate, got none")
    for lr in rates:
        check_in_range("learning_rates", lr, 0.0, float("inf"), low_inclusive=False)
    return rates


def recovery_arms(
    student: nn.Module,
    finetune_set: TensorDataset,
    val_set: TensorDataset,
    test_set: TensorDataset,
    *,
    teacher_logits: torch.Tensor,
    seeds: Sequence[int],
    learning_rates: Sequence[float] = (0.01, 0.03),
    recipe: Recipe | None = None,
) -> RecoveryRuns:
    """Recover a pruned (shrunk) network two ways, over seeds, tuned on validation.

    Every run starts from a copy of the same ``student`` and trains with
    :func:`companion.distillation.fit` (SGD with momentum and a cosine decay)
    on ``finetune_set``; the arms of :data:`ARMS` differ only in the loss:
    cross-entropy on the labels, or :func:`companion.distillation.kd_loss` with
    ``teacher_logits`` (the dense model's logits, computed once). Each arm gets
    the same tuning: every rate of ``learning_rates`` is tried with the first
    seed and the one with the best validation accuracy is kept (ties: the
    first); the other seeds train with it. The seed sets the data order only,
    so the spread is that of fine-tuning one pruned network, not of training
    the dense network again.

    Args:
        student: The network to recover; it is not modified.
        finetune_set: Labelled training data, on the student's device.
        val_set: Held-out data for choosing the learning rate.
        test_set: Where the reported accuracies are measured (never used to choose).
        teacher_logits: The dense model's logits for ``finetune_set``'s inputs.
        seeds: Logical seeds, at least one; the first one also tunes.
        learning_rates: Candidate initial learning rates, each > 0.
        recipe: Everything else (epochs, batch size, momentum, temperature,
            alpha); default ``Recipe(epochs=1, batch_size=64, temperature=4.0,
            alpha=0.9)``. Its ``lr`` is replaced by each candidate.

    Returns:
        A :class:`RecoveryRuns`.

    Raises:
        ValueError: If ``seeds`` or ``learning_rates`` is empty or a rate is not
            positive, and whatever :func:`companion.distillation.fit` rejects.
        TypeError: If ``student`` is not a ``torch.nn.Module``.

    Example:
        >>> from companion.models import MLP
        >>> ds = TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> runs = recovery_arms(MLP((4, 3)), ds, ds, ds, teacher_logits=torch.randn(32, 3),
        ...                      seeds=[0, 1], learning_rates=[0.1], recipe=Recipe(epochs=1, batch_size=16))
        >>> sorted(runs.test), len(runs.test["distilled"])
        (['distilled', 'fine-tuned'], 2)
    """
    if not isinstance(student, nn.Module):
        raise TypeError(f"student must be a torch.nn.Module, got {type(student).__name__}")
    seeds = [check_positive_int("seeds", s, allow_zero=True) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed, got none")
    rates = _check_rates(learning_rates)
    recipe = recipe or Recipe(epochs=1, batch_size=64, temperature=4.0, alpha=0.9)
    runs = RecoveryRuns(seeds=seeds, learning_rates=rates)

    def run(arm: str, lr: float, seed: int) -> nn.Module:
        model = clone_model(student)
        logits = teacher_logits if arm == "distilled" else None
        fit(model, finetune_set, recipe.replace(lr=lr), seed=seed, teacher_logits=logits)
        return model.eval()

    for arm in ARMS:
        candidates = {lr: run(arm, lr, seeds[0]) for lr in rates}
        runs.validation[arm] = {
            lr: evaluate(model, val_set)["accuracy"] for lr, model in candidates.items()
        }
        best = max(rates, key=lambda lr: (runs.validation[arm][lr], -rates.index(lr)))
        runs.chosen[arm] = best
        runs.models[arm] = candidates[best]
        runs.test[arm] = [evaluate(candidates[best], test_set)["accuracy"]]
        for seed in seeds[1:]:
            runs.test[arm].append(evaluate(run(arm, best, seed), test_set)["accuracy"])
    return runs


def cost_table(
    models: Mapping[str, nn.Module],
    accuracy: Mapping[str, Summary | float],
    *,
    batch_sizes: Sequence[int] = (1, 256),
    rounds: int = 3,
    min_run_time: float = 0.2,
) -> Table:
    """Accuracy, parameters, FLOPs and CPU latency of several models, one row each.

    Latency is measured with :func:`companion.speed.latency` (one warm-up
    call) in ``rounds`` interleaved rounds over the models, and each model's
    median over the rounds is reported, so that a burst of background load
    affects every model alike. FLOPs are those of one image.

    Args:
        models: ``{label: model}``, each with an ``example_input_shape``
            (as :func:`resnet18_28x28` sets); measured where they are, never
            modified.
        accuracy: ``{label: test accuracy}`` (a float, or a
            :class:`companion.stats.Summary` over seeds) for every label.
        batch_sizes: Batch sizes of the latency columns ``ms@<batch>``.
        rounds: Interleaved measurement rounds, >= 1.
        min_run_time: Seconds of each single latency measurement, > 0.

    Returns:
        A :class:`companion.table.Table` with columns ``model``, ``accuracy``,
        ``params``, ``MFLOPs`` and one ``ms@<batch>`` per batch size.

    Raises:
        ValueError: If ``models`` is empty, a label has no accuracy, or a
            number is out of range.

    Example:
        >>> from companion.models import MLP
        >>> t = cost_table({"mlp": MLP((784, 10))}, {"mlp": 0.9}, batch_sizes=(1,), rounds=1, min_run_time=0.01)
        >>> t.columns
        ['model', 'accuracy', 'params', 'MFLOPs', 'ms@1']
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty mapping of {label: model}")
    missing = [label for label in models if label not in accuracy]
    if missing:
        raise ValueError(f"accuracy has no entry for {missing}")
    batch_sizes = [check_positive_int("batch_sizes", b) for b in batch_sizes]
    check_positive_int("rounds", rounds)
    samples: dict[tuple[str, int], list[float]] = {
        (label, b): [] for label in models for b in batch_sizes
    }
    for _ in range(rounds):
        for b in batch_sizes:
            for label, model in models.items():
                seconds = latency(model, b, warmup=1, min_run_time=min_run_time)
                samples[label, b].append(seconds)
    rows = []
    for label, model in models.items():
        row: dict[str, object] = {
            "model": label,
            "accuracy": accuracy[label],
            "params": count_parameters(model),
            "MFLOPs": flops(model) / 1e6,
        }
        for b in batch_sizes:
            row[f"ms@{b}"] = 1e3 * float(torch.tensor(samples[label, b]).median())
        rows.append(row)
    formats = {"accuracy": ".2%", "MFLOPs": ".1f"} | {f"ms@{b}": ".2f" for b in batch_sizes}
    return Table(rows, formats=formats)
