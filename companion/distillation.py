r"""Knowledge distillation (Hinton, Vinyals and Dean 2015).

A small *student* is trained on a mixture of the true labels and the
*teacher*'s softened output distribution:

.. math::

    L = (1 - \alpha)\,\mathrm{CE}(z_s, y)
        + \alpha\,T^2\,\mathrm{KL}\big(\mathrm{softmax}(z_t / T)\,\big\|\,\mathrm{softmax}(z_s / T)\big)

where :math:`z_s, z_t` are the student's and teacher's logits, :math:`T` the
temperature and :math:`\alpha` the weight of the soft term.

Why :math:`T^2`: per example, the gradient of the KL term with respect to a
student logit is :math:`(p_s - p_t)/T`, and for large :math:`T` the difference
of the softened probabilities itself shrinks like :math:`1/T` (it tends to
:math:`(z_s - z_t)/(K T)` for :math:`K` classes with zero-mean logits), so the
gradient falls like :math:`1/T^2`. Multiplying by :math:`T^2` keeps the soft
term's gradient on the same scale whatever the temperature, so :math:`\alpha`
means the same thing at every :math:`T` (Hinton et al. 2015, section 2).

The batchmean pitfall: ``F.kl_div(..., reduction="mean")`` averages over
*every element* (batch times classes), which divides the KL by the number of
classes as well; the KL divergence per example is ``reduction="batchmean"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .training import (
    History,
    _check_integer_targets,
    _check_labelled,
    _check_source,
    _MappedBatches,
    _model_device,
    _model_output,
    _predict,
    make_optimizer,
    predict,
    train,
)
from .utils import _check_callable, check_in_range, check_positive_int

__all__ = [
    "soft_targets",
    "kd_loss",
    "KDLoss",
    "distill",
    "cosine_sgd",
    "Recipe",
    "fit",
    "train_teachers",
    "scarce_label_arms",
    "omitted_class",
    "FeatureLoss",
    "capture_features",
    "make_regressor",
    "hint_loss",
    "cosine_feature_loss",
    "mixture_probs",
    "fit_one_mode",
    "OneModeFit",
]


def _check_temperature(temperature: float) -> float:
    return check_in_range(
        "temperature", temperature, 0.0, float("inf"), low_inclusive=False, high_inclusive=False
    )


def _check_logits(name: str, logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"{name} must have shape [batch, classes], got {tuple(logits.shape)}")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def _check_same_device(name: str, tensor: torch.Tensor, student_logits: torch.Tensor) -> None:
    if (
        isinstance(tensor, torch.Tensor)
        and isinstance(student_logits, torch.Tensor)
        and tensor.device != student_logits.device
    ):
        raise ValueError(
            f"{name} is on {tensor.device} but student_logits is on {student_logits.device}; "
            "put them on the same device"
        )


def _check_targets(targets: torch.Tensor, student_logits: torch.Tensor) -> None:
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor or None, got {type(targets).__name__}")
    _check_same_device("targets", targets, student_logits)
    _check_integer_targets(targets, "targets")
    if targets.shape != (student_logits.shape[0],):
        raise ValueError(
            f"targets must have shape [{student_logits.shape[0]}] (one class index per example), "
            f"got {tuple(targets.shape)}"
        )
    classes = student_logits.shape[1]
    if len(targets) and (int(targets.min()) < 0 or int(targets.max()) >= classes):
        raise ValueError(f"targets must be class indices in [0, {classes - 1}], got values outside")


def soft_targets(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    r"""The softened distribution :math:`\mathrm{softmax}(z / T)`.

    Higher temperatures raise the probabilities of the non-argmax classes,
    revealing which wrong classes the network finds similar: Hinton et al.'s
    "dark knowledge".

    Args:
        logits: ``[batch, classes]``.
        temperature: :math:`T > 0`.

    Returns:
        Probabilities of the same shape, each row summing to 1.

    Raises:
        ValueError: If ``temperature`` is not positive or the logits are not
            a finite 2-D tensor.

    Example:
        >>> soft_targets(torch.tensor([[2.0, 0.0]]), temperature=2.0)
        tensor([[0.7311, 0.2689]])
    """
    _check_temperature(temperature)
    _check_logits("logits", logits)
    return F.softmax(logits / temperature, dim=1)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    r"""The distillation loss of Hinton et al. (2015), averaged over the batch.

    .. math::

        (1 - \alpha)\,\mathrm{CE}(z_s, y)
        + \alpha\,T^2\,\mathrm{KL}\big(\mathrm{softmax}(z_t/T)\,\|\,\mathrm{softmax}(z_s/T)\big)

    The KL divergence is summed over classes and averaged over examples
    (``batchmean``). With ``targets=None`` only the soft term
    :math:`T^2\,\mathrm{KL}` is returned (``alpha`` is then ignored), e.g. for
    a transfer set without labels.

    Args:
        student_logits: ``[batch, classes]``, with gradient.
        teacher_logits: ``[batch, classes]``; treated as constants.
        targets: Class indices ``[batch]`` or ``None``.
        temperature: :math:`T > 0`.
        alpha: Weight :math:`\alpha \in [0, 1]` of the soft term.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: For a non-positive temperature, ``alpha`` outside
            ``[0, 1]``, mismatched shapes or class counts, targets out of
            range, non-finite logits, or tensors on different devices.
        TypeError: If an argument is not a tensor, or ``targets`` does not
            hold integer class indices.

    Example:
        >>> z = torch.tensor([[1.0, 2.0, 3.0]])
        >>> kd_loss(z, z, temperature=4.0).item()
        0.0
    """
    _check_temperature(temperature)
    check_in_range("alpha", alpha, 0.0, 1.0)
    _check_same_device("teacher_logits", teacher_logits, student_logits)
    _check_logits("student_logits", student_logits)
    _check_logits("teacher_logits", teacher_logits)
    if student_logits.shape[1] != teacher_logits.shape[1]:
        raise ValueError(
            f"student_logits has {student_logits.shape[1]} classes but teacher_logits has "
            f"{teacher_logits.shape[1]}; both must score the same classes"
        )
    if student_logits.shape[0] != teacher_logits.shape[0]:
        raise ValueError(
            f"student_logits and teacher_logits must have the same batch size, got "
            f"{student_logits.shape[0]} and {teacher_logits.shape[0]}"
        )
    if targets is not None:
        _check_targets(targets, student_logits)
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits.detach() / temperature, dim=1)
    soft = F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature**2
    if targets is None:
        return soft
    hard = F.cross_entropy(student_logits, targets)
    return (1 - alpha) * hard + alpha * soft


class KDLoss(nn.Module):
    """:func:`kd_loss` as a module with fixed ``temperature`` and ``alpha``.

    Example:
        >>> loss = KDLoss(temperature=2.0, alpha=0.5)
        >>> z = torch.zeros(4, 10)
        >>> round(loss(z, z, torch.zeros(4, dtype=torch.long)).item(), 4)  # half of CE = ln(10) / 2
        1.1513
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        self.alpha = check_in_range("alpha", alpha, 0.0, 1.0)

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        targets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return kd_loss(
            student_logits, teacher_logits, targets, temperature=self.temperature, alpha=self.alpha
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}"


