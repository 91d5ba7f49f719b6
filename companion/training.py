"""One training loop and one evaluation function for the whole book.

Every experiment (plain training, L1/L2 penalties, fine-tuning after pruning,
soft pruning callbacks, distillation) goes through :func:`train`, so they all
share the same batching, the same history and the same NaN guard.

Data can come in three forms:

* a :class:`~torch.utils.data.TensorDataset` whose tensors already live on the
  model's device: the fast path of the book, batches sliced on the device by
  :func:`companion.data.iterate_batches`;
* any other map-style :class:`~torch.utils.data.Dataset` (a
  :class:`~torch.utils.data.Subset`, a torchvision data set with
  augmentation, data read from disk): batched by a
  :class:`~torch.utils.data.DataLoader` with the same batch size and the same
  seeded shuffling, each batch moved to the model's device as it comes;
* a :class:`~torch.utils.data.DataLoader` of your own (workers, samplers,
  collate functions), used as it is; only the move to the device is added.

A model whose output is not a ``[batch, classes]`` tensor (a tuple, a dict as
torchvision's and Hugging Face's models return) is a clear error unless an
``output=`` callable picks the tensor, e.g. ``output=lambda out: out["logits"]``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, TensorDataset

from .data import _check_dataset, iterate_batches, num_batches
from .masks import refresh_masked_weights
from .utils import _check_callable, check_in_range, check_positive_int, make_generator

__all__ = ["train", "evaluate", "predict", "make_optimizer", "History", "LossFn"]

#: ``history[key]`` is a list with one entry per epoch.
History = dict[str, list[float]]
#: ``loss_fn(logits, batch)`` where ``batch`` is the tuple of tensors of the
#: data set (inputs, targets, and any extra tensors such as teacher logits).
LossFn = Callable[[torch.Tensor, tuple[torch.Tensor, ...]], torch.Tensor]


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _is_integer(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` holds integers (class indices): not float, complex or bool."""
    dtype = tensor.dtype
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def _check_integer_targets(targets: torch.Tensor, label: str) -> None:
    """Raise TypeError unless ``targets`` has an integer dtype (class indices, not bool)."""
    if not isinstance(targets, torch.Tensor) or not _is_integer(targets):
        kind = targets.dtype if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise TypeError(f"{label} must hold integer class indices (e.g. torch.int64), got {kind}")


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


def _model_device(model: nn.Module) -> torch.device | None:
    """The device of ``model``'s first parameter (or buffer); ``None`` for a model without any."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return None


# --------------------------------------------------------------------------- model outputs


def _output_argument(label: str) -> str:
    """The argument that picks a tensor from ``label``'s output: ``output`` or ``teacher_output``."""
    return "output" if label == "model" else f"{label}_output"


def _check_class_output(out: torch.Tensor, batch: int, label: str = "model") -> None:
    """Raise ValueError unless ``out`` is ``[batch, classes]`` (what cross-entropy and accuracy read)."""
    if out.dim() != 2 or out.shape[0] != batch:
        argument = _output_argument(label)
        raise ValueError(
            f"{label} output must have shape [batch, classes] = [{batch}, classes] for the "
            f"cross-entropy and the accuracy, got {tuple(out.shape)}; pass {argument}= to "
            "reshape it, or loss_fn= for another kind of target (e.g. regression)"
        )


def _model_output(
    model: nn.Module,
    inputs: Any,
    output: Callable[[Any], torch.Tensor] | None,
    *,
    classes_for: int | None = None,
    label: str = "model",
) -> torch.Tensor:
    """``model(inputs)``, passed through ``output`` if given, checked to be a tensor.

    With ``classes_for=n`` the tensor must be ``[n, classes]`` (what the cross-entropy and the
    accuracy read); otherwise any tensor is accepted (a user loss decides what it needs).
    ``label`` names the model in the messages (``"model"``, ``"teacher"``).
    """
    out = model(inputs)
    if output is not None:
        out = output(out)
    if not isinstance(out, torch.Tensor):
        argument = _output_argument(label)
        raise TypeError(
            f"{label} returned a {type(out).__name__}"
            + (" (after output)" if output is not None else "")
            + f", not a tensor of shape [batch, classes]; pass {argument}= to pick the logits "
            f"from it, e.g. {argument}=lambda out: out[0] for a tuple or "
            f'{argument}=lambda out: out["logits"] for a dict'
        )
    if classes_for is not None:
        _check_class_output(out, classes_for, label)
    return out


