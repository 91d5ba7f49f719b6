"""Reproducibility and device helpers.

These are the two calls every chapter makes first: fix every random number
generator the experiments touch, and pick the fastest device available.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["seed_everything", "get_device", "clone_model", "check_in_range", "check_positive_int"]


def check_in_range(
    name: str,
    value: float,
    low: float,
    high: float,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Validate that a number lies in an interval and return it as ``float``.

    Args:
        name: The argument's name, used in the error message.
        value: The value to check.
        low: Lower end of the allowed interval.
        high: Upper end of the allowed interval.
        low_inclusive: Whether ``low`` itself is allowed.
        high_inclusive: Whether ``high`` itself is allowed.

    Returns:
        ``value`` converted to ``float``.

    Raises:
        TypeError: If ``value`` is not a real number (``bool`` is rejected too).
        ValueError: If ``value`` is NaN or outside the interval.

    Example:
        >>> check_in_range("amount", 0.5, 0.0, 1.0)
        0.5
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    left = "[" if low_inclusive else "("
    right = "]" if high_inclusive else ")"
    ok_low = value >= low if low_inclusive else value > low
    ok_high = value <= high if high_inclusive else value < high
    if value != value or not (ok_low and ok_high):
        raise ValueError(f"{name} must be in {left}{low}, {high}{right}, got {value}")
    return value


def check_positive_int(name: str, value: int, *, allow_zero: bool = False) -> int:
    """Validate a positive (or non-negative) integer argument and return it.

    Args:
        name: The argument's name, used in the error message.
        value: The value to check.
        allow_zero: Accept ``0`` as well.

    Returns:
        ``value`` as ``int``.

    Raises:
        TypeError: If ``value`` is not an integer (``bool`` is rejected too).
        ValueError: If ``value`` is negative, or zero when ``allow_zero`` is false.

    Example:
        >>> check_positive_int("epochs", 3)
        3
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    smallest = 0 if allow_zero else 1
    if value < smallest:
        raise ValueError(f"{name} must be an integer >= {smallest}, got {value}")
    return int(value)


def _check_generator(generator: torch.Generator | None) -> None:
    """Raise TypeError unless ``generator`` is ``None`` or a ``torch.Generator``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )


def _check_callable(name: str, value: object) -> None:
    """Raise TypeError unless ``value`` is ``None`` or callable."""
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable or None, got {type(value).__name__}")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and PyTorch (CPU and every CUDA device).

    Args:
        seed: A non-negative integer below ``2**32``.
        deterministic: Also ask PyTorch for deterministic kernels
            (``torch.use_deterministic_algorithms(True)``, cuDNN deterministic
            and non-benchmarking) and set ``CUBLAS_WORKSPACE_CONFIG`` so that
            cuBLAS can honour the request. Deterministic kernels can be slower.
            With ``False`` the flags are reset to PyTorch's defaults.

    Raises:
        TypeError: If ``seed`` is not an int.
        ValueError: If ``seed`` is outside ``[0, 2**32 - 1]``.

    Example:
        >>> seed_everything(0)
        >>> a = torch.rand(2)
        >>> seed_everything(0)
        >>> torch.equal(a, torch.rand(2))
        True
    """
    check_positive_int("seed", seed, allow_zero=True)
    if seed > 2**32 - 1:
        raise ValueError(f"seed must be in [0, 2**32 - 1], got {seed}")
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeding the legacy global generator is the point
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic (CUDA >= 10.2).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = False


def get_device(prefer: str | None = None) -> torch.device:
    """Return the device the book's experiments run on.

    Args:
        prefer: ``"cpu"`` or ``"cuda"`` to force a device, or ``None`` to pick
            CUDA when it is available and the CPU otherwise.

    Returns:
        A :class:`torch.device`.

    Raises:
        ValueError: If ``prefer`` is not ``None``, ``"cpu"`` or ``"cuda"``, or
            ``"cuda"`` is asked for on a machine without CUDA.

    Example:
        >>> get_device("cpu")
        device(type='cpu')
    """
    if prefer is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if prefer not in ("cpu", "cuda"):
        raise ValueError(f"prefer must be None, 'cpu' or 'cuda', got {prefer!r}")
    if prefer == "cuda" and not torch.cuda.is_available():
        raise ValueError("prefer='cuda' but torch.cuda.is_available() is False on this machine")
    return torch.device(prefer)


def clone_model(model: torch.nn.Module) -> torch.nn.Module:
    """Deep-copy a model, including one pruned with ``torch.nn.utils.prune``.

    ``copy.deepcopy`` refuses a pruned module because its ``weight`` attribute
    is a computed (non-leaf) tensor; here that attribute is copied as a
    detached clone (the pruning hook recomputes it at the next forward pass).

    Args:
        model: Any module.

    Returns:
        An independent copy on the same device.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``.

    Example:
        >>> from torch.nn.utils import prune
        >>> layer = prune.l1_unstructured(torch.nn.Linear(4, 2), "weight", amount=0.5)
        >>> twin = clone_model(layer)
        >>> torch.equal(twin.weight, layer.weight) and twin.weight_orig is not layer.weight_orig
        True
    """
    import copy

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    memo: dict[int, object] = {}
    for module in model.modules():
        for name in list(vars(module)):
            value = getattr(module, name, None)
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)