def distill(
    student: nn.Module,
    teacher: nn.Module | None,
    dataset: Dataset | DataLoader,
    *,
    epochs: int,
    temperature: float = 4.0,
    alpha: float = 0.9,
    cache_teacher: bool = True,
    teacher_logits: torch.Tensor | None = None,
    labels: bool = True,
    teacher_output: Callable[[Any], torch.Tensor] | None = None,
    features: Sequence[FeatureLoss] | None = None,
    **train_kwargs: Any,
) -> History:
    r"""Train ``student`` to imitate ``teacher`` on ``dataset`` with :func:`kd_loss`.

    This is :func:`companion.training.train` with the distillation loss, so it
    has the same optimizer options, progress bar, history and NaN guard, and
    takes the same forms of data. The teacher is put in eval mode (no
    dropout), runs under ``torch.no_grad()`` and is never updated; its
    previous mode is restored afterwards.

    With a :class:`~torch.utils.data.TensorDataset` and ``cache_teacher=True``
    the teacher's logits are computed once for the whole training set and
    stored beside it (one forward pass instead of one per epoch). That is
    valid because the inputs are the same every epoch and the teacher in eval
    mode is deterministic; with a stochastic teacher, use
    ``cache_teacher=False``. Logits computed earlier (one teacher, many
    students) can be passed as ``teacher_logits``; the teacher is then not run
    at all and may be ``None``. Any other data set (a map-style ``Dataset``,
    perhaps with augmentation, or a ``DataLoader``) may give other inputs
    every epoch, so the teacher runs on every batch whatever
    ``cache_teacher`` says, and ``teacher_logits`` cannot be used.

    With ``labels=False`` the loss is the soft term alone
    (``kd_loss(..., targets=None)``): the transfer set is unlabelled, its
    targets (if it has any) are never read, and it may hold the inputs only.
    The history's ``train_accuracy`` then measures agreement with the
    teacher's predictions.

    With ``features`` (a list of :class:`FeatureLoss` terms) the student also
    imitates the teacher's hidden layers: the loss of every step is

    .. math:: L = L_\mathrm{KD} + \sum_j w_j\,L_j

    with :math:`L_\mathrm{KD}` the :func:`kd_loss` above and :math:`L_j` the
    hint or cosine loss of term :math:`j`, of weight :math:`w_j`. Forward
    hooks (:func:`capture_features`) on the named layers read both models'
    outputs during the call and are removed afterwards, also on an error.
    With a ``TensorDataset`` and ``cache_teacher=True`` the teacher runs once
    over the whole data set, as for the logits, and its named layers' outputs
    are stored beside the logits (memory: one row of each feature per
    example; ``cache_teacher=False`` runs the teacher on every batch instead,
    as it always does for other data sets). ``teacher_logits`` hold no hidden
    layers, so combining them with ``features`` is an error. A hint's regressor is created
    from the first batch's shapes (:func:`make_regressor`, seeded with
    ``seed``) unless the term has one, and its parameters join the optimizer
    as a new parameter group (``Optimizer.add_param_group``, with the
    optimizer's defaults: the same learning rate, momentum and weight decay as
    the student; a schedule that sets the rate of every group, such as
    :func:`cosine_sgd`'s, covers them). An ``optimizer=`` instance is grown the
    same way; a name (``"sgd"``, ``"adam"``) is built here exactly as
    :func:`companion.training.train` would build it. The history gets, besides
    the total ``"loss"``, one key per term: ``"loss_kd"`` and
    ``"loss_<name>"`` (``"loss_hint"``, ``"loss_cosine"``), each the mean of
    the unweighted term over the epoch's examples, so
    ``loss = loss_kd + sum(w_j * loss_j)`` (plus any ``penalty``).

    Args:
        student: The network being trained (in place).
        teacher: The trained network to imitate, on the student's device;
            ``None`` only with ``teacher_logits``.
        dataset: ``(inputs, targets)`` (``(inputs,)`` is enough with
            ``labels=False``) in any form :func:`companion.training.train`
            accepts; a ``TensorDataset`` on the models' device.
        epochs: Passes over the data.
        temperature: :math:`T > 0` of :func:`kd_loss`.
        alpha: Weight of the soft term, in ``[0, 1]`` (unused with
            ``labels=False``).
        cache_teacher: Compute the teacher's logits once (``TensorDataset`` only).
        teacher_logits: Precomputed teacher logits for a ``TensorDataset``'s
            inputs, ``[len(dataset), classes]``, on the inputs' device.
        labels: Use the hard term with the dataset's targets.
        teacher_output: ``teacher_output(teacher_output_value)`` picks the
            logits from a teacher that returns a tuple or a dict (the
            student's counterpart is ``output``, passed on to ``train``).
        features: :class:`FeatureLoss` terms (a list, a tuple, a
            :class:`torch.nn.ModuleList` or one term); ``None`` or empty for
            logit distillation alone, exactly as before.
        **train_kwargs: Passed to :func:`companion.training.train` (``lr``,
            ``batch_size``, ``momentum``, ``optimizer``, ``seed``,
            ``eval_set``, ``on_step``, ``output``, ``progress``, ...).

    Returns:
        The training history.

    Raises:
        ValueError: For invalid ``temperature`` or ``alpha``, if
            ``train_kwargs`` contains ``loss_fn``, ``dataset`` is empty or
            (with ``labels=True``) has no targets, ``teacher_logits`` does not
            match the inputs in length or device or is not finite, is given
            with a data set other than a ``TensorDataset``, or
            ``cache_teacher=False`` is combined with ``teacher_logits``, the
            teacher is on another device than the student (whatever
            :func:`companion.training.train` rejects too), or ``features``
            are combined with ``teacher_logits``, name a layer one of the
            models lacks (the message lists its layers) or repeat a name.
        TypeError: If ``teacher`` is not an ``nn.Module`` (or ``None`` with
            ``teacher_logits``), ``teacher_logits`` is not a tensor, ``labels``
            is not a bool, ``teacher_output`` is not callable, the teacher's
            output is not a tensor, or the targets are not integer class
            indices, or ``features`` does not hold :class:`FeatureLoss` terms.
        RuntimeError: If a named layer does not run in a model's forward pass.

    Example:
        >>> from companion.models import MLP
        >>> x = torch.randn(32, 4)
        >>> z = torch.randn(32, 3)  # a teacher's logits, computed earlier
        >>> h = distill(MLP((4, 3)), None, TensorDataset(x), teacher_logits=z, labels=False,
        ...             epochs=2, batch_size=8, progress=False)
        >>> len(h["loss"])
        2
        >>> from torch.utils.data import DataLoader
        >>> loader = DataLoader(TensorDataset(x, torch.randint(0, 3, (32,))), batch_size=8)
        >>> h = distill(MLP((4, 3)), MLP((4, 3)), loader, epochs=1, progress=False)
        >>> len(h["loss"])
        1
        >>> hint = FeatureLoss("fc1", "fc1", weight=0.1)  # first layer of each
        >>> h = distill(MLP((4, 8, 3)), MLP((4, 16, 3)), loader, epochs=1, features=[hint],
        ...             progress=False)
        >>> [key for key in h if key.startswith("loss")], hint.regressor
        (['loss', 'loss_kd', 'loss_hint'], Linear(in_features=8, out_features=16, bias=True))
    """
    _check_temperature(temperature)
    check_in_range("alpha", alpha, 0.0, 1.0)
    if not isinstance(labels, bool):
        raise TypeError(f"labels must be a bool, got {type(labels).__name__}")
    if teacher_logits is None:
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
    elif teacher is not None and not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be a torch.nn.Module or None, got {type(teacher).__name__}")
    _check_callable("teacher_output", teacher_output)
    if "loss_fn" in train_kwargs:
        raise ValueError(
            "distill sets loss_fn itself; call companion.training.train for a custom loss"
        )
    terms = () if features is None else _check_features(features)
    _check_source(dataset, need_targets=labels, integer=labels)
    if terms:
        if teacher_logits is not None:
            raise ValueError(
                "teacher_logits cannot be combined with features: precomputed logits hold no "
                "hidden layers; pass the teacher (distill caches its logits and features itself)"
            )
        return _distill_with_features(
            student,
            teacher,
            dataset,
            epochs,
            temperature,
            alpha,
            labels,
            teacher_output,
            terms,
            train_kwargs,
            cache_teacher,
        )
    if not isinstance(dataset, TensorDataset):
        if teacher_logits is not None:
            raise ValueError(
                "teacher_logits needs a TensorDataset (row i holds the logits of example i); "
                f"dataset is a {type(dataset).__name__}, so pass the teacher instead"
            )
        return _distill_batchwise(
            student,
            teacher,
            dataset,
            epochs,
            temperature,
            alpha,
            labels,
            teacher_output,
            train_kwargs,
        )
    inputs = dataset.tensors[0]
    if teacher_logits is not None:
        if not cache_teacher:
            raise ValueError(
                "teacher_logits are precomputed logits; they cannot be combined with "
                "cache_teacher=False (which calls the teacher on every batch)"
            )
        _check_logits("teacher_logits", teacher_logits)
        if len(teacher_logits) != len(inputs):
            raise ValueError(
                f"teacher_logits must have one row per example of dataset ({len(inputs)}), "
                f"got {len(teacher_logits)}"
            )
        if teacher_logits.device != inputs.device:
            raise ValueError(
                f"teacher_logits is on {teacher_logits.device} but dataset is on "
                f"{inputs.device}; put them on the same device"
            )
    if teacher is not None and teacher_logits is None:
        teacher_device = _model_device(teacher)
        if teacher_device is not None and teacher_device != inputs.device:
            raise ValueError(
                f"teacher is on {teacher_device} but dataset is on {inputs.device}; put both "
                "on the same device (teacher.to(device))"
            )
    was_training = teacher.training if teacher is not None else False
    if teacher is not None:
        teacher.eval()
    try:
        if cache_teacher:
            if teacher_logits is None:
                teacher_logits = _predict(teacher, inputs, 4096, teacher_output, "teacher")
            teacher_logits = teacher_logits.detach()
            if labels:
                data = TensorDataset(inputs, dataset.tensors[1], teacher_logits)
            else:  # the teacher's predictions stand in for targets in train's accuracy
                data = TensorDataset(inputs, teacher_logits.argmax(1), teacher_logits)

            def loss_fn(logits: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
                targets = batch[1] if labels else None
                return kd_loss(logits, batch[2], targets, temperature=temperature, alpha=alpha)

        else:
            assert teacher is not None
            if labels:
                data = TensorDataset(inputs, dataset.tensors[1])
            else:
                predicted = _predict(teacher, inputs, 4096, teacher_output, "teacher")
                data = TensorDataset(inputs, predicted.argmax(1))

            def loss_fn(logits: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
                with torch.no_grad():
                    teacher_logits = _model_output(
                        teacher, batch[0], teacher_output, label="teacher"
                    )
                targets = batch[1] if labels else None
                return kd_loss(
                    logits, teacher_logits, targets, temperature=temperature, alpha=alpha
                )

        return train(student, data, epochs=epochs, loss_fn=loss_fn, **train_kwargs)
    finally:
        if teacher is not None:
            teacher.train(was_training)


def _distill_batchwise(
    student: nn.Module,
    teacher: nn.Module,
    dataset: Dataset | DataLoader,
    epochs: int,
    temperature: float,
    alpha: float,
    labels: bool,
    teacher_output: Callable[[Any], torch.Tensor] | None,
    train_kwargs: dict[str, Any],
) -> History:
    """:func:`distill` on a data set that is not a ``TensorDataset``: the teacher on every batch.

    Each batch, once on the device, becomes ``(inputs, targets, teacher_logits)``, with the
    teacher's predictions as the targets when ``labels=False`` (they are what ``train``'s
    accuracy then compares with), so the loss is the one of the cached path.
    """
    if isinstance(student, nn.Module):  # train names a student of the wrong type itself
        student_device, teacher_device = _model_device(student), _model_device(teacher)
        if None not in (student_device, teacher_device) and student_device != teacher_device:
            raise ValueError(
                f"teacher is on {teacher_device} but student is on {student_device}; "
                "put both on the same device (teacher.to(device))"
            )

    def with_teacher(batch: tuple[Any, ...]) -> tuple[Any, ...]:
        with torch.no_grad():
            logits = _model_output(teacher, batch[0], teacher_output, label="teacher")
        return (batch[0], batch[1] if labels else logits.argmax(1), logits)

    def loss_fn(logits: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        targets = batch[1] if labels else None
        return kd_loss(logits, batch[2], targets, temperature=temperature, alpha=alpha)

    data = _MappedBatches(dataset, with_teacher, need_targets=labels, integer_targets=labels)
    was_training = teacher.training
    teacher.eval()
    try:
        return train(student, data, epochs=epochs, loss_fn=loss_fn, **train_kwargs)
    finally:
        teacher.train(was_training)


# --------------------------------------------------------------------------- feature distillation

#: The kinds of :class:`FeatureLoss`: a hint through a learned regressor, or a cosine loss.
FEATURE_KINDS = ("hint", "cosine")


def _check_feature_pair(student_feature: object, teacher_feature: object) -> None:
    for label, value in (
        ("student_feature", student_feature),
        ("teacher_feature", teacher_feature),
    ):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{label} must be a torch.Tensor, got {type(value).__name__}")
        if value.dim() < 2:
            raise ValueError(
                f"{label} must have shape [batch, ...] with at least one feature dimension, "
                f"got {tuple(value.shape)}"
            )
    if student_feature.shape[0] != teacher_feature.shape[0]:
        raise ValueError(
            f"student_feature and teacher_feature must have the same batch size, got "
            f"{student_feature.shape[0]} and {teacher_feature.shape[0]}"
        )


def _init_like_torch(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default initialisation of a Linear or Conv layer, drawn from ``generator``."""
    weight = module.weight
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    if module.bias is not None:
        fan_in = weight[0].numel()
        bound = 1 / math.sqrt(fan_in)
        nn.init.uniform_(module.bias, -bound, bound, generator=generator)


def make_regressor(
    student_feature: torch.Tensor, teacher_feature: torch.Tensor, *, seed: int = 0
) -> nn.Module:
    """The FitNets regressor that maps a student feature onto the teacher feature's shape.

    A :class:`torch.nn.Linear` on the last dimension for ``[batch, d]`` (and
    ``[batch, tokens, d]``) features, a 1x1 :class:`torch.nn.Conv2d` for
    ``[batch, channels, height, width]`` feature maps of the same spatial size
    (Romero et al. 2015 use a convolutional regressor to keep its parameter
    count small). Its initialisation is PyTorch's default, drawn from a
    generator seeded with ``seed``, so creating it leaves the global random
    state (dropout, data order) alone. It is created on the CPU and moved to
    the student feature's device and dtype.

    Args:
        student_feature: A batch of the student layer's outputs.
        teacher_feature: A batch of the teacher layer's outputs, same batch size.
        seed: Logical seed of the initialisation (see
            :func:`companion.utils.make_generator`).

    Returns:
        The regressor, a new module in train mode.

    Raises:
        TypeError: If a feature is not a tensor.
        ValueError: If the batch sizes differ, or the shapes allow no such
            regressor (other ranks, or feature maps of different spatial sizes:
            then build your own and pass it as ``FeatureLoss(regressor=...)``).

    Example:
        >>> make_regressor(torch.zeros(4, 30), torch.zeros(4, 100))
        Linear(in_features=30, out_features=100, bias=True)
        >>> make_regressor(torch.zeros(2, 8, 7, 7), torch.zeros(2, 16, 7, 7))
        Conv2d(8, 16, kernel_size=(1, 1), stride=(1, 1))
    """
    from .utils import make_generator

    _check_feature_pair(student_feature, teacher_feature)
    s, t = tuple(student_feature.shape), tuple(teacher_feature.shape)
    if len(s) in (2, 3) and len(s) == len(t) and s[:-1] == t[:-1]:
        regressor: nn.Module = torch.nn.utils.skip_init(nn.Linear, s[-1], t[-1])
    elif len(s) == 4 and len(t) == 4 and s[2:] == t[2:]:
        regressor = torch.nn.utils.skip_init(nn.Conv2d, s[1], t[1], kernel_size=1)
    else:
        raise ValueError(
            f"no regressor maps a student feature of shape {s} onto a teacher feature of shape "
            f"{t}: a Linear needs [batch, d] or [batch, tokens, d] features with equal leading "
            "sizes, a 1x1 Conv2d needs [batch, channels, height, width] maps of the same "
            "height and width; pass your own module as FeatureLoss(regressor=...)"
        )
    with torch.no_grad():
        _init_like_torch(regressor, make_generator(seed))
    return regressor.to(device=student_feature.device, dtype=student_feature.dtype)


def hint_loss(
    student_feature: torch.Tensor, teacher_feature: torch.Tensor, regressor: nn.Module
) -> torch.Tensor:
    r"""The FitNets hint loss: the mean squared error between the regressed student and the teacher.

    .. math::

        L_\mathrm{hint} = \frac{1}{N} \sum_{i=1}^{N} \big(r(s)_i - t_i\big)^2

    over the :math:`N` elements of the teacher feature :math:`t` (batch times
    features), where :math:`r` is the learned ``regressor`` applied to the
    student feature :math:`s`. Romero et al. (2015, eq. 3) write
    :math:`\tfrac12 \lVert t - r(s) \rVert^2`; the mean differs from it by a
    constant factor, which the term's weight absorbs, and does not grow with
    the batch or the layer's size. The teacher feature is a constant.

    Args:
        student_feature: ``[batch, ...]``, with gradient.
        teacher_feature: ``[batch, ...]``; detached.
        regressor: Maps ``student_feature`` to ``teacher_feature``'s shape
            (see :func:`make_regressor`).

    Returns:
        A scalar tensor.

    Raises:
        TypeError: If a feature is not a tensor or ``regressor`` is not callable.
        ValueError: If the batch sizes differ or the regressor's output does
            not have the teacher feature's shape.

    Example:
        >>> identity = torch.nn.Identity()
        >>> hint_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 4.0]]), identity).item()
        2.0
    """
    _check_feature_pair(student_feature, teacher_feature)
    if not callable(regressor):
        raise TypeError(f"regressor must be a torch.nn.Module, got {type(regressor).__name__}")
    regressed = regressor(student_feature)
    if not isinstance(regressed, torch.Tensor) or regressed.shape != teacher_feature.shape:
        shape = tuple(regressed.shape) if isinstance(regressed, torch.Tensor) else regressed
        raise ValueError(
            f"the regressor must map the student feature {tuple(student_feature.shape)} to the "
            f"teacher feature's shape {tuple(teacher_feature.shape)}, got {shape}"
        )
    return F.mse_loss(regressed, teacher_feature.detach())


def cosine_feature_loss(
    student_feature: torch.Tensor, teacher_feature: torch.Tensor
) -> torch.Tensor:
    r"""One minus the cosine similarity of the flattened features, averaged over the batch.

    .. math::

        L_\mathrm{cos} = \frac{1}{B} \sum_{b=1}^{B}
            \Big(1 - \frac{\langle s_b, t_b \rangle}{\lVert s_b \rVert\,\lVert t_b \rVert}\Big)

    This is ``nn.CosineEmbeddingLoss`` with target 1, the hidden-state loss
    of PyTorch's knowledge-distillation tutorial. It ignores the features'
    scale, so it needs no regressor when the two layers have the same number
    of features per example (after flattening). The teacher feature is a
    constant.

    Args:
        student_feature: ``[batch, ...]``, with gradient.
        teacher_feature: ``[batch, ...]`` with as many elements per example; detached.

    Returns:
        A scalar tensor in ``[0, 2]``.

    Raises:
        TypeError: If a feature is not a tensor.
        ValueError: If the batch sizes or the numbers of features per example differ.

    Example:
        >>> s = torch.tensor([[1.0, 0.0], [2.0, 2.0]])
        >>> cosine_feature_loss(s, torch.tensor([[0.0, 3.0], [1.0, 1.0]])).item()
        0.5
    """
    _check_feature_pair(student_feature, teacher_feature)
    s, t = student_feature.flatten(1), teacher_feature.detach().flatten(1)
    if s.shape[1] != t.shape[1]:
        raise ValueError(
            f"the cosine loss compares features of the same size, got {s.shape[1]} student and "
            f"{t.shape[1]} teacher features per example; use kind='hint' (a learned regressor) "
            "or pass FeatureLoss(regressor=...)"
        )
    return (1 - F.cosine_similarity(s, t, dim=1)).mean()


class FeatureLoss(nn.Module):
    """One feature-distillation term of :func:`distill`: a student layer imitates a teacher layer.

    ``kind="hint"`` is the hint of FitNets (Romero et al. 2015): the student
    layer's output passes through a learned ``regressor`` and is compared with
    the teacher layer's output by :func:`hint_loss` (mean squared error).
    ``kind="cosine"`` is :func:`cosine_feature_loss`, the hidden-state loss of
    PyTorch's distillation tutorial; it uses a regressor only when one is given.

    Layers are named as in ``model.named_modules()`` (``"fc1"``,
    ``"features.3"``); :func:`distill` reads their outputs with forward hooks
    (:func:`capture_features`). A layer called more than once per forward
    pass contributes its last output.

    The regressor of a hint is created by :meth:`build` from the shapes of
    the first batch (see :func:`make_regressor`) unless one is given, and is
    kept: after :func:`distill` it is trained, and a second call continues
    from it. It belongs to this object, not to the student; save it with
    ``feature_loss.state_dict()`` if you need it.

    Args:
        student_layer: Name of the student's layer.
        teacher_layer: Name of the teacher's layer.
        kind: ``"hint"`` or ``"cosine"``.
        weight: Weight of the term in the total loss, >= 0.
        regressor: A module mapping the student feature to the teacher
            feature's shape, or ``None`` (hint: created on the first batch;
            cosine: none).
        name: The term's name in the history (``"loss_" + name``); default ``kind``.

    Raises:
        TypeError: If a layer name or ``name`` is not a string, or
            ``regressor`` is not an ``nn.Module``.
        ValueError: For an empty layer name or ``name``, an unknown ``kind``, or
            a negative or infinite ``weight``.

    Example:
        >>> hint = FeatureLoss("fc1", "fc2", weight=0.5)
        >>> hint.kind, hint.weight, hint.regressor is None
        ('hint', 0.5, True)
        >>> hint.build(torch.zeros(2, 30), torch.zeros(2, 100))
        Linear(in_features=30, out_features=100, bias=True)
    """

    def __init__(
        self,
        student_layer: str,
        teacher_layer: str,
        *,
        kind: str = "hint",
        weight: float = 1.0,
        regressor: nn.Module | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        for label, value in (
            ("student_layer", student_layer),
            ("teacher_layer", teacher_layer),
            ("name", kind if name is None else name),
        ):
            if not isinstance(value, str):
                raise TypeError(f"{label} must be a str, got {type(value).__name__}")
            if not value:
                raise ValueError(
                    f"{label} must be a non-empty string"
                    + (" naming a layer (see model.named_modules())" if label != "name" else "")
                )
        if kind not in FEATURE_KINDS:
            raise ValueError(f"kind must be one of {FEATURE_KINDS}, got {kind!r}")
        self.weight = check_in_range("weight", weight, 0.0, float("inf"), high_inclusive=False)
        if regressor is not None and not isinstance(regressor, nn.Module):
            raise TypeError(
                f"regressor must be a torch.nn.Module or None, got {type(regressor).__name__}"
            )
        self.student_layer, self.teacher_layer, self.kind = student_layer, teacher_layer, kind
        self.name = kind if name is None else name
        self.register_module("regressor", regressor)

    def build(
        self, student_feature: torch.Tensor, teacher_feature: torch.Tensor, *, seed: int = 0
    ) -> nn.Module | None:
        """Create the hint's regressor from a first batch of features, if there is none yet.

        Args:
            student_feature: A batch of the student layer's outputs.
            teacher_feature: A batch of the teacher layer's outputs.
            seed: Logical seed of the regressor's initialisation.

        Returns:
            The regressor (``None`` for a cosine term without one). Its
            parameters must be optimised with the student's;
            :func:`distill` adds them to its optimizer.

        Raises:
            TypeError, ValueError: As :func:`make_regressor`.
        """
        if self.regressor is None and self.kind == "hint":
            self.regressor = make_regressor(student_feature, teacher_feature, seed=seed)
        return self.regressor

    def forward(self, student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
        if self.kind == "hint":
            if self.regressor is None:
                raise RuntimeError(
                    "this hint has no regressor yet; call build(student_feature, "
                    "teacher_feature) first and optimise its parameters with the student's "
                    "(distill does both)"
                )
            return hint_loss(student_feature, teacher_feature, self.regressor)
        if self.regressor is not None:
            student_feature = self.regressor(student_feature)
        return cosine_feature_loss(student_feature, teacher_feature)

    def extra_repr(self) -> str:
        text = (
            f"kind={self.kind!r}, student_layer={self.student_layer!r}, "
            f"teacher_layer={self.teacher_layer!r}, weight={self.weight}"
        )
        return text if self.name == self.kind else f"{text}, name={self.name!r}"


def _named_layers(
    model: nn.Module, names: Sequence[str], argument: str, label: str
) -> dict[str, nn.Module]:
    """``{name: module}`` for ``names``; a ValueError naming ``argument`` for one ``model`` lacks."""
    modules = dict(model.named_modules())
    found = {}
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{argument} must hold layer names (str), got {type(name).__name__}")
        if not name or name not in modules:
            available = [key for key in modules if key]
            shown = ", ".join(repr(key) for key in available[:20])
            more = f", ... ({len(available)} in all)" if len(available) > 20 else ""
            raise ValueError(
                f"{argument} {name!r} is not a layer of the {label} ({type(model).__name__}); "
                f"its layers (model.named_modules()) are: {shown or 'none'}{more}"
            )
        found[name] = modules[name]
    return found


@contextlib.contextmanager
def capture_features(
    model: nn.Module,
    layers: Sequence[str],
    *,
    detach: bool = False,
    label: str = "model",
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of ``model``'s named layers while the ``with`` block runs.

    One forward hook per named layer stores its latest output in the yielded
    dict (only those layers); every hook is removed when the block ends, also
    when it raises, so the model is left as it was.

    Args:
        model: The network.
        layers: Names from ``model.named_modules()``.
        detach: Store detached outputs (for a frozen teacher); by default they
            keep their graph, so a loss on them trains the layers below.
        label: What to call the model in error messages (``"student"``, ``"teacher"``).

    Yields:
        ``{layer name: latest output}``, filled as the model runs.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``, a name is not a
            string, or a named layer's output is not a tensor.
        ValueError: If a name is not a layer of ``model`` (the message lists the layers).

    Example:
        >>> from companion.models import MLP
        >>> model = MLP((4, 8, 3))
        >>> with capture_features(model, ["fc1"]) as seen:
        ...     _ = model(torch.zeros(2, 4))
        >>> {name: tuple(out.shape) for name, out in seen.items()}
        {'fc1': (2, 8)}
        >>> [m for m in model.modules() if m._forward_hooks]  # hooks removed
        []
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(layers, str):
        layers = [layers]
    modules = _named_layers(model, list(dict.fromkeys(layers)), "layer", label)
    captured: dict[str, torch.Tensor] = {}

    def recorder(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(
                    f"layer {name!r} of the {label} returned a {type(output).__name__}, not a "
                    "tensor; name a layer that returns one (e.g. a submodule of it)"
                )
            captured[name] = output.detach() if detach else output

        return hook

    handles = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(recorder(name)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _check_features(features: object) -> tuple[FeatureLoss, ...]:
    if isinstance(features, FeatureLoss):
        features = (features,)
    if isinstance(features, nn.ModuleList):
        features = tuple(features)
    if not isinstance(features, (list, tuple)):
        raise TypeError(
            f"features must be a list of FeatureLoss terms or None, got {type(features).__name__}"
        )
    for term in features:
        if not isinstance(term, FeatureLoss):
            raise TypeError(
                "features must hold companion.distillation.FeatureLoss terms, got a "
                f"{type(term).__name__}"
            )
    names = [term.name for term in features]
    if "kd" in names:
        raise ValueError("a FeatureLoss cannot be named 'kd': loss_kd is the distillation term")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"features have the same name {duplicates[0]!r} twice; give each term its own "
            "FeatureLoss(name=...) (it becomes the history key 'loss_<name>')"
        )
    if len({id(term) for term in features}) != len(features):
        raise ValueError("features holds the same FeatureLoss object twice")
    return tuple(features)


def _train_default(argument: str) -> Any:
    """The default of ``train``'s ``argument``: what ``train`` would build the optimizer with."""
    return inspect.signature(train).parameters[argument].default


