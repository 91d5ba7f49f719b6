"""A LeNet-5-style convolutional network and channel pruning that really shrinks it.

Structured pruning of a convolutional network removes whole output channels
(filters), ranked by the L1 norm of their weights as in Li et al. (2017).
:func:`shrink_lenet5` then builds a physically smaller network with the same
outputs, exactly as :func:`companion.surgery.shrink` does for MLPs.

Why the surgery is exact: a removed channel still outputs the constant map
``relu(b)`` (its bias), which max-pooling leaves constant. The next layer sees
that constant through its whole kernel (``conv2`` uses no padding, and a
flattened channel feeds ``fc1`` through its own columns), so its contribution
``relu(b) * sum(kernel)`` is a constant that is folded into the next layer's
bias before the channel is deleted.

:func:`shrink_lenet5` stays as the readable example for this one architecture.
The general path, ``companion.surgery.shrink(model, example_inputs=...)``,
works on any traceable network but folds nothing: it removes a channel only
where it carries exactly zero (weights and bias zero), so a dead channel with a
nonzero bias stays there, while :func:`shrink_lenet5` removes it too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .masks import current_weight
from .surgery import alive_units as alive_channels

__all__ = ["LeNet5", "shrink_lenet5", "alive_channels"]


class LeNet5(nn.Module):
    """LeNet-5 for 28x28 inputs: two 5x5 conv layers with max-pooling, then three linear layers.

    ``conv1`` (padding 2) -> ReLU -> 2x2 max-pool -> ``conv2`` (no padding) ->
    ReLU -> 2x2 max-pool -> flatten -> ``fc1`` -> ReLU -> ``fc2`` -> ReLU -> ``fc3``.

    Args:
        channels: Output channels of ``conv1`` and ``conv2`` (LeCun et al. 1998: 6 and 16).
        hidden: Widths of ``fc1`` and ``fc2`` (120 and 84).
        num_classes: Width of ``fc3``.

    Raises:
        ValueError: If a width is not a positive int.

    Example:
        >>> net = LeNet5()
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> sum(p.numel() for p in net.parameters())
        61706
    """

    #: Shape of one input example, read by :mod:`companion.speed`.
    example_input_shape: tuple[int, ...] = (1, 28, 28)

    def __init__(
        self,
        channels: Sequence[int] = (6, 16),
        hidden: Sequence[int] = (120, 84),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        channels, hidden = tuple(channels), tuple(hidden)
        for name, values in (
            ("channels", channels),
            ("hidden", hidden),
            ("num_classes", (num_classes,)),
        ):
            expected = 1 if name == "num_classes" else 2
            if len(values) != expected or any(
                isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values
            ):
                raise ValueError(f"{name} must be {expected} positive int(s), got {values}")
        self.channels, self.hidden, self.num_classes = channels, hidden, num_classes
        self.conv1 = nn.Conv2d(1, channels[0], kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(channels[0], channels[1], kernel_size=5)
        self.fc1 = nn.Linear(channels[1] * 5 * 5, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = F.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden}, num_classes={self.num_classes}"


@torch.no_grad()
def shrink_lenet5(model: LeNet5) -> LeNet5:
    """Return a smaller :class:`LeNet5` without the channels and neurons whose weights are all zero.

    ``conv1``, ``conv2``, ``fc1`` and ``fc2`` lose their dead output
    channels/neurons; the matching input channels/columns of the following
    layer go too, and each removed unit's constant output ``relu(b)`` is folded
    into the following layer's bias, so the result computes the same function
    as ``model`` (to float rounding). ``fc3`` (the classifier) keeps every
    output. At least one unit per layer is kept.

    Args:
        model: A trained, pruned :class:`LeNet5` (masked or with masks made
            permanent). It is not modified.

    Returns:
        A new :class:`LeNet5` on the same device, with plain parameters.

    Raises:
        TypeError: If ``model`` is not a :class:`LeNet5`.

    Example:
        >>> net = LeNet5()
        >>> with torch.no_grad():
        ...     net.conv2.weight[:8] = 0
        >>> small = shrink_lenet5(net)
        >>> small.channels
        (6, 8)
        >>> x = torch.rand(3, 1, 28, 28)
        >>> torch.allclose(net(x), small(x), atol=1e-5)
        True
    """
    if not isinstance(model, LeNet5):
        raise TypeError(f"model must be a companion.convnets.LeNet5, got {type(model).__name__}")

    def keep(layer: nn.Module) -> torch.Tensor:
        alive = alive_channels(layer)
        if len(alive) == 0:  # an emptied layer still needs one unit to pass its constant on
            alive = torch.zeros(1, dtype=torch.long, device=layer.weight.device)
        return alive

    w = {
        name: current_weight(getattr(model, name)).clone()
        for name in ("conv1", "conv2", "fc1", "fc2", "fc3")
    }
    b = {
        name: getattr(model, name).bias.detach().clone()
        for name in ("conv1", "conv2", "fc1", "fc2", "fc3")
    }
    k1, k2, k3, k4 = keep(model.conv1), keep(model.conv2), keep(model.fc1), keep(model.fc2)

    def fold(removed_const: torch.Tensor, next_name: str, reduce_dims: tuple[int, ...]) -> None:
        # Contribution of constant inputs through the next layer's weights, per output unit.
        b[next_name] += (w[next_name] * removed_const).sum(dim=reduce_dims)

    # conv1 -> conv2: a dead channel's map is the constant relu(b) (pooling keeps it constant).
    dead1 = torch.ones(len(b["conv1"]), dtype=torch.bool, device=b["conv1"].device)
    dead1[k1] = False
    const1 = torch.where(dead1, torch.relu(b["conv1"]), torch.zeros_like(b["conv1"]))
    fold(const1.view(1, -1, 1, 1), "conv2", (1, 2, 3))
    # conv2 -> fc1: a dead channel feeds fc1 through its 25 flattened columns.
    dead2 = torch.ones(len(b["conv2"]), dtype=torch.bool, device=b["conv2"].device)
    dead2[k2] = False
    const2 = torch.where(dead2, torch.relu(b["conv2"]), torch.zeros_like(b["conv2"]))
    fold(const2.repeat_interleave(25).view(1, -1), "fc1", (1,))
    # fc1 -> fc2 and fc2 -> fc3.
    for name, nxt, kept in (("fc1", "fc2", k3), ("fc2", "fc3", k4)):
        dead = torch.ones(len(b[name]), dtype=torch.bool, device=b[name].device)
        dead[kept] = False
        const = torch.where(dead, torch.relu(b[name]), torch.zeros_like(b[name]))
        fold(const.view(1, -1), nxt, (1,))

    small = LeNet5((len(k1), len(k2)), (len(k3), len(k4)), model.num_classes).to(b["fc3"].device)
    columns2 = (k2.view(-1, 1) * 25 + torch.arange(25, device=k2.device)).flatten()
    small.conv1.weight.copy_(w["conv1"][k1])
    small.conv1.bias.copy_(b["conv1"][k1])
    small.conv2.weight.copy_(w["conv2"][k2][:, k1])
    small.conv2.bias.copy_(b["conv2"][k2])
    small.fc1.weight.copy_(w["fc1"][k3][:, columns2])
    small.fc1.bias.copy_(b["fc1"][k3])
    small.fc2.weight.copy_(w["fc2"][k4][:, k3])
    small.fc2.bias.copy_(b["fc2"][k4])
    small.fc3.weight.copy_(w["fc3"][:, k4])
    small.fc3.bias.copy_(b["fc3"])
    return small
