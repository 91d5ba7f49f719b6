"""Measuring what a model holds: parameters, zeros, sparsity and bytes.

Zeros are counted where they really are: for a layer pruned with
``torch.nn.utils.prune`` the *effective* weight ``weight_orig * weight_mask``
is what counts, not the stored ``weight_orig`` (see :mod:`companion.masks`).
What a model *costs to run* (FLOPs, latency) is measured in
:mod:`companion.speed`; the results table that puts both side by side is
:func:`companion.report.compare_models`.
"""

from __future__ import annotations

import io
import zlib

import torch
from torch import nn

from .masks import _check_model, current_weight, effective_weights

__all__ = [
    "count_parameters",
    "has_quantized_weights",
    "count_nonzero",
    "weight_stats",
    "sparsity",
    "layer_sparsity",
    "model_bytes",
    "compressed_bytes",
]


def _is_quantized(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a quantised tensor subclass (torchao's int8 weights) rather than floats."""
    return type(tensor) not in (torch.Tensor, nn.Parameter) and hasattr(tensor, "dequantize")


def _values(tensor: torch.Tensor) -> torch.Tensor:
    """The values a tensor stands for: a quantised weight dequantised, any other tensor as it is."""
    return tensor.dequantize().detach() if _is_quantized(tensor) else tensor.detach()


def has_quantized_weights(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is a quantised tensor (e.g. torchao's ``Int8Tensor``).

    Example:
        >>> has_quantized_weights(nn.Linear(3, 2))
        False
    """
    _check_model(model)
    return any(_is_quantized(p) for p in model.parameters())


def count_parameters(model: nn.Module) -> int:
    """Number of weight and bias values the model holds (masks are buffers, not counted).

    A pruned-but-not-shrunk model has as many parameters as the dense one;
    use :func:`count_nonzero` for the weights that survive. A quantised weight
    (torchao's int8 tensors) counts as many values as the float weight it replaces.

    Example:
        >>> count_parameters(nn.Linear(3, 2))
        8
    """
    _check_model(model)
    return sum(p.numel() for p in model.parameters())


def _effective_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Every parameter as the forward pass sees it (masked where masked)."""
    tensors = []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if name.endswith("_orig") and hasattr(module, name[: -len("_orig")]):
                tensors.append(current_weight(module, name[: -len("_orig")]))
            else:
                tensors.append(_values(param))
    return tensors


def count_nonzero(model: nn.Module) -> int:
    """Number of parameter values that are not exactly zero, masks applied.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = layer.weight.zero_()
        >>> count_nonzero(layer) == int((layer.bias != 0).sum())
        True
    """
    _check_model(model)
    return sum(int(torch.count_nonzero(t)) for t in _effective_tensors(model))


def weight_stats(model: nn.Module, small: float = 1e-3) -> dict[str, float]:
    """How many weights a penalty has zeroed or nearly zeroed, over all prunable layers.

    Biases are excluded; masked layers count their effective (masked) weights.

    Args:
        model: A network with at least one Linear or Conv layer.
        small: Magnitude below which a weight counts as near zero, > 0.

    Returns:
        A dict with ``"exact_zeros"`` (the fraction of weights equal to 0),
        ``"near_zero"`` (the fraction whose magnitude is below ``small``) and
        ``"mean_abs_w"`` (the mean magnitude).

    Raises:
        ValueError: If the model has no Linear or Conv layer or ``small`` <= 0.

    Example:
        >>> layer = nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[0.0, 1e-4], [0.5, -0.5]]))
        >>> {key: round(value, 6) for key, value in weight_stats(layer).items()}
        {'exact_zeros': 0.25, 'near_zero': 0.5, 'mean_abs_w': 0.250025}
    """
    if not small > 0:
        raise ValueError(f"small must be > 0, got {small}")
    weights = effective_weights(model)
    if not weights:
        raise ValueError("model has no prunable (Linear or Conv) layers")
    flat = torch.cat([w.flatten() for w in weights.values()]).double()
    return {
        "exact_zeros": (flat == 0).double().mean().item(),
        "near_zero": (flat.abs() < small).double().mean().item(),
        "mean_abs_w": flat.abs().mean().item(),
    }


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exactly-zero weights in each prunable layer (biases excluded).

    Returns:
        ``{"<layer>.weight": fraction in [0, 1]}``.

    Raises:
        ValueError: If the model has no Linear or Conv layer.
    """
    weights = effective_weights(model)
    if not weights:
        raise ValueError("model has no prunable (Linear or Conv) layers")
    return {name: 1.0 - int(torch.count_nonzero(w)) / w.numel() for name, w in weights.items()}


def sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero weights over all prunable layers (biases excluded).

    This is the number pruning papers call "sparsity"; one minus it is the
    fraction of weights kept.

    Raises:
        ValueError: If the model has no Linear or Conv layer.

    Example:
        >>> layer = nn.Linear(4, 2)
        >>> with torch.no_grad():
        ...     layer.weight[0] = 0
        >>> sparsity(layer)
        0.5
    """
    weights = effective_weights(model)
    if not weights:
        raise ValueError("model has no prunable (Linear or Conv) layers")
    total = sum(w.numel() for w in weights.values())
    zeros = sum(w.numel() - int(torch.count_nonzero(w)) for w in weights.values())
    return zeros / total


def _serialized(model: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def model_bytes(model: nn.Module) -> int:
    """Size in bytes of ``torch.save(model.state_dict())``: what a checkpoint costs.

    A model pruned with masks stores ``weight_orig`` *and* ``weight_mask``, so
    its checkpoint is larger than the dense one until the masks are made
    permanent.
    """
    _check_model(model)
    return len(_serialized(model))


def compressed_bytes(model: nn.Module, level: int = 9) -> int:
    """Size of the checkpoint after zlib (DEFLATE) compression.

    Zeros compress well, so this shows what unstructured sparsity buys on disk
    without any sparse format.

    Args:
        model: Any module.
        level: zlib compression level, 0-9.
    """
    _check_model(model)
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 9:
        raise ValueError(f"level must be an int in [0, 9], got {level!r}")
    return len(zlib.compress(_serialized(model), level))