def _add_parameters(optimizer: torch.optim.Optimizer, module: nn.Module | None) -> None:
    """Add ``module``'s parameters that ``optimizer`` does not hold yet as a new param group."""
    if module is None:
        return
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    new = [p for p in module.parameters() if p.requires_grad and id(p) not in held]
    if new:
        optimizer.add_param_group({"params": new})


def _cache_teacher_features(
    teacher: nn.Module,
    dataset: TensorDataset,
    layers: list[str],
    labels: bool,
    teacher_output: Callable[[Any], torch.Tensor] | None,
    chunk: int = 4096,
) -> TensorDataset:
    """``(inputs, targets, teacher logits, feature of layers[0], ...)``: the teacher run once.

    The teacher is in eval mode under ``no_grad`` (deterministic), so its outputs for an
    example are the same every epoch and can be computed once, in chunks of ``chunk``.
    """
    inputs = dataset.tensors[0]
    teacher_device = _model_device(teacher)
    if teacher_device is not None and teacher_device != inputs.device:
        raise ValueError(
            f"teacher is on {teacher_device} but dataset is on {inputs.device}; put both "
            "on the same device (teacher.to(device))"
        )
    logits, features = [], {name: [] for name in layers}
    with (
        torch.no_grad(),
        capture_features(teacher, layers, detach=True, label="teacher") as seen,
    ):
        for start in range(0, len(inputs), chunk):
            seen.clear()
            part = inputs[start : start + chunk]
            logits.append(_model_output(teacher, part, teacher_output, label="teacher"))
            for name in layers:
                if name not in seen:
                    raise RuntimeError(
                        f"layer {name!r} of the teacher did not run in its forward pass; "
                        "name a layer on the path from the input to the output"
                    )
                if seen[name].dim() == 0 or len(seen[name]) != len(part):
                    raise ValueError(
                        f"layer {name!r} of the teacher returned shape {tuple(seen[name].shape)} "
                        f"for {len(part)} examples: its first dimension is not the batch, so it "
                        "cannot be cached per example; pass cache_teacher=False"
                    )
                features[name].append(seen[name])
    teacher_logits = torch.cat(logits)
    targets = dataset.tensors[1] if labels else teacher_logits.argmax(1)
    return TensorDataset(
        inputs, targets, teacher_logits, *(torch.cat(features[name]) for name in layers)
    )


