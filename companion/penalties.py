r"""Sparsity-inducing penalties and the proximal step of the L1 penalty.

The source article's hard-pruning objective is

.. math:: L = \ell(y, \hat y) + \lambda \sum_i |w_i|

and its soft-pruning objective uses :math:`\lambda \sum_i w_i^2` instead. Pass
one of these functions to :func:`companion.training.train` as ``penalty`` with
``penalty_weight`` = :math:`\lambda`. All of them act on the weights of Linear
and convolutional layers (the effective, masked weight where a layer is
pruned); biases are excluded unless ``include_bias=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .masks import _check_exclude, output_layers, prunable_layers
from .utils import check_in_range

__all__ = [
    "l1_penalty",
    "l2_penalty",
    "group_lasso_penalty",
    "soft_threshold_",
    "group_soft_threshold_",
]


def _tensors(model: nn.Module, include_bias: bool) -> list[torch.Tensor]:
    layers = prunable_layers(model)
    if not layers:
        raise ValueError("model has no prunable (Linear or Conv) layers to penalise")
    tensors = [m.weight for m in layers.values()]
    if include_bias:
        tensors += [m.bias for m in layers.values() if m.bias is not None]
    return tensors


def _hidden_layers(model: nn.Module, exclude: Sequence[str], what: str) -> list[nn.Module]:
    """The layers whose rows are hidden units: all prunable ones but the output layers and ``exclude``."""
    layers = prunable_layers(model)
    if not layers:
        raise ValueError(f"model has no prunable (Linear or Conv) layers to {what}")
    protected = output_layers(model, exclude=exclude)
    hidden = [m for name, m in layers.items() if name not in protected]
    if not hidden:
        raise ValueError(
            f"model needs a hidden prunable (Linear or Conv) layer to {what}: the rows of "
            f"{protected} (the output layers and exclude) are left alone"
        )
    return hidden


def l1_penalty(model: nn.Module, *, include_bias: bool = False) -> torch.Tensor:
    r"""The L1 norm of the weights, :math:`\Omega(w) = \sum_i |w_i|`.

    Its (sub)gradient :math:`\lambda\,\mathrm{sign}(w)` has the same size for
    small and large weights, so it keeps pushing small weights to zero; with
    plain gradient descent they oscillate around zero instead of landing on it
    (see :func:`soft_threshold_` for the step that produces exact zeros).

    Args:
        model: The network.
        include_bias: Penalise the biases too.

    Returns:
        A scalar tensor connected to the autograd graph.

    Raises:
        ValueError: If the model has no Linear or Conv layer.

    Example:
        >>> layer = nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[1.0, -2.0]]))
        >>> l1_penalty(layer).item()
        3.0
    """
    return sum(t.abs().sum() for t in _tensors(model, include_bias))


def l2_penalty(model: nn.Module, *, include_bias: bool = False) -> torch.Tensor:
    r"""The squared L2 norm of the weights, :math:`\Omega(w) = \sum_i w_i^2`.

    Its gradient :math:`2\lambda w` vanishes as a weight approaches zero, so
    L2 shrinks weights but almost never makes one exactly zero.

    Example:
        >>> layer = nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[1.0, -2.0]]))
        >>> l2_penalty(layer).item()
        5.0
    """
    return sum(t.pow(2).sum() for t in _tensors(model, include_bias))


def group_lasso_penalty(model: nn.Module, *, exclude: Sequence[str] = ()) -> torch.Tensor:
    r"""Group lasso over output neurons: :math:`\Omega(w) = \sum_j \lVert w_{j,:} \rVert_2`.

    Each group is the incoming weight vector of one output neuron (one row of
    a Linear weight, one filter of a convolution). The penalty drives whole
    groups to zero together, which is what structured pruning removes
    (Yuan and Lin 2006; Wen et al. 2016). Every prunable layer but those in
    ``exclude`` is penalised, the output layers included: the subgradient
    shrinks their rows but never makes one exactly zero, so no class is
    removed; the proximal step that does make zeros,
    :func:`group_soft_threshold_`, leaves the output layers alone.

    Args:
        model: The network.
        exclude: Layer names whose rows are not penalised.

    Returns:
        A scalar tensor connected to the autograd graph.

    Raises:
        ValueError: If the model has no prunable layer, or ``exclude`` names an
            unknown layer or leaves none.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
        >>> group_lasso_penalty(layer).item()
        6.0
    """
    layers = prunable_layers(model)
    if not layers:
        raise ValueError("model has no prunable (Linear or Conv) layers to penalise")
    excluded = _check_exclude(layers, exclude)
    weights = [m.weight for name, m in layers.items() if name not in excluded]
    if not weights:
        raise ValueError(f"exclude={excluded} leaves no layer to penalise")
    return sum(w.flatten(1).norm(dim=1).sum() for w in weights)


@torch.no_grad()
def soft_threshold_(model: nn.Module, threshold: float) -> int:
    r"""In-place proximal step of the L1 penalty: :math:`w \leftarrow \mathrm{sign}(w)\max(|w| - \tau, 0)`.

    After a gradient step on the loss alone, this step applies the L1 penalty
    exactly (proximal gradient descent / ISTA, with :math:`\tau = \eta\lambda`
    for learning rate :math:`\eta`): weights within :math:`\tau` of zero become
    *exactly* zero and the others move toward zero by :math:`\tau`. For a
    pruned layer the stored ``weight_orig`` is thresholded.

    Args:
        model: The network, modified in place.
        threshold: :math:`\tau \ge 0`.

    Returns:
        The number of weights that are exactly zero afterwards.

    Raises:
        ValueError: If ``threshold`` is negative or not finite, or the model
            has no Linear or Conv layer.

    Example:
        >>> layer = nn.Linear(3, 1)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[0.05, -0.5, 1.0]]))
        >>> soft_threshold_(layer, 0.1)
        1
        >>> [round(w, 4) for w in layer.weight[0].tolist()]
        [0.0, -0.4, 0.9]
    """
    check_in_range("threshold", threshold, 0.0, float("inf"), high_inclusive=False)
    layers = prunable_layers(model)
    if not layers:
        raise ValueError("model has no prunable (Linear or Conv) layers to threshold")
    zeros = 0
    for module in layers.values():
        if hasattr(module, "weight_orig"):  # pruned layer: threshold the stored values
            module.weight_orig.copy_(
                module.weight_orig.sign() * (module.weight_orig.abs() - threshold).clamp_min(0)
            )
            module.weight = module.weight_orig * module.weight_mask
        else:
            module.weight.copy_(
                module.weight.sign() * (module.weight.abs() - threshold).clamp_min(0)
            )
        zeros += int((module.weight == 0).sum())
    return zeros


@torch.no_grad()
def group_soft_threshold_(
    model: nn.Module, threshold: float, *, exclude: Sequence[str] = ()
) -> int:
    r"""In-place proximal step of the group lasso over hidden neurons (block soft threshold).

    Each group :math:`g` is one row of a hidden layer's weight (the incoming
    weights of one neuron; one filter of a convolution):

    .. math:: w_g \leftarrow w_g \cdot \max\Big(0,\ 1 - \frac{\tau}{\lVert w_g \rVert_2}\Big)

    with :math:`\tau = \eta\lambda` (learning rate times penalty weight) after a
    gradient step on the loss alone. A row whose norm is at most :math:`\tau`
    becomes *exactly* zero, which the subgradient of
    :func:`group_lasso_penalty` never achieves, so
    :func:`companion.surgery.shrink` can then remove the neuron. The output
    layers (:func:`~companion.masks.output_layers`, found from the graph:
    their rows are the classes) and the layers in ``exclude`` are left
    alone. For a pruned layer the row norm is that of the effective (masked)
    weight and the stored ``weight_orig`` is scaled.

    Args:
        model: The network, modified in place; it needs a hidden prunable layer.
        threshold: :math:`\tau \ge 0`.
        exclude: Layer names to leave alone.

    Returns:
        The number of hidden neurons whose incoming weights are exactly zero afterwards.

    Raises:
        ValueError: If ``threshold`` is negative or not finite, the model has no
            hidden Linear or Conv layer to threshold, or ``exclude`` names an
            unknown layer.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[3.0, 4.0], [0.3, 0.4]]))
        >>> group_soft_threshold_(net, 1.0)
        1
        >>> net[0].weight.tolist()
        [[2.4000000953674316, 3.200000047683716], [0.0, 0.0]]
    """
    check_in_range("threshold", threshold, 0.0, float("inf"), high_inclusive=False)
    layers = _hidden_layers(model, exclude, "threshold")
    zero_rows = 0
    for module in layers:
        masked = hasattr(module, "weight_orig")
        weight = module.weight_orig * module.weight_mask if masked else module.weight
        norms = weight.flatten(1).norm(dim=1)
        scale = (1 - threshold / norms.clamp_min(torch.finfo(norms.dtype).tiny)).clamp_min(0)
        scale = scale.view(-1, *([1] * (weight.dim() - 1)))
        if masked:
            module.weight_orig.mul_(scale)
            module.weight = module.weight_orig * module.weight_mask
        else:
            module.weight.mul_(scale)
        zero_rows += int((module.weight.flatten(1).abs().sum(1) == 0).sum())
    return zero_rows
