"""One training loop and one evaluation function for the whole book.

Every experiment (plain training, L1/L2 penalties, fine-tuning after pruning,
soft pruning callbacks, distillation) goes through :func:`train`, so they all
share the same fast on-device batching, the same history and the same NaN
guard.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from .data import _check_dataset, iterate_batches, num_batches
from .masks import refresh_masked_weights
from .utils import _check_callable, actual_seed, check_in_range, check_positive_int

__all__ = ["train", "evaluate", "predict", "make_optimizer", "History", "LossFn"]

#: ``history[key]`` is a list with one entry per epoch.
History = dict[str, list[float]]
#: ``loss_fn(logits, batch)`` where ``batch`` is the tuple of tensors of the
#: data set (inputs, targets, and any extra tensors such as teacher logits).
LossFn = Callable[[torch.Tensor, tuple[torch.Tensor, ...]], torch.Tensor]


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _check_integer_targets(targets: torch.Tensor, label: str) -> None:
    """Raise TypeError unless ``targets`` has an integer dtype (class indices, not bool)."""
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TypeError(
            f"{label} must hold integer class indices (e.g. torch.int64), got {targets.dtype}"
        )


def _check_labelled(dataset: TensorDataset, name: str = "dataset", integer: bool = True) -> int:
    """``_check_dataset`` plus: a second tensor of targets, integer class indices if ``integer``."""
    n = _check_dataset(dataset, name)
    if len(dataset.tensors) < 2:
        raise ValueError(
            f"{name} must hold (inputs, targets) tensors, got {len(dataset.tensors)} tensor(s)"
        )
    if integer:
        _check_integer_targets(dataset.tensors[1], f"{name} targets")
    return n


def _check_target_range(targets: torch.Tensor, classes: int, name: str = "dataset") -> None:
    """Raise ValueError if a class index is outside ``[0, classes - 1]`` (one device sync)."""
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= classes:
        raise ValueError(
            f"{name} targets must be class indices in [0, {classes - 1}] (the model has {classes} "
            f"outputs), got values in [{low}, {high}]"
        )


def _check_device(model: nn.Module, tensor: torch.Tensor, name: str) -> None:
    """Raise ValueError if ``model``'s first parameter and ``tensor`` live on different devices."""
    first = next(model.parameters(), None)
    if first is not None and first.device != tensor.device:
        raise ValueError(
            f"model is on {first.device} but {name} is on {tensor.device}; put both on the same "
            f"device (model.to(device), and load_mnist(device=device) for the data)"
        )