def _distill_with_features(
    student: nn.Module,
    teacher: nn.Module,
    dataset: Dataset | DataLoader,
    epochs: int,
    temperature: float,
    alpha: float,
    labels: bool,
    teacher_output: Callable[[Any], torch.Tensor] | None,
    terms: tuple[FeatureLoss, ...],
    train_kwargs: dict[str, Any],
    cache_teacher: bool = True,
) -> History:
    """:func:`distill` with feature terms: hooks read the student's layers on every batch, and the
    teacher's once (a ``TensorDataset`` with ``cache_teacher``) or on every batch (otherwise)."""
    if not isinstance(student, nn.Module):
        raise TypeError(f"student must be a torch.nn.Module, got {type(student).__name__}")
    student_device, teacher_device = _model_device(student), _model_device(teacher)
    if None not in (student_device, teacher_device) and student_device != teacher_device:
        raise ValueError(
            f"teacher is on {teacher_device} but student is on {student_device}; "
            "put both on the same device (teacher.to(device))"
        )
    student_layers = [term.student_layer for term in terms]
    teacher_layers = [term.teacher_layer for term in terms]
    _named_layers(student, student_layers, "student_layer", "student")
    _named_layers(teacher, teacher_layers, "teacher_layer", "teacher")
    seed = train_kwargs.get("seed", _train_default("seed"))
    optimizer = train_kwargs.get("optimizer", _train_default("optimizer"))
    if isinstance(optimizer, str):  # the optimizer train would build, built here to grow it
        optimizer = make_optimizer(
            student,
            optimizer,
            lr=train_kwargs.get("lr", _train_default("lr")),
            momentum=train_kwargs.get("momentum", _train_default("momentum")),
            weight_decay=train_kwargs.get("weight_decay", _train_default("weight_decay")),
        )
    elif not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be 'sgd', 'adam' or a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    for term in terms:  # regressors given, or trained by an earlier call
        _add_parameters(optimizer, term.regressor)
    user_epoch_end = train_kwargs.pop("on_epoch_end", None)
    _check_callable("on_epoch_end", user_epoch_end)
    keys = ["loss_kd"] + [f"loss_{term.name}" for term in terms]
    sums = dict.fromkeys(keys, 0.0)
    seen = [0]
    means: History = {key: [] for key in keys}

    cached = cache_teacher and isinstance(dataset, TensorDataset)
    unique_teacher_layers = list(dict.fromkeys(teacher_layers))
    # In the cached data set, the feature of teacher layer name sits at column cached_at[name].
    cached_at = {name: 3 + i for i, name in enumerate(unique_teacher_layers)}
    was_training = teacher.training
    with contextlib.ExitStack() as stack:
        stack.callback(teacher.train, was_training)
        teacher.eval()
        if cached:
            assert isinstance(dataset, TensorDataset)
            cached_data = _cache_teacher_features(
                teacher, dataset, unique_teacher_layers, labels, teacher_output
            )
        student_seen = stack.enter_context(
            capture_features(student, student_layers, label="student")
        )
        teacher_seen: dict[str, torch.Tensor] = (
            {}
            if cached
            else stack.enter_context(
                capture_features(teacher, teacher_layers, detach=True, label="teacher")
            )
        )

        def with_teacher(batch: tuple[Any, ...]) -> tuple[Any, ...]:
            student_seen.clear()  # what the student's forward of this batch records, only
            teacher_seen.clear()
            with torch.no_grad():
                logits = _model_output(teacher, batch[0], teacher_output, label="teacher")
            return (batch[0], batch[1] if labels else logits.argmax(1), logits)

        def loss_fn(logits: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
            targets = batch[1] if labels else None
            kd = kd_loss(logits, batch[2], targets, temperature=temperature, alpha=alpha)
            size = len(batch[1])
            total = kd
            sums["loss_kd"] += kd.detach() * size
            for term, key in zip(terms, keys[1:], strict=True):
                for layer, seen_now, model in (
                    (term.student_layer, student_seen, "student"),
                    (term.teacher_layer, {} if cached else teacher_seen, "teacher"),
                ):
                    if layer not in seen_now and not (cached and model == "teacher"):
                        raise RuntimeError(
                            f"layer {layer!r} of the {model} did not run in its forward pass; "
                            "name a layer on the path from the input to the output"
                        )
                s = student_seen[term.student_layer]
                t = (
                    batch[cached_at[term.teacher_layer]]
                    if cached
                    else teacher_seen[term.teacher_layer]
                )
                if term.kind == "hint" and term.regressor is None:
                    _add_parameters(optimizer, term.build(s, t, seed=seed))
                value = term(s, t)
                sums[key] += value.detach() * size
                total = total + term.weight * value
            seen[0] += size
            return total

        def on_epoch_end(epoch: int) -> None:
            for key in keys:
                means[key].append(float(sums[key]) / seen[0])
                sums[key] = 0.0
            seen[0] = 0
            if user_epoch_end is not None:
                user_epoch_end(epoch)

        if cached:

            def clear_student(module: nn.Module, inputs: Any) -> None:
                student_seen.clear()  # what the student's forward of this batch records, only

            stack.enter_context(student.register_forward_pre_hook(clear_student))
            data: Any = cached_data
        else:
            data = _MappedBatches(
                dataset, with_teacher, need_targets=labels, integer_targets=labels
            )
        train_kwargs = {**train_kwargs, "optimizer": optimizer, "on_epoch_end": on_epoch_end}
        history = train(student, data, epochs=epochs, loss_fn=loss_fn, **train_kwargs)
    history.update(means)
    return history


# --------------------------------------------------------------------------- experiment protocols


def cosine_sgd(
    model: nn.Module, *, lr: float, total_steps: int, momentum: float = 0.9
) -> tuple[torch.optim.Optimizer, Callable[[int], None]]:
    r"""SGD with momentum whose learning rate decays to zero on a half cosine.

    After step :math:`k` of :math:`K` the rate is
    :math:`\eta_k = \eta\,\tfrac12\,(1 + \cos(\pi k / K))`: training ends at a
    learning rate of zero, so the last epochs settle into a minimum instead of
    bouncing around it ("trained to convergence" within the budget).

    Args:
        model: The network whose parameters are optimised.
        lr: Initial learning rate :math:`\eta > 0`.
        total_steps: :math:`K`, the optimizer steps of the whole run, >= 1.
        momentum: SGD momentum in ``[0, 1)``.

    Returns:
        ``(optimizer, on_step)``: pass both to :func:`companion.training.train`
        (``optimizer=``, ``on_step=``).

    Raises:
        ValueError, TypeError: For out-of-range ``lr``, ``momentum`` or ``total_steps``.

    Example:
        >>> opt, on_step = cosine_sgd(torch.nn.Linear(2, 2), lr=0.1, total_steps=4)
        >>> for k in range(1, 5):
        ...     on_step(k)
        >>> opt.param_groups[0]["lr"]
        0.0
    """
    total_steps = check_positive_int("total_steps", total_steps)
    optimizer = make_optimizer(model, "sgd", lr=lr, momentum=momentum)

    def on_step(step: int) -> None:
        fraction = min(step, total_steps) / total_steps
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * fraction))

    return optimizer, on_step