# --------------------------------------------------------------------------- data sources


class _MappedBatches:
    """A data source whose batches pass through ``fn`` on the model's device.

    Private: :func:`companion.distillation.distill` wraps a user's data set in it to add
    the teacher's logits to every batch. ``need_targets`` and ``integer_targets`` are the
    checks the wrapped data set's own batches get.
    """

    def __init__(
        self,
        dataset: Dataset | DataLoader,
        fn: Callable[[tuple[Any, ...]], tuple[Any, ...]],
        *,
        need_targets: bool,
        integer_targets: bool,
    ) -> None:
        self.dataset = dataset
        self.fn = fn
        self.need_targets = need_targets
        self.integer_targets = integer_targets


def _check_source(
    dataset: object,
    name: str = "dataset",
    *,
    model: nn.Module | None = None,
    need_targets: bool = True,
    integer: bool = True,
) -> int | None:
    """Check what can be checked before iterating; return the number of examples if known.

    A ``TensorDataset`` gets today's checks up front (non-empty, targets, integer targets if
    ``integer``, on ``model``'s device); other data sets are checked for their type and, where
    they have a length, emptiness; their batches are checked as they come.
    """
    if isinstance(dataset, _MappedBatches):
        return _check_source(
            dataset.dataset,
            name,
            model=model,
            need_targets=dataset.need_targets,
            integer=dataset.integer_targets,
        )
    if isinstance(dataset, TensorDataset):
        n = (
            _check_labelled(dataset, name, integer)
            if need_targets
            else _check_dataset(dataset, name)
        )
        if model is not None:
            _check_device(model, dataset.tensors[0], name)
        return n
    if isinstance(dataset, DataLoader):
        inner = dataset.dataset
    elif isinstance(dataset, Dataset):
        inner = dataset
    else:
        raise TypeError(
            f"{name} must be a torch.utils.data.TensorDataset, a map-style "
            f"torch.utils.data.Dataset or a torch.utils.data.DataLoader, got "
            f"{type(dataset).__name__}"
        )
    if isinstance(inner, IterableDataset):
        try:
            n = len(inner)
        except TypeError:
            return None  # a stream without a length: emptiness shows when it yields nothing
    else:
        try:
            n = len(inner)
        except TypeError as error:
            raise TypeError(
                f"{name} is a map-style {type(inner).__name__} without __len__; define "
                "__len__, or pass a torch.utils.data.DataLoader over it"
            ) from error
    if n == 0:
        raise ValueError(f"{name} is empty; it must hold at least one example")
    return n


def _as_tuple(batch: object, name: str) -> tuple[Any, ...]:
    """A collated batch as a tuple: a tensor is ``(inputs,)``, a list or tuple stays in order."""
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)):
        return tuple(batch)
    raise TypeError(
        f"{name} must yield (inputs, targets, ...) tuples or tensors, got a batch of type "
        f"{type(batch).__name__}; return tuples from the data set's __getitem__ (or give the "
        "DataLoader a collate_fn that does)"
    )


def _to_device(value: Any, device: torch.device | None) -> Any:
    if device is not None and isinstance(value, torch.Tensor) and value.device != device:
        return value.to(device, non_blocking=True)
    return value


class _Permutation(Sampler[int]):
    """One ``torch.randperm(n, generator=generator)`` per epoch: the order of ``iterate_batches``."""

    def __init__(self, n: int, generator: torch.Generator | None) -> None:
        self.n, self.generator = n, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n, generator=self.generator).tolist())


