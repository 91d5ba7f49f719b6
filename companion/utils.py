"""Reproducibility and device helpers.

These are the two calls every chapter makes first: fix every random number
generator the experiments touch, and pick the fastest device available.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = [
    "SEED_BASE_ENV",
    "seed_base",
    "actual_seed",
    "book_seeds",
    "make_generator",
    "seed_everything",
    "get_device",
    "clone_model",
    "check_in_range",
    "check_positive_int",
]

#: Environment variable that shifts every seed the book uses (default 0).
SEED_BASE_ENV = "COMPANION_SEED_BASE"
_MAX_SEED = 2**32 - 1


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


def seed_base() -> int:
    """The shift that ``COMPANION_SEED_BASE`` applies to every seed (0 when unset).

    Every seed argument in ``companion`` (``seed_everything``, ``train``'s
    shuffling seed, ``make_generator``, ``train_val_split``) is a *logical*
    seed; the random number generators receive ``seed + seed_base()``. Setting
    ``COMPANION_SEED_BASE=1000`` therefore re-runs the whole book on a disjoint
    set of seeds without editing a notebook (``make robust``).

    Returns:
        The integer read from the environment at call time.

    Raises:
        ValueError: If the variable is set but is not an integer in
            ``[0, 2**31]``.

    Example:
        >>> import os
        >>> os.environ.pop("COMPANION_SEED_BASE", None) and None
        >>> seed_base()
        0
    """
    raw = os.environ.get(SEED_BASE_ENV, "").strip()
    if not raw:
        return 0
    try:
        base = int(raw)
    except ValueError:
        raise ValueError(
            f"{SEED_BASE_ENV} must be an integer in [0, 2**31], got {raw!r}; unset it for the "
            "book's own seeds"
        ) from None
    if not 0 <= base <= 2**31:
        raise ValueError(f"{SEED_BASE_ENV} must be an integer in [0, 2**31], got {base}")
    return base


def actual_seed(seed: int, name: str = "seed") -> int:
    """The seed a random number generator receives for logical ``seed``: ``seed + seed_base()``.

    Args:
        seed: A logical seed, an integer >= 0.
        name: The argument's name for error messages.

    Returns:
        ``seed + seed_base()``.

    Raises:
        TypeError: If ``seed`` is not an int.
        ValueError: If ``seed`` is negative or the shifted seed exceeds ``2**32 - 1``.

    Example:
        >>> actual_seed(3) == 3 + seed_base()
        True
    """
    check_positive_int(name, seed, allow_zero=True)
    shifted = int(seed) + seed_base()
    if shifted > _MAX_SEED:
        raise ValueError(
            f"{name} must be in [0, 2**32 - 1] after adding {SEED_BASE_ENV}={seed_base()}, "
            f"got {seed}"
        )
    return shifted


def book_seeds(n: int) -> list[int]:
    """The book's seeds for an experiment repeated ``n`` times: ``[0, 1, ..., n - 1]``.

    They are logical seeds: ``seed_everything``, ``train`` and
    ``make_generator`` add ``COMPANION_SEED_BASE`` when they use them, so a
    shifted run needs no change in the caller.

    Args:
        n: How many seeds, >= 1.

    Returns:
        A list of ``n`` distinct seeds.

    Raises:
        TypeError, ValueError: If ``n`` is not a positive int.

    Example:
        >>> book_seeds(3)
        [0, 1, 2]
    """
    return list(range(check_positive_int("n", n)))


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` seeded with ``actual_seed(seed)`` (for random masks and splits).

    Args:
        seed: A logical seed, an integer >= 0.
        device: The generator's device.

    Returns:
        The seeded generator.

    Raises:
        TypeError, ValueError: As :func:`actual_seed`.

    Example:
        >>> a = torch.rand(2, generator=make_generator(7))
        >>> torch.equal(a, torch.rand(2, generator=make_generator(7)))
        True
    """
    return torch.Generator(device=device).manual_seed(actual_seed(seed))


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and PyTorch (CPU and every CUDA device) with ``actual_seed(seed)``.

    Args:
        seed: A logical seed, a non-negative integer; the generators receive
            ``seed + COMPANION_SEED_BASE`` (see :func:`seed_base`).
        deterministic: Also ask PyTorch for deterministic kernels
            (``torch.use_deterministic_algorithms(True)``, cuDNN deterministic
            and non-benchmarking) and set ``CUBLAS_WORKSPACE_CONFIG`` so that
            cuBLAS can honour the request. Deterministic kernels can be slower.
            With ``False`` the flags are reset to PyTorch's defaults.

    Raises:
        TypeError: If ``seed`` is not an int.
        ValueError: If ``seed`` is negative or the shifted seed exceeds ``2**32 - 1``.

    Example:
        >>> seed_everything(0)
        >>> a = torch.rand(2)
        >>> seed_everything(0)
        >>> torch.equal(a, torch.rand(2))
        True
    """
    seed = actual_seed(seed)
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