@dataclass(frozen=True)
class Recipe:
    """How one student is trained: SGD with momentum and a cosine decay to zero.

    Attributes:
        lr: Initial learning rate.
        epochs: Passes over the labelled transfer set.
        label_smoothing: Label smoothing of the plain cross-entropy (students
            trained alone only), in ``[0, 1)``.
        temperature: :math:`T` of :func:`kd_loss` (distilled students only).
        alpha: :math:`\\alpha` of :func:`kd_loss` (distilled students only).
        batch_size: Examples per step.
        momentum: SGD momentum.
    """

    lr: float = 0.2
    epochs: int = 22
    label_smoothing: float = 0.0
    temperature: float = 4.0
    alpha: float = 0.9
    batch_size: int = 256
    momentum: float = 0.9

    def __post_init__(self) -> None:
        check_in_range("lr", self.lr, 0.0, float("inf"), low_inclusive=False, high_inclusive=False)
        check_positive_int("epochs", self.epochs)
        check_in_range("label_smoothing", self.label_smoothing, 0.0, 1.0, high_inclusive=False)
        _check_temperature(self.temperature)
        check_in_range("alpha", self.alpha, 0.0, 1.0)
        check_positive_int("batch_size", self.batch_size)
        check_in_range("momentum", self.momentum, 0.0, 1.0, high_inclusive=False)

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some fields changed (validated again).

        Example:
            >>> Recipe(lr=0.1).replace(epochs=44).epochs
            44
        """
        return dataclasses.replace(self, **changes)


def fit(
    student: nn.Module,
    dataset: TensorDataset,
    recipe: Recipe,
    *,
    seed: int,
    teacher_logits: torch.Tensor | None = None,
    labels: bool = True,
    epochs: int | None = None,
    teacher: nn.Module | None = None,
    features: Sequence[FeatureLoss] | None = None,
) -> History:
    """Train ``student`` (or a teacher) alone or distilled, with :func:`cosine_sgd`.

    Without ``teacher_logits`` the loss is the cross-entropy with
    ``recipe.label_smoothing``; with them it is :func:`kd_loss` with
    ``recipe.temperature`` and ``recipe.alpha`` (only its soft term when
    ``labels=False``). With ``features`` (and the ``teacher`` instead of its
    logits) the feature terms are added as in :func:`distill`; with
    ``recipe.alpha = 0`` the loss is then the plain cross-entropy plus the
    feature terms, the form of PyTorch's distillation tutorial. Everything
    else (optimizer, schedule, batch size, data order from ``seed``) is the
    same, so two arms that start from the same weights differ only in their
    loss (and a hint's regressor, whose parameters join the schedule).

    Args:
        student: The network, trained in place.
        dataset: ``(inputs, targets)``, or ``(inputs,)`` with ``labels=False``.
        recipe: The hyper-parameters.
        seed: Logical seed of the data order (see :func:`companion.training.train`).
        teacher_logits: A teacher's logits for ``dataset``'s inputs, or ``None``.
        labels: Whether the distilled student also sees the labels.
        epochs: Overrides ``recipe.epochs`` (e.g. the same number of steps on a
            larger transfer set).
        teacher: The teacher itself, needed with ``features`` (its logits and
            named layers are computed once, see :func:`distill`).
        features: :class:`FeatureLoss` terms, or ``None``.

    Returns:
        The training history.

    Raises:
        TypeError: If ``recipe`` is not a :class:`Recipe`.
        ValueError: If ``labels=False`` without a teacher (a student alone
            needs labels), ``features`` without ``teacher``, ``teacher``
            without ``features`` (pass its logits) or with ``teacher_logits``,
            and whatever :func:`distill` and :func:`companion.training.train` reject.

    Example:
        >>> from companion.models import MLP
        >>> ds = TensorDataset(torch.randn(64, 4), torch.randint(0, 3, (64,)))
        >>> h = fit(MLP((4, 3)), ds, Recipe(lr=0.1, epochs=2, batch_size=16), seed=0)
        >>> h["epoch"]
        [1, 2]
    """
    if not isinstance(recipe, Recipe):
        raise TypeError(
            f"recipe must be a companion.distillation.Recipe, got {type(recipe).__name__}"
        )
    if features is not None and teacher is None:
        raise ValueError("features need the teacher itself: pass teacher=")
    if teacher is not None and (features is None or teacher_logits is not None):
        raise ValueError(
            "teacher is for feature distillation: pass features=, and not teacher_logits "
            "(for logit distillation alone, pass teacher_logits and no teacher)"
        )
    if not labels and teacher_logits is None and teacher is None:
        raise ValueError("labels=False needs teacher_logits: a student trained alone needs labels")
    epochs = recipe.epochs if epochs is None else check_positive_int("epochs", epochs)
    steps = epochs * math.ceil(len(dataset) / recipe.batch_size)
    optimizer, on_step = cosine_sgd(
        student, lr=recipe.lr, total_steps=steps, momentum=recipe.momentum
    )
    common = dict(
        epochs=epochs,
        batch_size=recipe.batch_size,
        optimizer=optimizer,
        on_step=on_step,
        seed=seed,
        progress=False,
    )
    if teacher is None and teacher_logits is None:
        smoothing = recipe.label_smoothing

        def smoothed(logits: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
            return F.cross_entropy(logits, batch[1], label_smoothing=smoothing)

        return train(student, dataset, loss_fn=smoothed if smoothing else None, **common)
    return distill(  # from precomputed logits, or from the teacher itself with feature terms
        student,
        teacher,
        dataset,
        teacher_logits=teacher_logits,
        features=features,
        labels=labels,
        temperature=recipe.temperature,
        alpha=recipe.alpha,
        **common,
    )


def train_teachers(
    labelled: TensorDataset,
    seeds: list[int],
    *,
    sizes: tuple[int, ...] = (784, 300, 100, 10),
    dropout: float = 0.2,
    recipe: Recipe | None = None,
) -> list[nn.Module]:
    """One teacher per seed, each from its own initialisation and data order.

    Args:
        labelled: The teachers' labelled training data.
        seeds: Logical seeds; teacher ``i`` starts from ``seed_everything(seeds[i])``.
        sizes: Layer sizes of the :class:`companion.models.MLP` teachers.
        dropout: Dropout before every hidden layer's output, in ``[0, 1)``.
        recipe: The training recipe (default: ``lr=0.1``, 15 epochs, batch 128).

    Returns:
        The trained teachers, in eval mode, in the order of ``seeds``.

    Raises:
        ValueError, TypeError: For an empty ``seeds`` list, invalid sizes or
            dropout, and whatever :func:`fit` rejects.

    Example:
        >>> ds = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
        >>> fast = Recipe(lr=0.1, epochs=1, batch_size=16)
        >>> [type(t).__name__ for t in train_teachers(ds, [0, 1], sizes=(4, 8, 2), recipe=fast)]
        ['MLP', 'MLP']
    """
    from .models import MLP
    from .utils import seed_everything

    if not seeds:
        raise ValueError("seeds must hold at least one seed, got none")
    recipe = recipe or Recipe(lr=0.1, epochs=15, batch_size=128)
    teachers = []
    device = labelled.tensors[0].device
    for seed in seeds:
        seed_everything(seed)
        teacher = MLP(sizes, dropout=dropout).to(device)
        fit(teacher, labelled, recipe, seed=seed)
        teachers.append(teacher.eval())
    return teachers


#: The arms of :func:`scarce_label_arms`, in order, with what each student saw.
SCARCE_ARMS = {
    "alone": "labels of the labelled part only",
    "big teacher": "labelled part, soft targets of a teacher trained on all labels",
    "small teacher": "labelled part, soft targets of a teacher trained on the same labels",
    "small teacher, unlabelled": "all images without labels, soft targets of that teacher",
    "alone, all labels": "all images with labels",
    "big teacher, all labels": "all images with labels, soft targets of the big teacher",
}


def _accuracy(model: nn.Module, dataset: TensorDataset) -> float:
    from .training import evaluate

    return evaluate(model, dataset)["accuracy"]


def scarce_label_arms(
    train_part: TensorDataset,
    test_set: TensorDataset,
    *,
    seeds: list[int],
    big_teacher_logits: torch.Tensor,
    small_teachers: list[nn.Module],
    alone: Recipe,
    distilled: Recipe,
    unlabelled: Recipe | None = None,
    labelled: int = 10_000,
    student_sizes: tuple[int, ...] = (784, 30, 10),
) -> dict[str, list[float]]:
    """Students trained alone and distilled, when only ``labelled`` images have labels.

    For every seed ``s`` (paired design): one student initialisation from
    ``seed_everything(s)`` shared by all arms, the data order of ``s``, and
    ``small_teachers[i]`` (trained with seed ``s`` on the same labelled part).
    The arms are those of ``SCARCE_ARMS``: the student alone; distilled on
    the labelled part from the big teacher (which saw every label) or from the
    small teacher; distilled from the small teacher on every image *without*
    labels (``labels=False``); and, for reference, alone and distilled from the
    big teacher with every label. Arms on all images run
    ``round(epochs * labelled / len(train_part))`` epochs: the same number of
    optimizer steps as on the labelled part; the unlabelled arm uses
    ``unlabelled`` instead when given (its ``epochs`` then count passes over
    all images).

    Args:
        train_part: The training part; its first ``labelled`` images are the
            labelled part.
        test_set: Where every student is evaluated.
        seeds: Logical seeds, one per repetition.
        big_teacher_logits: The big teacher's logits for ``train_part``'s inputs.
        small_teachers: One teacher per seed, trained on the labelled part.
        alone: Recipe of the students trained alone (chosen on validation).
        distilled: Recipe of the distilled students (chosen on validation).
        unlabelled: Recipe of the unlabelled arm (its own loss, so its own
            tuning); ``None`` uses ``distilled`` with the same number of steps.
        labelled: How many images carry labels, in ``[1, len(train_part))``.
        student_sizes: Layer sizes of the :class:`companion.models.MLP` student.

    Returns:
        ``{arm: [test accuracy per seed]}`` for the arms of ``SCARCE_ARMS``.

    Raises:
        ValueError: If ``seeds`` is empty, ``small_teachers`` does not hold
            one teacher per seed, ``labelled`` is out of range, or the
            logits do not match ``train_part``.
        TypeError: If a recipe is not a :class:`Recipe`.
    """
    from .models import MLP
    from .utils import clone_model, seed_everything

    n = _check_labelled(train_part, "train_part")
    if not seeds:
        raise ValueError("seeds must hold at least one seed, got none")
    if len(small_teachers) != len(seeds):
        raise ValueError(
            f"small_teachers must hold one teacher per seed ({len(seeds)}), got {len(small_teachers)}"
        )
    labelled = check_positive_int("labelled", labelled)
    if labelled >= n:
        raise ValueError(f"labelled must be in [1, {n - 1}] (len(train_part) - 1), got {labelled}")
    unlabelled_epochs = None
    if unlabelled is None:
        unlabelled = distilled
    elif isinstance(unlabelled, Recipe):
        unlabelled_epochs = unlabelled.epochs
    for name, recipe in (("alone", alone), ("distilled", distilled), ("unlabelled", unlabelled)):
        if not isinstance(recipe, Recipe):
            raise TypeError(
                f"{name} must be a companion.distillation.Recipe, got {type(recipe).__name__}"
            )
    _check_logits("big_teacher_logits", big_teacher_logits)
    if len(big_teacher_logits) != n:
        raise ValueError(
            f"big_teacher_logits must have one row per image of train_part ({n}), "
            f"got {len(big_teacher_logits)}"
        )
    inputs, targets = train_part.tensors[0], train_part.tensors[1]
    part = TensorDataset(inputs[:labelled], targets[:labelled])
    images_only = TensorDataset(inputs)
    full_alone = max(1, round(alone.epochs * labelled / n))
    full_distilled = max(1, round(distilled.epochs * labelled / n))
    if unlabelled_epochs is None:
        unlabelled_epochs = max(1, round(unlabelled.epochs * labelled / n))
    results: dict[str, list[float]] = {arm: [] for arm in SCARCE_ARMS}
    for seed, teacher in zip(seeds, small_teachers, strict=True):
        small_logits = predict(teacher, inputs)
        seed_everything(seed)
        initial = MLP(student_sizes).to(inputs.device)
        runs = {
            "alone": (part, alone, None, True, None),
            "big teacher": (part, distilled, big_teacher_logits[:labelled], True, None),
            "small teacher": (part, distilled, small_logits[:labelled], True, None),
            "small teacher, unlabelled": (
                images_only,
                unlabelled,
                small_logits,
                False,
                unlabelled_epochs,
            ),
            "alone, all labels": (train_part, alone, None, True, full_alone),
            "big teacher, all labels": (
                train_part,
                distilled,
                big_teacher_logits,
                True,
                full_distilled,
            ),
        }
        for arm, (data, recipe, logits, use_labels, epochs) in runs.items():
            student = clone_model(initial)
            fit(
                student,
                data,
                recipe,
                seed=seed,
                teacher_logits=logits,
                labels=use_labels,
                epochs=epochs,
            )
            results[arm].append(_accuracy(student, test_set))
    return results


def _bias_counts(
    model: nn.Module, dataset: TensorDataset, omitted: int, bias: float
) -> tuple[int, int, int]:
    """(errors, correctly classified images of ``omitted``, images predicted as ``omitted``)."""
    scores = predict(model, dataset.tensors[0])
    scores[:, omitted] += bias
    predicted = scores.argmax(1)
    truth = dataset.tensors[1]
    errors = int((predicted != truth).sum())
    recognised = int(((predicted == omitted) & (truth == omitted)).sum())
    return errors, recognised, int((predicted == omitted).sum())


def omitted_class(
    train_part: TensorDataset,
    val_set: TensorDataset,
    test_set: TensorDataset,
    *,
    seeds: list[int],
    teacher_logits: torch.Tensor,
    recipe: Recipe,
    omitted: int = 3,
    sizes: tuple[int, ...] = (784, 100, 10),
    biases: tuple[float, ...] = tuple(0.5 * i for i in range(13)),
) -> dict[str, list[float]]:
    """Hinton et al.'s omitted-class experiment, over seeds, with the bias chosen on validation.

    For every seed, two students with the same initialisation and data order
    are trained on ``train_part`` without any image of class ``omitted``: one
    alone (cross-entropy, ``recipe.label_smoothing``), one distilled from the
    teacher (``teacher_logits``, ``recipe.temperature`` and ``recipe.alpha``).
    For each, the bias added to the logit of ``omitted`` is the value of
    ``biases`` with the fewest errors on ``val_set`` (the smallest on ties);
    the test set only reports.

    Args:
        train_part: Training images with labels (every class).
        val_set: Where the bias is chosen.
        test_set: Where the counts are measured.
        seeds: Logical seeds, one per repetition.
        teacher_logits: The teacher's logits for ``train_part``'s inputs.
        recipe: Training recipe of both students.
        omitted: The class left out of the transfer set.
        sizes: Layer sizes of the :class:`companion.models.MLP` students.
        biases: Candidate biases (non-empty).

    Returns:
        Per seed, under ``"<arm> <measure>"`` for arm ``alone`` and
        ``distilled``: ``recognised`` (test images of ``omitted`` classified
        correctly, no bias), ``bias`` (the chosen bias), ``recognised, bias``
        and ``errors, bias`` (test counts with it), ``predicted`` (test images
        predicted as ``omitted``, no bias); and ``"removed"``, the number of
        training images left out.

    Raises:
        ValueError: If ``seeds`` or ``biases`` is empty, ``omitted`` is not a
            class of ``train_part``, or the logits do not match it.
        TypeError: If ``recipe`` is not a :class:`Recipe`.
    """
    from .models import MLP
    from .utils import clone_model, seed_everything

    n = _check_labelled(train_part, "train_part")
    if not seeds:
        raise ValueError("seeds must hold at least one seed, got none")
    if not biases:
        raise ValueError("biases must hold at least one candidate bias, got none")
    if not isinstance(recipe, Recipe):
        raise TypeError(
            f"recipe must be a companion.distillation.Recipe, got {type(recipe).__name__}"
        )
    _check_logits("teacher_logits", teacher_logits)
    if len(teacher_logits) != n:
        raise ValueError(
            f"teacher_logits must have one row per image of train_part ({n}), got {len(teacher_logits)}"
        )
    inputs, targets = train_part.tensors[0], train_part.tensors[1]
    keep = targets != omitted
    if bool(keep.all()):
        raise ValueError(f"omitted={omitted} is not a class of train_part")
    transfer = TensorDataset(inputs[keep], targets[keep])
    kept_logits = teacher_logits[keep]
    results: dict[str, list[float]] = {"removed": []}
    for seed in seeds:
        seed_everything(seed)
        initial = MLP(sizes).to(inputs.device)
        for arm, logits in (("alone", None), ("distilled", kept_logits)):
            student = clone_model(initial)
            fit(student, transfer, recipe, seed=seed, teacher_logits=logits)
            bias = min(biases, key=lambda b: _bias_counts(student, val_set, omitted, b)[0])
            _, recognised, predicted = _bias_counts(student, test_set, omitted, 0.0)
            errors_b, recognised_b, _ = _bias_counts(student, test_set, omitted, bias)
            for measure, value in (
                ("recognised", recognised),
                ("bias", bias),
                ("recognised, bias", recognised_b),
                ("errors, bias", errors_b),
                ("predicted", predicted),
            ):
                results.setdefault(f"{arm} {measure}", []).append(value)
        results["removed"].append(int((~keep).sum()))
    return results


# --------------------------------------------------------------------------- forward and reverse KL

#: The divergences :func:`fit_one_mode` minimises.
DIVERGENCES = ("forward", "reverse")


def _check_grid(grid: object) -> torch.Tensor:
    if not isinstance(grid, torch.Tensor):
        raise TypeError(f"grid must be a torch.Tensor, got {type(grid).__name__}")
    if grid.dim() != 1 or len(grid) < 2:
        raise ValueError(f"grid must be a 1-D tensor of at least 2 points, got {tuple(grid.shape)}")
    if not grid.dtype.is_floating_point or not bool(torch.isfinite(grid).all()):
        raise ValueError("grid must hold finite floating-point values")
    if not bool((grid[1:] > grid[:-1]).all()):
        raise ValueError("grid must be strictly increasing")
    return grid


def _grid_gaussian_log(
    grid: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor
) -> torch.Tensor:
    """Log-probabilities of a Gaussian discretised on ``grid`` (normalised over the grid points)."""
    return torch.log_softmax(-0.5 * ((grid - mean) / log_std.exp()) ** 2, dim=0)


def mixture_probs(
    grid: torch.Tensor,
    means: Sequence[float],
    stds: Sequence[float],
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    r"""A mixture of Gaussians discretised on ``grid``: :math:`p_i \propto \sum_k w_k\,\mathcal{N}(x_i; \mu_k, \sigma_k^2)`.

    Args:
        grid: Strictly increasing 1-D points :math:`x_i`.
        means: The components' means :math:`\mu_k`.
        stds: Their standard deviations :math:`\sigma_k > 0`, one per mean.
        weights: Their weights :math:`w_k > 0` (normalised here); default equal.

    Returns:
        Probabilities on ``grid`` (same dtype), summing to 1.

    Raises:
        TypeError: If ``grid`` is not a tensor.
        ValueError: For a bad grid, no components, lists of different lengths,
            or a non-positive standard deviation or weight.

    Example:
        >>> p = mixture_probs(torch.linspace(-3, 3, 7, dtype=torch.float64), [-2.0, 2.0], [0.5, 0.5])
        >>> [round(v, 3) for v in p.tolist()]
        [0.053, 0.393, 0.053, 0.0, 0.053, 0.393, 0.053]
    """
    grid = _check_grid(grid)
    means, stds = list(means), list(stds)
    weights = [1.0] * len(means) if weights is None else list(weights)
    if not means or not (len(means) == len(stds) == len(weights)):
        raise ValueError(
            f"means, stds and weights must have the same non-zero length, got {len(means)}, "
            f"{len(stds)} and {len(weights)}"
        )
    for std in stds:
        check_in_range("stds", std, 0.0, float("inf"), low_inclusive=False, high_inclusive=False)
    for weight in weights:
        check_in_range(
            "weights", weight, 0.0, float("inf"), low_inclusive=False, high_inclusive=False
        )
    total = sum(weights)
    log_terms = torch.stack(
        [
            math.log(w / total) - math.log(s) - 0.5 * ((grid - m) / s) ** 2
            for m, s, w in zip(means, stds, weights, strict=True)
        ]
    )
    return torch.softmax(torch.logsumexp(log_terms, dim=0), dim=0)


@dataclass(frozen=True)
class OneModeFit:
    """The result of :func:`fit_one_mode`.

    Attributes:
        divergence: ``"forward"`` or ``"reverse"``.
        mean: The fitted student's :math:`\\mu`.
        std: Its :math:`\\sigma`.
        probs: Its probabilities on the grid.
        loss: The divergence at the end.
    """

    divergence: str
    mean: float
    std: float
    probs: torch.Tensor
    loss: float


def fit_one_mode(
    teacher_probs: torch.Tensor,
    grid: torch.Tensor,
    *,
    divergence: str = "forward",
    steps: int = 300,
    lr: float = 0.05,
    init_mean: float = 0.0,
    init_std: float = 1.0,
) -> OneModeFit:
    r"""Fit a one-mode student to a teacher distribution on a 1-D grid, by forward or reverse KL.

    The student is a Gaussian discretised on ``grid``,
    :math:`q_i \propto \exp(-(x_i - \mu)^2 / 2\sigma^2)`, with parameters
    :math:`(\mu, \log\sigma)` fitted by Adam from ``(init_mean, init_std)``
    to minimise

    * ``"forward"``: :math:`\mathrm{KL}(p\,\|\,q) = \sum_i p_i \log(p_i / q_i)`,
      the divergence of Hinton et al.'s loss (teacher first). It is infinite
      wherever the student puts no mass on what the teacher can produce, so
      a student that cannot fit every mode spreads over all of them
      (mode-covering); its minimiser over Gaussians matches the teacher's mean
      and variance.
    * ``"reverse"``: :math:`\mathrm{KL}(q\,\|\,p) = \sum_i q_i \log(q_i / p_i)`,
      which MiniLLM uses (Gu et al. 2024): it is large wherever the student
      puts mass where the teacher has little, so the student settles on one
      mode (mode-seeking).

    Everything is computed in float64 on the CPU and is deterministic (no
    random numbers). The reverse divergence has several local minima: which
    mode the student ends on depends on where it starts (the one nearer
    ``init_mean``, not necessarily the heavier one), and a wide start midway
    between two equal modes can stay there as a wide compromise.

    Args:
        teacher_probs: :math:`p` on ``grid`` (non-negative, summing to 1; every
            entry positive for ``"reverse"``).
        grid: The strictly increasing points :math:`x_i`.
        divergence: ``"forward"`` or ``"reverse"``.
        steps: Adam steps, >= 1.
        lr: Adam's learning rate, > 0.
        init_mean: The starting :math:`\mu`.
        init_std: The starting :math:`\sigma > 0`.

    Returns:
        A :class:`OneModeFit` with the fitted mean, standard deviation,
        probabilities and final divergence.

    Raises:
        TypeError: If ``teacher_probs`` or ``grid`` is not a tensor.
        ValueError: For an unknown ``divergence``, a bad grid, probabilities
            that do not match the grid, are negative, do not sum to 1, or
            (``"reverse"``) are zero somewhere, and out-of-range numbers.

    Example:
        >>> grid = torch.linspace(-6, 6, 241, dtype=torch.float64)
        >>> p = mixture_probs(grid, [-2.0, 2.0], [0.5, 0.5], [0.7, 0.3])
        >>> wide = fit_one_mode(p, grid, divergence="forward")
        >>> narrow = fit_one_mode(p, grid, divergence="reverse")
        >>> round(wide.std, 1), round(narrow.mean, 1), round(narrow.std, 1)
        (1.9, -2.0, 0.5)
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    grid = _check_grid(grid).detach().to("cpu", torch.float64)
    if not isinstance(teacher_probs, torch.Tensor):
        raise TypeError(f"teacher_probs must be a torch.Tensor, got {type(teacher_probs).__name__}")
    p = teacher_probs.detach().to("cpu", torch.float64)
    if p.shape != grid.shape:
        raise ValueError(
            f"teacher_probs must have one entry per grid point, shape {tuple(grid.shape)}, "
            f"got {tuple(p.shape)}"
        )
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
        raise ValueError("teacher_probs must be finite and non-negative")
    if abs(float(p.sum()) - 1.0) > 1e-6:
        raise ValueError(f"teacher_probs must sum to 1, got {float(p.sum()):.6g}")
    if divergence == "reverse" and bool((p == 0).any()):
        raise ValueError(
            "teacher_probs must be positive at every grid point for divergence='reverse': "
            "KL(q || p) is infinite where p = 0 and the student puts mass"
        )
    steps = check_positive_int("steps", steps)
    check_in_range("lr", lr, 0.0, float("inf"), low_inclusive=False, high_inclusive=False)
    check_in_range(
        "init_mean",
        init_mean,
        -float("inf"),
        float("inf"),
        low_inclusive=False,
        high_inclusive=False,
    )
    check_in_range(
        "init_std", init_std, 0.0, float("inf"), low_inclusive=False, high_inclusive=False
    )
    mean = torch.tensor(float(init_mean), dtype=torch.float64, requires_grad=True)
    log_std = torch.tensor(math.log(init_std), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([mean, log_std], lr=lr)
    log_p = p.log()  # -inf where p = 0: xlogy below gives those entries 0 (forward only)

    def loss() -> torch.Tensor:
        log_q = _grid_gaussian_log(grid, mean, log_std)
        if divergence == "forward":
            return (torch.xlogy(p, p) - p * log_q).sum()
        return (log_q.exp() * (log_q - log_p)).sum()

    for _ in range(steps):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    with torch.no_grad():
        final = loss().item()
        probs = _grid_gaussian_log(grid, mean, log_std).exp()
    return OneModeFit(divergence, mean.item(), log_std.exp().item(), probs, final)
