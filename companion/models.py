"""The networks the book prunes and distils.

All of them are :class:`MLP` instances: a flatten followed by ``nn.Linear``
layers named ``fc1``, ``fc2``, ... with ReLU (and optional dropout) between
them. Keeping one simple, inspectable class makes pruning masks, surgery and
saved files easy to read: the mask of the first layer is always ``"fc1"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .utils import check_in_range

__all__ = ["MLP", "article_mlp", "lenet_300_100", "hinton_teacher"]


class MLP(nn.Module):
    """A fully connected ReLU network on flattened inputs.

    Args:
        sizes: Layer widths from input to output, e.g. ``(784, 300, 100, 10)``;
            at least two entries, each a positive int.
        dropout: Dropout probability after every hidden ReLU, in ``[0, 1)``.

    Raises:
        ValueError: If ``sizes`` has fewer than two entries or a non-positive
            width, or ``dropout`` is outside ``[0, 1)``.

    Example:
        >>> net = MLP((784, 128, 10))
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> [name for name, _ in net.named_children()]
        ['fc1', 'fc2', 'dropout']
    """

    def __init__(self, sizes: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        sizes = tuple(sizes)
        if len(sizes) < 2:
            raise ValueError(f"sizes must list at least an input and an output width, got {sizes}")
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"sizes must be positive ints, got {sizes}")
        check_in_range("dropout", dropout, 0.0, 1.0, high_inclusive=False)
        self.sizes = sizes
        self.dropout_p = float(dropout)
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), start=1):
            self.add_module(f"fc{i}", nn.Linear(fan_in, fan_out))
        self.dropout = nn.Dropout(dropout)

    @property
    def example_input_shape(self) -> tuple[int, ...]:
        """Shape of one input example, read by :mod:`companion.speed`: an MNIST image for 784 inputs."""
        return (1, 28, 28) if self.sizes[0] == 28 * 28 else (self.sizes[0],)

    @property
    def linears(self) -> list[nn.Linear]:
        """The ``nn.Linear`` layers in order, ``fc1`` first."""
        return [getattr(self, f"fc{i}") for i in range(1, len(self.sizes))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        *hidden, last = self.linears
        for layer in hidden:
            x = self.dropout(torch.relu(layer(x)))
        return last(x)

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, dropout={self.dropout_p}"


def article_mlp() -> MLP:
    """The source article's network: 784-128-10 with one ReLU hidden layer.

    Example:
        >>> sum(p.numel() for p in article_mlp().parameters())
        101770
    """
    return MLP((784, 128, 10))


def lenet_300_100(dropout: float = 0.0) -> MLP:
    """LeNet-300-100 (LeCun et al. 1998), the MLP of Han et al.'s pruning study.

    Example:
        >>> sum(p.numel() for p in lenet_300_100().parameters())
        266610
    """
    return MLP((784, 300, 100, 10), dropout=dropout)


def hinton_teacher(dropout: float = 0.2) -> MLP:
    """A teacher in the spirit of Hinton et al. 2015: 784-1200-1200-10 with dropout.

    Example:
        >>> sum(p.numel() for p in hinton_teacher().parameters())
        2395210
    """
    return MLP((784, 1200, 1200, 10), dropout=dropout)
