"""Network surgery: turn structured sparsity into a physically smaller network.

Masking a neuron's incoming weights to zero does not make a network smaller or
faster: the zero rows are still stored and multiplied. :func:`shrink` deletes
them. A deleted hidden neuron ``j`` of layer ``i`` still outputs the constant
``relu(b_j)`` (its bias passes through the ReLU), which reaches layer ``i + 1``
as ``W[:, j] * relu(b_j)``; that constant is folded into layer ``i + 1``'s
bias, so the shrunk network computes exactly the same function.
"""

from __future__ import annotations

import torch
from torch import nn

from .masks import current_weight
from .models import MLP

__all__ = ["alive_units", "shrink"]


def alive_units(layer: nn.Module) -> torch.Tensor:
    """Indices of the output units (rows, or conv filters) whose effective weights are not all zero.

    Works on plain and on ``torch.nn.utils.prune``-masked layers (the masked
    ``weight`` is what counts).

    Example:
        >>> layer = nn.Linear(3, 4)
        >>> with torch.no_grad():
        ...     layer.weight[1] = 0
        >>> alive_units(layer).tolist()
        [0, 2, 3]
    """
    weight = current_weight(layer)
    return torch.nonzero(weight.flatten(1).abs().sum(1) != 0).flatten()


@torch.no_grad()
def shrink(model: MLP) -> MLP:
    r"""Return a smaller :class:`~companion.models.MLP` without the hidden neurons whose incoming weights are all zero.

    For every hidden layer, the rows of dead neurons are deleted, the matching
    columns of the next layer are deleted, and each dead neuron's constant
    output is folded into the next layer's bias:

    .. math:: b'_{i+1} = b_{i+1} + W_{i+1}[:, D]\,\mathrm{relu}(b_i[D])

    where :math:`D` is the set of dead neurons. The output layer keeps every
    class; a hidden layer keeps at least one neuron. Dropout is unchanged (it
    is inactive in eval mode, where the equality holds).

    Args:
        model: A trained, pruned MLP (masked or with masks made permanent).
            It is not modified.

    Returns:
        A new MLP on the same device with plain (unmasked) parameters, whose
        outputs equal ``model``'s in eval mode up to float rounding.

    Raises:
        TypeError: If ``model`` is not a :class:`~companion.models.MLP`.

    Example:
        >>> net = MLP((4, 6, 3))
        >>> with torch.no_grad():
        ...     net.fc1.weight[:4] = 0
        >>> small = shrink(net)
        >>> small.sizes
        (4, 2, 3)
        >>> x = torch.rand(5, 4)
        >>> torch.allclose(small(x), net(x), atol=1e-6)
        True
    """
    if not isinstance(model, MLP):
        raise TypeError(f"model must be a companion.models.MLP, got {type(model).__name__}")
    layers = model.linears
    weights = [current_weight(layer).clone() for layer in layers]
    biases = [layer.bias.detach().clone() for layer in layers]
    kept_inputs = torch.arange(model.sizes[0], device=weights[0].device)
    new_weights, new_biases, sizes = [], [], [model.sizes[0]]
    for i in range(len(layers)):
        weight = weights[i][:, kept_inputs]
        if i == len(layers) - 1:
            keep = torch.arange(weight.shape[0], device=weight.device)
        else:
            keep = torch.nonzero(weights[i].abs().sum(1) != 0).flatten()
            if len(keep) == 0:  # keep one neuron so that the layer still exists
                keep = torch.zeros(1, dtype=torch.long, device=weight.device)
            dead = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
            dead[keep] = False
            # Dead neurons output the constant relu(b); fold it into the next layer's bias.
            biases[i + 1] += weights[i + 1][:, dead] @ torch.relu(biases[i][dead])
        new_weights.append(weight[keep])
        new_biases.append(biases[i][keep])
        sizes.append(len(keep))
        kept_inputs = keep
    small = MLP(sizes, dropout=model.dropout_p).to(weights[0].device)
    for layer, weight, bias in zip(small.linears, new_weights, new_biases, strict=True):
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    small.train(model.training)
    return small
