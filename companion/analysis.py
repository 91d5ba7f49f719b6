"""Small analyses behind the last chapter: Pareto fronts, mask stability, dead inputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["pareto_front", "mask_jaccard", "dead_inputs", "train_step_flops"]


def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats: lower-or-equal cost and higher-or-equal score.

    A point is dominated if another point is at least as good on both axes and
    strictly better on one. The front is returned sorted by cost.

    Args:
        costs: Lower is better (bytes, latency).
        scores: Higher is better (accuracy).

    Returns:
        Indices of the non-dominated points, by increasing cost.

    Raises:
        ValueError: If the sequences are empty, of different lengths, or hold NaN.

    Example:
        >>> pareto_front([1, 2, 3, 4], [0.90, 0.95, 0.94, 0.99])
        [0, 1, 3]
    """
    costs, scores = [float(c) for c in costs], [float(s) for s in scores]
    if not costs or len(costs) != len(scores):
        raise ValueError(
            f"costs and scores must be non-empty and of equal length, got {len(costs)} and {len(scores)}"
        )
    if any(v != v for v in costs + scores):
        raise ValueError("costs and scores must not contain NaN")
    front = []
    for i, (c, s) in enumerate(zip(costs, scores, strict=True)):
        dominated = any(
            c2 <= c and s2 >= s and (c2 < c or s2 > s) for c2, s2 in zip(costs, scores, strict=True)
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (costs[i], -scores[i]))


def mask_jaccard(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Jaccard similarity of the *kept* weights of two mask sets (1 = identical, 0 = disjoint).

    Used to ask whether pruning from different random seeds keeps the same
    connections.

    Raises:
        ValueError: If the mask sets name different layers or shapes differ.

    Example:
        >>> m1 = {"fc1": torch.tensor([1.0, 1.0, 0.0, 0.0])}
        >>> m2 = {"fc1": torch.tensor([1.0, 0.0, 1.0, 0.0])}
        >>> mask_jaccard(m1, m2)
        0.3333333333333333
    """
    if set(a) != set(b):
        raise ValueError(f"mask sets name different layers: {sorted(a)} vs {sorted(b)}")
    inter = union = 0
    for name in a:
        if a[name].shape != b[name].shape:
            raise ValueError(
                f"masks for {name!r} differ in shape: {tuple(a[name].shape)} vs {tuple(b[name].shape)}"
            )
        ka, kb = a[name].bool(), b[name].bool()
        inter += int((ka & kb).sum())
        union += int((ka | kb).sum())
    return inter / union if union else 1.0


def random_mask_jaccard(masks: Mapping[str, torch.Tensor]) -> float:
    r"""Jaccard similarity expected between two independent random masks shaped like ``masks``.

    The chance level for :func:`mask_jaccard`: each random mask keeps, in every
    layer :math:`l` of :math:`n_l` weights, the same fraction :math:`k_l` as
    ``masks`` does, at random positions. Two such masks share about
    :math:`k_l^2 n_l` kept weights and together keep :math:`(2k_l - k_l^2) n_l`, so

    .. math::

        J_\text{random} = \frac{\sum_l k_l^2 n_l}{\sum_l (2k_l - k_l^2)\, n_l},

    which is :math:`k / (2 - k)` when every layer keeps the same fraction. Global
    pruning keeps very different fractions per layer, and then the single-
    fraction formula underestimates the chance level.

    Args:
        masks: ``{"<layer>": mask}`` with 1 for kept weights.

    Returns:
        The expected Jaccard index, in [0, 1] (1.0 when no weight is kept).

    Raises:
        ValueError: If ``masks`` is empty.

    Example:
        >>> round(random_mask_jaccard({"fc1": torch.tensor([1.0, 0.0, 0.0, 0.0])}), 4)  # k/(2-k)
        0.1429
    """
    if not masks:
        raise ValueError("masks is empty: pass {layer name: mask} for at least one layer")
    shared = either = 0.0
    for mask in masks.values():
        n = mask.numel()
        k = int(mask.bool().sum()) / n if n else 0.0
        shared += k * k * n
        either += (2 * k - k * k) * n
    return shared / either if either else 1.0


def dead_inputs(first_layer_weight: torch.Tensor) -> torch.Tensor:
    """Boolean map of inputs whose every outgoing connection in the first layer is zero.

    Args:
        first_layer_weight: The (effective) weight of the first ``nn.Linear``,
            shape ``[out_features, in_features]``.

    Returns:
        A bool tensor of shape ``[in_features]``; reshape to ``28 x 28`` for MNIST.

    Raises:
        TypeError: If ``first_layer_weight`` is not a tensor.
        ValueError: If it is not 2-D.

    Example:
        >>> dead_inputs(torch.tensor([[0.0, 1.0], [0.0, 2.0]])).tolist()
        [True, False]
    """
    if not isinstance(first_layer_weight, torch.Tensor):
        raise TypeError(
            f"first_layer_weight must be a torch.Tensor, got {type(first_layer_weight).__name__}"
        )
    if first_layer_weight.dim() != 2:
        raise ValueError(
            f"first_layer_weight must be 2-D [out, in], got shape {tuple(first_layer_weight.shape)}"
        )
    return (first_layer_weight.detach() == 0).all(dim=0)


def train_step_flops(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> int:
    """FLOPs of one training step (forward, cross-entropy and backward), counted by PyTorch.

    Multiply this by the number of steps to get the compute a method spent;
    the optimizer update itself (a few FLOPs per parameter) is not included.
    Gradients are computed on the model and then cleared.

    Args:
        model: The network, in training mode.
        inputs: One batch of inputs.
        targets: Its class labels.

    Returns:
        The FLOPs of the step, as counted by ``FlopCounterMode``.

    Example:
        >>> layer = nn.Linear(784, 10)
        >>> # 2*784*10 forward and the same for the weight gradient (inputs need none)
        >>> train_step_flops(layer, torch.rand(1, 784), torch.tensor([3]))
        31360
    """
    from .metrics import _quiet_import

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    counter = _quiet_import("torch.utils.flop_counter").FlopCounterMode(display=False)
    with counter:
        loss = F.cross_entropy(model(inputs), targets)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())
