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

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from .training import History, _check_integer_targets, _check_labelled, predict, train
from .utils import check_in_range

__all__ = ["soft_targets", "kd_loss", "KDLoss", "distill"]


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
    teacher: nn.Module,
    dataset: TensorDataset,
    *,
    epochs: int,
    temperature: float = 4.0,
    alpha: float = 0.9,
    cache_teacher: bool = True,
    **train_kwargs: Any,
) -> History:
    """Train ``student`` to imitate ``teacher`` on ``dataset`` with :func:`kd_loss`.

    This is :func:`companion.training.train` with the distillation loss, so it
    has the same optimizer options, progress bar, history and NaN guard. The
    teacher is put in eval mode (no dropout), runs under ``torch.no_grad()``
    and is never updated; its previous mode is restored afterwards.

    With ``cache_teacher=True`` the teacher's logits are computed once for the
    whole training set and stored beside it (one forward pass instead of one
    per epoch). That is valid because the inputs are the same every epoch
    (this loop uses no data augmentation) and the teacher in eval mode is
    deterministic; with augmentation or a stochastic teacher, use
    ``cache_teacher=False``.

    Args:
        student: The network being trained (in place).
        teacher: The trained network to imitate.
        dataset: ``(inputs, targets)`` on the models' device.
        epochs: Passes over the data.
        temperature: :math:`T > 0` of :func:`kd_loss`.
        alpha: Weight of the soft term, in ``[0, 1]``.
        cache_teacher: Compute the teacher's logits once.
        **train_kwargs: Passed to :func:`companion.training.train` (``lr``,
            ``batch_size``, ``momentum``, ``optimizer``, ``seed``,
            ``eval_set``, ``progress``, ...).

    Returns:
        The training history.

    Raises:
        ValueError: For invalid ``temperature`` or ``alpha``, if
            ``train_kwargs`` contains ``loss_fn``, or ``dataset`` is empty or
            has no targets (and whatever :func:`companion.training.train`
            rejects).
        TypeError: If ``teacher`` is not an ``nn.Module`` or the targets are
            not integer class indices.
    """
    _check_temperature(temperature)
    check_in_range("alpha", alpha, 0.0, 1.0)
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
    if "loss_fn" in train_kwargs:
        raise ValueError(
            "distill sets loss_fn itself; call companion.training.train for a custom loss"
        )
    _check_labelled(dataset)
    was_training = teacher.training
    teacher.eval()
    try:
        inputs, targets = dataset.tensors[0], dataset.tensors[1]
        if cache_teacher:
            teacher_logits = predict(teacher, inputs)
            data = TensorDataset(inputs, targets, teacher_logits)

            def loss_fn(logits: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
                return kd_loss(logits, batch[2], batch[1], temperature=temperature, alpha=alpha)

        else:
            data = TensorDataset(inputs, targets)

            def loss_fn(logits: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
                with torch.no_grad():
                    teacher_logits = teacher(batch[0])
                return kd_loss(
                    logits, teacher_logits, batch[1], temperature=temperature, alpha=alpha
                )

        return train(student, data, epochs=epochs, loss_fn=loss_fn, **train_kwargs)
    finally:
        teacher.train(was_training)
