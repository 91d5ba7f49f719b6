"""Masks on a model, and the weights its forward pass really uses.

A mask dict maps a layer's qualified name (``"fc1"``) to a 0/1 tensor shaped
like its weight. :func:`apply_masks` puts it on the model with PyTorch's own
re-parametrisation (``torch.nn.utils.prune.custom_from_mask``): the layer then
holds the parameter ``weight_orig`` and the buffer ``weight_mask``, and its
``weight`` is recomputed as ``weight_orig * weight_mask`` before every forward
pass. The helpers here read those weights as the next forward pass will see
them (:func:`current_weight`, :func:`effective_weights`), bring the stale
``weight`` attribute up to date (:func:`refresh_masked_weights`) and fold the
masks in for good (:func:`make_permanent`).

The criteria that *compute* masks live in :mod:`companion.pruning`; the
measurements built on effective weights (zeros, sparsity, bytes) in
:mod:`companion.metrics`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

__all__ = [
    "PRUNABLE_TYPES",
    "prunable_layers",
    "current_weight",
    "effective_weights",
    "refresh_masked_weights",
    "apply_masks",
    "current_masks",
    "is_pruned",
    "make_permanent",
]

#: Layer types whose ``weight`` the book prunes.
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Linear and convolutional sub-modules of ``model`` by qualified name.

    Args:
        model: Any module.

    Returns:
        An ordered ``{name: module}`` dict (definition order).

    Example:
        >>> from companion.models import MLP
        >>> list(prunable_layers(MLP((4, 3, 2))))
        ['fc1', 'fc2']
    """
    _check_model(model)
    return {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}


def effective_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weight each prunable layer actually uses, masks applied.

    For a layer re-parametrised by ``torch.nn.utils.prune`` this is
    ``weight_orig * weight_mask`` (the ``weight`` attribute); for a plain layer
    it is ``weight``.

    Args:
        model: Any module.

    Returns:
        ``{"<layer>.weight": tensor}`` for every prunable layer.
    """
    return {f"{name}.weight": current_weight(m) for name, m in prunable_layers(model).items()}


def current_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The tensor ``name`` of ``module`` as the next forward pass will use it (detached).

    ``torch.nn.utils.prune`` recomputes a masked layer's ``weight`` attribute
    only in a hook that runs before each forward pass, so right after an
    optimizer step ``module.weight`` still holds the previous step's values.
    This function multiplies ``weight_orig`` by ``weight_mask`` instead, and
    returns the plain parameter for an unmasked layer.

    Args:
        module: A layer, masked or not.
        name: The parameter's name.

    Returns:
        The effective tensor, detached from the autograd graph.

    Example:
        >>> from torch.nn.utils import prune
        >>> layer = prune.custom_from_mask(nn.Linear(2, 1), "weight", torch.tensor([[1.0, 0.0]]))
        >>> with torch.no_grad():
        ...     _ = layer.weight_orig.fill_(3.0)  # as an optimizer step would, no forward since
        >>> current_weight(layer).tolist()
        [[3.0, 0.0]]
        >>> bool((layer.weight == 3.0).any())  # the attribute is stale until the next forward
        False
    """
    mask = getattr(module, f"{name}_mask", None)
    original = getattr(module, f"{name}_orig", None)
    if mask is not None and original is not None:
        return (original * mask).detach()
    return getattr(module, name).detach()


def refresh_masked_weights(model: nn.Module) -> nn.Module:
    """Recompute every masked tensor (``weight = weight_orig * weight_mask``) now.

    Call it after changing ``weight_orig`` or ``weight_mask`` outside a
    forward pass (an optimizer step, ``load_state_dict``, a mask edit), so that
    code reading ``module.weight`` directly sees the current values.

    Args:
        model: Any module; unmasked layers are left alone.

    Returns:
        ``model``, for chaining.
    """
    for module in model.modules():
        for param_name, _ in list(module.named_parameters(recurse=False)):
            base = param_name[: -len("_orig")]
            if param_name.endswith("_orig") and hasattr(module, f"{base}_mask"):
                setattr(module, base, getattr(module, param_name) * getattr(module, f"{base}_mask"))
    return model


def _check_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, nn.Module]:
    if not isinstance(masks, dict):
        raise TypeError(
            f"masks must be a dict of {{layer name: tensor}}, got {type(masks).__name__}"
        )
    layers = prunable_layers(model)
    for name, mask in masks.items():
        if name not in layers:
            raise ValueError(
                f"masks names {name!r}, which is not a prunable layer of the model; layers are {list(layers)}"
            )
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"masks[{name!r}] must be a tensor, got {type(mask).__name__}")
        if mask.shape != layers[name].weight.shape:
            raise ValueError(
                f"masks[{name!r}] has shape {tuple(mask.shape)}, but the weight of {name!r} has shape "
                f"{tuple(layers[name].weight.shape)}"
            )
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"masks[{name!r}] must contain only 0 and 1")
    return layers


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Put masks on the model's layers, replacing any mask a layer already has.

    A layer that is not yet pruned is re-parametrised with
    ``prune.custom_from_mask`` (``weight_orig`` and ``weight_mask`` appear);
    for a layer that is, the mask buffer is overwritten. Masked weights read as
    zero in every forward pass and stay zero through any later training.
    Layers missing from ``masks`` are left as they are.

    Args:
        model: The network, modified in place.
        masks: ``{layer name: 0/1 tensor shaped like its weight}``.

    Returns:
        ``model``, for chaining.

    Raises:
        ValueError: If a name is not a prunable layer, a shape differs, or a
            mask holds values other than 0 and 1.
        TypeError: If ``masks`` is not a dict of tensors.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> _ = apply_masks(net, {"0": torch.tensor([[1.0, 0.0], [0.0, 1.0]])})
        >>> sorted(name for name, _ in net.named_buffers())
        ['0.weight_mask']
    """
    layers = _check_masks(model, masks)
    for name, mask in masks.items():
        module = layers[name]
        mask = mask.to(device=module.weight.device, dtype=module.weight.dtype)
        if prune.is_pruned(module) and hasattr(module, "weight_mask"):
            module.weight_mask.copy_(mask)
            module.weight = module.weight_orig * module.weight_mask
        else:
            prune.custom_from_mask(module, "weight", mask)
    return model


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the masks of every pruned layer, as a mask dict."""
    return {
        name: m.weight_mask.detach().clone()
        for name, m in prunable_layers(model).items()
        if hasattr(m, "weight_mask")
    }


def is_pruned(model: nn.Module) -> bool:
    """Whether any layer of ``model`` carries a ``torch.nn.utils.prune`` mask."""
    return prune.is_pruned(model)


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every mask into its weight (``prune.remove``): pruned weights become plain zeros.

    The model then has ordinary ``weight`` parameters again and a checkpoint
    no longer stores ``weight_orig`` and ``weight_mask``. This cannot be
    undone. Structured zeros can afterwards be cut out by
    :func:`companion.surgery.shrink`.

    Returns:
        ``model``, modified in place.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> _ = apply_masks(net, {"0": torch.ones(2, 2)})
        >>> is_pruned(make_permanent(net))
        False
    """
    for module in model.modules():
        for name in [
            n[: -len("_orig")]
            for n, _ in module.named_parameters(recurse=False)
            if n.endswith("_orig")
        ]:
            prune.remove(module, name)
    return model