class _BatchSource:
    """Batches of any supported data source, one epoch per call of :meth:`epoch`.

    A ``TensorDataset`` is sliced by :func:`companion.data.iterate_batches` (the tensors are
    already on the device, as :func:`_check_source` made sure); any other ``Dataset`` goes
    through a ``DataLoader`` with the same batch size and the same ``generator`` for the order;
    a ``DataLoader`` is iterated as it is. Batches of the last two kinds are checked (a tuple,
    targets if ``need_targets``, integer ones if ``integer``) and moved to ``device``.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None,
        device: torch.device | None,
        name: str = "dataset",
        need_targets: bool = True,
        integer: bool = True,
    ) -> None:
        self.name = name
        self.fn: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None = None
        if isinstance(dataset, _MappedBatches):
            self.fn = dataset.fn
            need_targets, integer = dataset.need_targets, dataset.integer_targets
            dataset = dataset.dataset
        self.need_targets, self.integer = need_targets, integer
        self.device = device
        self.tensors: TensorDataset | None = None
        self.loader: DataLoader | None = None
        self.batch_size, self.shuffle, self.generator = batch_size, shuffle, generator
        if isinstance(dataset, TensorDataset):
            self.tensors = dataset
        elif isinstance(dataset, DataLoader):
            self.loader = dataset
        else:
            # An IterableDataset has its own order: it is not shuffled.
            shuffled = shuffle and not isinstance(dataset, IterableDataset)
            # The sampler alone draws from ``generator``: one randperm per epoch, the order of
            # the fast path (RandomSampler would draw a second one per epoch). Every iteration
            # of a DataLoader also draws a base seed for its workers, from its own generator
            # or else from the global one, which would shift dropout and initialisations
            # after it: it gets a private generator, seeded alike.
            sampler = _Permutation(len(dataset), generator) if shuffled else None
            worker_seed = generator.initial_seed() if shuffled and generator is not None else 0
            self.loader = DataLoader(
                dataset,
                batch_size=batch_size,
                sampler=sampler,
                generator=torch.Generator().manual_seed(worker_seed),
                drop_last=False,
                pin_memory=device is not None and device.type == "cuda",
            )

    @property
    def checks_batches(self) -> bool:
        """Whether batches arrive unchecked, so that targets must be checked batch by batch."""
        return self.tensors is None

    def __len__(self) -> int:
        if self.tensors is not None:
            return num_batches(self.tensors, self.batch_size)
        assert self.loader is not None
        return len(self.loader)

    def steps(self) -> int | str:
        """Batches per epoch, or ``"?"`` for a stream without a length."""
        try:
            return len(self)
        except TypeError:
            return "?"

    def epoch(self) -> Iterator[tuple[Any, ...]]:
        if self.tensors is not None:
            batches: Iterator[tuple[Any, ...]] = iterate_batches(
                self.tensors, self.batch_size, shuffle=self.shuffle, generator=self.generator
            )
        else:
            batches = self._loaded()
        if self.fn is None:
            return batches
        return (self.fn(batch) for batch in batches)

    def _loaded(self) -> Iterator[tuple[Any, ...]]:
        assert self.loader is not None
        for raw in self.loader:
            batch = _as_tuple(raw, self.name)
            if self.need_targets:
                if len(batch) < 2:
                    raise ValueError(
                        f"{self.name} must hold (inputs, targets) tensors, got batches of "
                        f"{len(batch)} item(s)"
                    )
                if self.integer:
                    _check_integer_targets(batch[1], f"{self.name} targets")
            yield tuple(_to_device(value, self.device) for value in batch)


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


def _counts_accuracy(logits: torch.Tensor, targets: object) -> bool:
    """Whether a step is classification: integer class indices, one per row of ``[batch, k]``."""
    return (
        isinstance(targets, torch.Tensor)
        and _is_integer(targets)
        and targets.dim() == 1
        and logits.dim() == 2
        and len(targets) == len(logits)
    )


def train(
    model: nn.Module,
    dataset: Dataset | DataLoader,
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
    output: Callable[[Any], torch.Tensor] | None = None,
    eval_set: Dataset | DataLoader | None = None,
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
            put it on the device first.
        dataset: Training data. A :class:`~torch.utils.data.TensorDataset`
            (the fast path: its tensors must already be on the model's device),
            any other map-style :class:`~torch.utils.data.Dataset` whose items
            are ``(input, target, ...)`` tuples (batched by a ``DataLoader``
            with ``batch_size`` and the seeded order; augmentation in the data
            set runs anew every epoch), or a
            :class:`~torch.utils.data.DataLoader`, used as it is (its own batch
            size and order; ``batch_size`` and ``seed`` do not apply to it).
            Batches of the last two are moved to the model's device as they come.
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
            ``batch`` is the tuple of the data set's tensors for the step. With
            float targets (regression, outputs ``[batch]`` or ``[batch, k]``)
            no accuracy is reported.
        output: ``output(model_output)`` returns the tensor the loss reads,
            for models that return a tuple or a dict (``lambda out: out[0]``,
            ``lambda out: out["logits"]``). Without it the model must return a
            tensor (``[batch, classes]`` for the default cross-entropy).
        eval_set: Evaluated with :func:`evaluate` after every epoch (any form
            ``dataset`` may take): with the cross-entropy and the accuracy when
            the training targets are class indices, with ``loss_fn`` (and no
            accuracy) when they are not.
        seed: Logical seed of the shuffling order (one ``torch.Generator``
            from :func:`companion.utils.make_generator`, seeded with
            ``seed + COMPANION_SEED_BASE``), so two calls with the same seed
            visit the data in the same order.
        on_step: Called after every optimizer step with the global step (from 1).
        on_epoch_end: Called after every epoch with the epoch (from 1),
            before ``eval_set`` is evaluated.
        progress: Show a ``tqdm.auto`` bar over the epochs.

    Returns:
        A history, one list entry per epoch under the keys ``"epoch"``,
        ``"loss"`` (mean training objective), ``"train_accuracy"`` (on the
        batches as they were seen; classification only), ``"seconds"``, and
        ``"eval_loss"`` and (classification only) ``"eval_accuracy"`` when
        ``eval_set`` is given. Classification means integer targets, one per
        row of a ``[batch, classes]`` output; anything else (regression
        through ``loss_fn``) has no accuracy keys.

    Raises:
        TypeError: If ``model``, ``dataset`` or ``optimizer`` has the wrong
            type, ``penalty``, ``loss_fn``, ``output``, ``on_step`` or
            ``on_epoch_end`` is not callable, ``seed`` or ``epochs`` is not an
            int, the model's output (after ``output``) is not a tensor, a
            batch is not a tuple, or (with the default cross-entropy) the
            targets are not integer class indices.
        ValueError: For out-of-range arguments, an empty data set, one without
            targets, model and data on different devices (a ``TensorDataset``),
            an output that is not ``[batch, classes]`` for the default
            cross-entropy, or (with the default cross-entropy) a target
            outside ``[0, classes - 1]``.
        FloatingPointError: If the loss becomes NaN or infinite; the message
            names the epoch and step, and training stops there.

    Example:
        >>> from companion.models import MLP
        >>> ds = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
        >>> h = train(MLP((4, 8, 2)), ds, epochs=2, batch_size=8, progress=False)
        >>> h["epoch"]
        [1, 2]
        >>> from torch.utils.data import DataLoader, Subset
        >>> h = train(MLP((4, 8, 2)), Subset(ds, range(16)), epochs=1, progress=False)
        >>> h = train(MLP((4, 8, 2)), DataLoader(ds, batch_size=4), epochs=1, progress=False)
        >>> len(h["loss"])
        1
    """
    _check_model(model)
    _check_source(dataset, model=model, integer=loss_fn is None)
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    generator = make_generator(seed)
    check_in_range("penalty_weight", penalty_weight, 0.0, float("inf"), high_inclusive=False)
    for name, value in (
        ("penalty", penalty),
        ("loss_fn", loss_fn),
        ("output", output),
        ("on_step", on_step),
        ("on_epoch_end", on_epoch_end),
    ):
        _check_callable(name, value)
    if eval_set is not None:
        _check_source(eval_set, "eval_set", model=model, integer=loss_fn is None)
    if isinstance(optimizer, torch.optim.Optimizer):
        opt = optimizer
    elif isinstance(optimizer, str):
        opt = make_optimizer(model, optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        raise TypeError(
            f"optimizer must be 'sgd', 'adam' or a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    default_loss = loss_fn is None  # the cross-entropy needs class indices in range
    check_targets = default_loss
    loss_fn = loss_fn or _cross_entropy
    device = _model_device(model)
    source = _BatchSource(
        dataset,
        batch_size,
        shuffle=True,
        generator=generator,
        device=device,
        integer=default_loss,
    )
    history: History = {"epoch": [], "loss": [], "train_accuracy": [], "seconds": []}
    if eval_set is not None:
        history["eval_loss"], history["eval_accuracy"] = [], []
    classify: bool | None = None  # decided by the first step's targets and output
    steps_per_epoch = source.steps()
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
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        for step, batch in enumerate(source.epoch(), start=1):
            inputs, targets = batch[0], batch[1]
            logits = _model_output(
                model, inputs, output, classes_for=len(targets) if default_loss else None
            )
            if check_targets:  # the class count is known now that the model has answered
                if source.checks_batches:  # every batch, as it comes
                    _check_target_range(targets, logits.shape[1])
                else:  # once, on the whole data set
                    _check_target_range(source.tensors.tensors[1], logits.shape[1])
                    check_targets = False
            if classify is None:
                classify = _counts_accuracy(logits, targets)
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
            if classify:
                correct += (logits.argmax(1) == targets).sum()
            seen += len(targets)
        if seen == 0:
            raise ValueError("dataset is empty; it yielded no batches in an epoch")
        refresh_masked_weights(model)  # masked layers' weight lags the last step until a forward
        if on_epoch_end is not None:
            on_epoch_end(epoch)
        history["epoch"].append(epoch)
        history["loss"].append(total_loss.item() / seen)
        history["train_accuracy"].append(correct.item() / seen)
        history["seconds"].append(time.perf_counter() - start)
        postfix = {"loss": f"{history['loss'][-1]:.4f}"}
        if eval_set is not None:
            result = _evaluate(
                model,
                eval_set,
                batch_size=4096,
                loss_fn=None if classify else loss_fn,
                output=output,
                name="eval_set",
            )
            history["eval_loss"].append(result["loss"])
            if classify:
                history["eval_accuracy"].append(result["accuracy"])
                postfix["eval_acc"] = f"{result['accuracy']:.4f}"
        if bar is not None:
            bar.set_postfix(postfix)
    if not classify:  # regression through loss_fn: an accuracy would mean nothing
        del history["train_accuracy"]
        history.pop("eval_accuracy", None)
    return history


@torch.no_grad()
def predict(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    batch_size: int = 4096,
    output: Callable[[Any], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Return ``model``'s logits for ``inputs`` in eval mode, batch by batch.

    The model's training/eval mode is restored afterwards.

    Args:
        model: The network.
        inputs: A tensor of inputs on the model's device.
        batch_size: Examples per forward pass.
        output: ``output(model_output)`` picks the tensor from a model that
            returns a tuple or a dict, e.g. ``lambda out: out[0]``.

    Returns:
        The concatenated outputs.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``, ``inputs`` is not a
            tensor, ``output`` is not callable, or the model's output (after
            ``output``) is not a tensor.
        ValueError: If ``batch_size`` < 1 or ``inputs`` is on another device than the model.

    Example:
        >>> class Pair(nn.Module):  # a model that returns (logits, features)
        ...     def forward(self, x):
        ...         return x[:, :2], x
        >>> predict(Pair(), torch.ones(3, 4), output=lambda out: out[0]).shape
        torch.Size([3, 2])
    """
    _check_model(model)
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    _check_device(model, inputs, "inputs")
    check_positive_int("batch_size", batch_size)
    _check_callable("output", output)
    return _predict(model, inputs, batch_size, output)


@torch.no_grad()
def _predict(
    model: nn.Module,
    inputs: torch.Tensor,
    batch_size: int,
    output: Callable[[Any], torch.Tensor] | None,
    label: str = "model",
) -> torch.Tensor:
    """:func:`predict` without the argument checks; ``label`` names the model in errors."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat(
            [
                _model_output(model, inputs[i : i + batch_size], output, label=label)
                for i in range(0, len(inputs), batch_size)
            ]
        )
    finally:
        model.train(was_training)


def evaluate(
    model: nn.Module,
    dataset: Dataset | DataLoader,
    *,
    batch_size: int = 4096,
    loss_fn: LossFn | None = None,
    output: Callable[[Any], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``dataset``, in eval mode.

    Args:
        model: The network (dropout is switched off for the evaluation and the
            previous mode restored afterwards).
        dataset: ``(inputs, targets)`` in any form :func:`train` accepts: a
            ``TensorDataset`` on the model's device, any map-style ``Dataset``
            (batched in order by a ``DataLoader``) or a ``DataLoader`` (used as
            it is); batches of the last two are moved to the model's device.
        batch_size: Examples per forward pass (only memory depends on it).
        loss_fn: ``loss_fn(outputs, batch)`` replacing the cross-entropy, for
            targets that are not class indices (regression); then only the
            loss is reported, averaged over examples (each batch's value
            weighted by its size).
        output: ``output(model_output)`` picks the tensor from a model that
            returns a tuple or a dict, as in :func:`train`.

    Returns:
        Without ``loss_fn``: a dict with ``"loss"`` (mean cross-entropy),
        ``"accuracy"`` (fraction correct, in [0, 1]) and ``"errors"`` (number
        of misclassified examples). With ``loss_fn``: ``{"loss": mean loss}``
        only.

    Raises:
        TypeError: If ``model``, ``dataset``, ``loss_fn`` or ``output`` has
            the wrong type, the model's output is not a tensor, or (without
            ``loss_fn``) the targets are not integer class indices.
        ValueError: If ``dataset`` is empty or has no targets, model and data
            are on different devices (a ``TensorDataset``), the output is not
            ``[batch, classes]`` or a target is outside ``[0, classes - 1]``
            (without ``loss_fn``).

    Example:
        >>> from companion.models import MLP
        >>> ds = TensorDataset(torch.randn(10, 4), torch.zeros(10, dtype=torch.long))
        >>> sorted(evaluate(MLP((4, 2)), ds))
        ['accuracy', 'errors', 'loss']
        >>> regression = TensorDataset(torch.randn(10, 4), torch.randn(10, 2))
        >>> mse = lambda out, batch: F.mse_loss(out, batch[1])
        >>> sorted(evaluate(MLP((4, 2)), regression, loss_fn=mse))
        ['loss']
    """
    _check_model(model)
    _check_source(dataset, model=model, integer=loss_fn is None)
    check_positive_int("batch_size", batch_size)
    _check_callable("loss_fn", loss_fn)
    _check_callable("output", output)
    return _evaluate(
        model, dataset, batch_size=batch_size, loss_fn=loss_fn, output=output, name="dataset"
    )


def _evaluate(
    model: nn.Module,
    dataset: Dataset | DataLoader,
    *,
    batch_size: int,
    loss_fn: LossFn | None,
    output: Callable[[Any], torch.Tensor] | None,
    name: str,
) -> dict[str, float]:
    """:func:`evaluate` without the argument checks (``train`` checked ``eval_set`` once)."""
    if loss_fn is None and isinstance(dataset, TensorDataset):
        # The book's path: one concatenation of the logits and one cross-entropy over them.
        n = len(dataset.tensors[0])
        inputs, targets = dataset.tensors[0], dataset.tensors[1]
        logits = predict(model, inputs, batch_size=batch_size, output=output)
        _check_class_output(logits, n)
        _check_integer_targets(targets, f"{name} targets")
        _check_target_range(targets, logits.shape[1], name)
        loss = F.cross_entropy(logits, targets).item()
        errors = int((logits.argmax(1) != targets).sum().item())
        return {"loss": loss, "accuracy": (n - errors) / n, "errors": errors}
    source = _BatchSource(
        dataset,
        batch_size,
        shuffle=False,
        generator=None,
        device=_model_device(model),
        name=name,
        integer=loss_fn is None,
    )
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    errors, n = 0, 0
    try:
        with torch.no_grad():
            for batch in source.epoch():
                targets = batch[1]
                size = len(targets)
                out = _model_output(
                    model, batch[0], output, classes_for=size if loss_fn is None else None
                )
                if loss_fn is None:
                    _check_target_range(targets, out.shape[1], name)
                    total += F.cross_entropy(out, targets, reduction="sum").double().cpu()
                    errors += int((out.argmax(1) != targets).sum())
                else:
                    total += loss_fn(out, batch).detach().double().cpu() * size
                n += size
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError(f"{name} is empty; it yielded no batches")
    if loss_fn is not None:
        return {"loss": total.item() / n}
    return {"loss": total.item() / n, "accuracy": (n - errors) / n, "errors": errors}