def make_optimizer(
    model: nn.Module,
    name: str = "sgd",
    *,
    lr: float = 0.01,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """Build the optimizer :func:`train` would build for these arguments.

    Args:
        model: The model whose parameters are optimised.
        name: ``"sgd"`` or ``"adam"``.
        lr: Learning rate, > 0.
        momentum: SGD momentum in ``[0, 1)`` (ignored by Adam).
        weight_decay: L2 weight decay, >= 0: ``weight_decay * p`` is added to the
            gradient of every parameter ``p``, biases included.

    Returns:
        A :class:`torch.optim.Optimizer`.

    Raises:
        ValueError: For an unknown ``name`` or out-of-range numbers.
    """
    _check_model(model)
    check_in_range("lr", lr, 0.0, float("inf"), low_inclusive=False, high_inclusive=False)
    check_in_range("momentum", momentum, 0.0, 1.0, high_inclusive=False)
    check_in_range("weight_decay", weight_decay, 0.0, float("inf"), high_inclusive=False)
    if name == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd', 'adam' or a torch.optim.Optimizer, got {name!r}")


def _cross_entropy(logits: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return F.cross_entropy(logits, batch[1])


def train(
    model: nn.Module,
    dataset: TensorDataset,
    *,
    epochs: int,
    lr: float = 0.01,
    batch_size: int = 64,
    optimizer: str | torch.optim.Optimizer = "sgd",
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    penalty: Callable[[nn.Module], torch.Tensor] | None = None,
    penalty_weight: float = 0.0,
    loss_fn: LossFn | None = None,
    eval_set: TensorDataset | None = None,
    seed: int = 0,
    on_step: Callable[[int], None] | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    progress: bool = True,
) -> History:
    r"""Train ``model`` in place with mini-batch gradient descent.

    The objective of every step is

    .. math:: L = \ell(f(x), y) + \lambda \, \Omega(\theta)

    with :math:`\ell` the cross-entropy (or ``loss_fn``), :math:`\Omega` the
    optional ``penalty`` and :math:`\lambda` its ``penalty_weight``.

    Args:
        model: The network; it is moved to nothing and trained where it is, so
            put it on the data set's device first.
        dataset: Training data; its tensors should be on the model's device.
        epochs: Passes over ``dataset``, >= 1.
        lr: Learning rate of the optimizer built from ``optimizer``.
        batch_size: Examples per step.
        optimizer: ``"sgd"``, ``"adam"`` or an optimizer instance (then
            ``lr``, ``momentum`` and ``weight_decay`` are ignored, and the
            instance keeps its state, e.g. for resuming).
        momentum: SGD momentum.
        weight_decay: L2 weight decay of the built optimizer.
        penalty: ``penalty(model)`` returns a scalar tensor added to the loss,
            e.g. :func:`companion.penalties.l1_penalty`.
        penalty_weight: :math:`\lambda`, >= 0.
        loss_fn: ``loss_fn(logits, batch)`` replacing the cross-entropy;
            ``batch`` is the tuple of the data set's tensors for the step.
        eval_set: Evaluated with :func:`evaluate` after every epoch.
        seed: Logical seed of the shuffling order (one ``torch.Generator``
            seeded with ``seed + COMPANION_SEED_BASE``), so two calls with the
            same seed visit the data in the same order.
        on_step: Called after every optimizer step with the global step (from 1).
        on_epoch_end: Called after every epoch with the epoch (from 1),
            before ``eval_set`` is evaluated.
        progress: Show a ``tqdm.auto`` bar over the epochs.

    Returns:
        A history, one list entry per epoch under the keys ``"epoch"``, ``"loss"`` (mean
        training objective), ``"train_accuracy"`` (on the batches as they were
        seen), ``"seconds"``, and ``"eval_loss"``/``"eval_accuracy"`` when
        ``eval_set`` is given.

    Raises:
        TypeError: If ``model``, ``dataset`` or ``optimizer`` has the wrong
            type, ``penalty``, ``loss_fn``, ``on_step`` or ``on_epoch_end`` is
            not callable, ``seed`` or ``epochs`` is not an int, or (with the
            default cross-entropy) the targets are not integer class indices.
        ValueError: For out-of-range arguments, an empty data set, one without
            targets, model and data on different devices, or (with the default
            cross-entropy) a target outside ``[0, classes - 1]``.
        FloatingPointError: If the loss becomes NaN or infinite; the message
            names the epoch and step, and training stops there.

    Example:
        >>> from companion.models import MLP
        >>> ds = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
        >>> h = train(MLP((4, 8, 2)), ds, epochs=2, batch_size=8, progress=False)
        >>> h["epoch"]
        [1, 2]
    """
    _check_model(model)
    _check_labelled(dataset, integer=loss_fn is None)
    _check_device(model, dataset.tensors[0], "dataset")
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    shuffle_seed = actual_seed(seed)
    check_in_range("penalty_weight", penalty_weight, 0.0, float("inf"), high_inclusive=False)
    for name, value in (
        ("penalty", penalty),
        ("loss_fn", loss_fn),
        ("on_step", on_step),
        ("on_epoch_end", on_epoch_end),
    ):
        _check_callable(name, value)
    if eval_set is not None:
        _check_labelled(eval_set, "eval_set")
    if isinstance(optimizer, torch.optim.Optimizer):
        opt = optimizer
    elif isinstance(optimizer, str):
        opt = make_optimizer(model, optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        raise TypeError(
            f"optimizer must be 'sgd', 'adam' or a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    check_targets = loss_fn is None  # the default cross-entropy needs class indices in range
    loss_fn = loss_fn or _cross_entropy
    generator = torch.Generator().manual_seed(shuffle_seed)
    history: History = {"epoch": [], "loss": [], "train_accuracy": [], "seconds": []}
    if eval_set is not None:
        history["eval_loss"], history["eval_accuracy"] = [], []
    steps_per_epoch = num_batches(dataset, batch_size)
    global_step = 0
    epoch_range = range(1, epochs + 1)
    if progress:
        from tqdm.auto import (
            tqdm,
        )  # imported only when wanted: it warns in notebooks without ipywidgets

        bar = tqdm(epoch_range, desc="epochs", leave=False)
    else:
        bar = None
    for epoch in bar if bar is not None else epoch_range:
        model.train()
        start = time.perf_counter()
        total_loss = torch.zeros((), device=dataset.tensors[0].device)
        correct = torch.zeros((), dtype=torch.int64, device=dataset.tensors[0].device)
        seen = 0
        for step, batch in enumerate(
            iterate_batches(dataset, batch_size, shuffle=True, generator=generator), start=1
        ):
            inputs, targets = batch[0], batch[1]
            logits = model(inputs)
            if check_targets:  # once, on the whole data set, now that the class count is known
                _check_target_range(dataset.tensors[1], logits.shape[1])
                check_targets = False
            loss = loss_fn(logits, batch)
            if penalty is not None and penalty_weight > 0:
                loss = loss + penalty_weight * penalty(model)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the training loss became {loss.item()} at epoch {epoch}, step {step} of "
                    f"{steps_per_epoch}; lower the learning rate (lr={lr}) or the penalty weight, "
                    "and check the inputs for NaN or infinite values"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            global_step += 1
            if on_step is not None:
                on_step(global_step)
            total_loss += loss.detach() * len(targets)
            correct += (logits.argmax(1) == targets).sum()
            seen += len(targets)
        refresh_masked_weights(model)  # masked layers' weight lags the last step until a forward
        if on_epoch_end is not None:
            on_epoch_end(epoch)
        history["epoch"].append(epoch)
        history["loss"].append(total_loss.item() / seen)
        history["train_accuracy"].append(correct.item() / seen)
        history["seconds"].append(time.perf_counter() - start)
        postfix = {"loss": f"{history['loss'][-1]:.4f}"}
        if eval_set is not None:
            result = evaluate(model, eval_set)
            history["eval_loss"].append(result["loss"])
            history["eval_accuracy"].append(result["accuracy"])
            postfix["eval_acc"] = f"{result['accuracy']:.4f}"
        if bar is not None:
            bar.set_postfix(postfix)
    return history


@torch.no_grad()
def predict(model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 4096) -> torch.Tensor:
    """Return ``model``'s logits for ``inputs`` in eval mode, batch by batch.

    The model's training/eval mode is restored afterwards.

    Args:
        model: The network.
        inputs: A tensor of inputs on the model's device.
        batch_size: Examples per forward pass.

    Returns:
        The concatenated outputs.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module`` or ``inputs`` is not a tensor.
        ValueError: If ``batch_size`` < 1 or ``inputs`` is on another device than the model.
    """
    _check_model(model)
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    _check_device(model, inputs, "inputs")
    check_positive_int("batch_size", batch_size)
    was_training = model.training
    model.eval()
    try:
        return torch.cat(
            [model(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
        )
    finally:
        model.train(was_training)


def evaluate(
    model: nn.Module, dataset: TensorDataset, *, batch_size: int = 4096
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``dataset``, in eval mode.

    Args:
        model: The network (dropout is switched off for the evaluation and the
            previous mode restored afterwards).
        dataset: ``(inputs, targets)`` tensors on the model's device.
        batch_size: Examples per forward pass (only memory depends on it).

    Returns:
        A dict with ``"loss"`` (mean cross-entropy), ``"accuracy"`` (fraction
        correct, in [0, 1]) and ``"errors"`` (number of misclassified examples).

    Raises:
        TypeError: If ``model`` or ``dataset`` has the wrong type, or the
            targets are not integer class indices.
        ValueError: If ``dataset`` is empty or has no targets, model and data
            are on different devices, or a target is outside ``[0, classes - 1]``.

    Example:
        >>> from companion.models import MLP
        >>> ds = TensorDataset(torch.randn(10, 4), torch.zeros(10, dtype=torch.long))
        >>> sorted(evaluate(MLP((4, 2)), ds))
        ['accuracy', 'errors', 'loss']
    """
    _check_model(model)
    n = _check_labelled(dataset)
    inputs, targets = dataset.tensors[0], dataset.tensors[1]
    _check_device(model, inputs, "dataset")
    logits = predict(model, inputs, batch_size=batch_size)
    _check_target_range(targets, logits.shape[1])
    loss = F.cross_entropy(logits, targets).item()
    errors = int((logits.argmax(1) != targets).sum().item())
    return {"loss": loss, "accuracy": (n - errors) / n, "errors": errors}
