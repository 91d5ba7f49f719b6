"""companion: the tested code behind the book *Pruning and Knowledge Distillation, Measured*.

Every chapter imports its helpers from here, so that what the book runs is
what the unit tests check::

    import companion as cp

    device = cp.get_device()
    train_set, test_set = cp.load_mnist(device=device)

Sub-modules are imported on first use, so ``import companion`` is cheap and
``python -m companion.data`` runs cleanly.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = (
    "analysis",
    "beyond_logits",
    "convnets",
    "data",
    "deploy",
    "distillation",
    "experiments",
    "io",
    "kernels",
    "lottery",
    "masks",
    "metrics",
    "models",
    "penalties",
    "pruning",
    "recipes",
    "report",
    "saliency",
    "soft",
    "speed",
    "stats",
    "surgery",
    "table",
    "training",
    "utils",
)

#: Short names re-exported at the top level: ``cp.train`` is ``cp.training.train``.
_SHORTCUTS = {
    "load_mnist": "data",
    "iterate_batches": "data",
    "train_val_split": "data",
    "MLP": "models",
    "article_mlp": "models",
    "lenet_300_100": "models",
    "train": "training",
    "evaluate": "training",
    "predict": "training",
    "compare_models": "report",
    "sparsity": "metrics",
    "get_device": "utils",
    "seed_everything": "utils",
    "book_seeds": "utils",
    "summarize": "stats",
    "paired_difference": "stats",
    "over_seeds": "stats",
}

__all__ = [*_SUBMODULES, *_SHORTCUTS]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _SHORTCUTS:
        return getattr(importlib.import_module(f"{__name__}.{_SHORTCUTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
