"""Saving and loading models: dense, masked (soft-pruned) and shrunk (hard-pruned).

A companion model file is an ordinary ``torch.save`` archive that holds only
tensors, strings, numbers, lists and dicts, so it loads with
``torch.load(..., weights_only=True)``: opening a file never runs pickled code.
It stores:

* ``"format"`` and ``"version"``, so a foreign file is recognised;
* ``"architecture"``: the class and constructor arguments of the model
  (:class:`companion.models.MLP` with its ``sizes``, or
  :class:`companion.convnets.LeNet5`), which is what makes a *shrunk* model,
  whose widths differ from the original's, loadable without knowing them;
* ``"state_dict"``: every parameter and buffer, including ``weight_orig`` and
  ``weight_mask`` of masked layers, so a soft-pruned model comes back with its
  masks and the values its pruned weights had.

Writes are atomic: the archive goes to a temporary file in the destination's
folder, which then replaces the destination with ``os.replace``. An
interrupted save leaves any previous file untouched and no partial file behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["ModelFileError", "FORMAT", "VERSION", "atomic_write", "save", "load", "architecture"]

FORMAT = "companion-model"
VERSION = 1


class ModelFileError(ValueError):
    """A file is missing, truncated, corrupt or not a companion model file."""


def _as_path(path: str | os.PathLike) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it onto ``path``.

    Args:
        path: The destination; its folder must exist.
        write: Writes the complete file to the path it is given.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: If ``path`` is not a ``str`` or ``os.PathLike``.
        FileNotFoundError: If the destination folder does not exist.
        PermissionError: If the folder is not writable.
        Exception: Whatever ``write`` raises; the temporary file is removed and
            ``path`` keeps its previous content.
    """
    path = _as_path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot save to {path}: the folder {path.parent} does not exist")
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def architecture(model: nn.Module) -> dict[str, Any]:
    """Describe how to rebuild ``model``: its class name and constructor arguments.

    Args:
        model: The model to describe.

    Returns:
        ``{"class": name, <constructor argument>: value, ...}``, made of
        strings, numbers and lists only.

    Raises:
        TypeError: If ``model`` is not a :class:`~companion.models.MLP` or
            :class:`~companion.convnets.LeNet5` (save a plain ``state_dict``
            with ``torch.save`` for other models).

    Example:
        >>> from companion.models import MLP
        >>> architecture(MLP((784, 30, 10)))
        {'class': 'MLP', 'sizes': [784, 30, 10], 'dropout': 0.0}
    """
    from .convnets import LeNet5
    from .models import MLP

    if isinstance(model, MLP):
        return {"class": "MLP", "sizes": list(model.sizes), "dropout": model.dropout_p}
    if isinstance(model, LeNet5):
        return {
            "class": "LeNet5",
            "channels": list(model.channels),
            "hidden": list(model.hidden),
            "num_classes": model.num_classes,
        }
    raise TypeError(
        f"model must be a companion MLP or LeNet5 to be saved with its architecture, got "
        f"{type(model).__name__}; for other models save model.state_dict() with torch.save"
    )


def _build(arch: dict[str, Any]) -> nn.Module:
    from .convnets import LeNet5
    from .models import MLP

    kind = arch.get("class")
    if kind == "MLP":
        return MLP(tuple(arch["sizes"]), dropout=arch["dropout"])
    if kind == "LeNet5":
        return LeNet5(tuple(arch["channels"]), tuple(arch["hidden"]), arch["num_classes"])
    raise ModelFileError(f"unknown architecture {kind!r} in the model file")


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save ``model`` (dense, masked or shrunk) with its architecture, atomically.

    Args:
        model: A :class:`~companion.models.MLP` or :class:`~companion.convnets.LeNet5`,
            pruned with masks or not.
        path: Destination file (conventionally ``*.pt``); its folder must exist.

    Returns:
        The path written.

    Raises:
        TypeError: If ``model`` has no known architecture, or ``path`` is not
            a ``str`` or ``os.PathLike``.
        FileNotFoundError: If the destination folder does not exist.

    Example:
        >>> import tempfile, companion
        >>> net = companion.models.MLP((4, 3, 2))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = save(net, f"{tmp}/net.pt")
        ...     same = load(path)
        >>> all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), same.state_dict().values()))
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "architecture": architecture(model),
        "masked": sorted(
            name for name, module in model.named_modules() if hasattr(module, "weight_mask")
        ),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_archive(path: str | os.PathLike, expected_format: str) -> dict[str, Any]:
    """Load a companion archive with ``weights_only=True`` and check its format tag.

    Args:
        path: The file.
        expected_format: The ``"format"`` entry the archive must carry.

    Returns:
        The archive's dict.

    Raises:
        TypeError: If ``path`` is not a ``str`` or ``os.PathLike``.
        FileNotFoundError: If ``path`` does not exist.
        ModelFileError: If the file is truncated, corrupt, or of another format.
    """
    path = _as_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for damaged archives
        raise ModelFileError(
            f"{path} could not be read as a torch archive ({type(error).__name__}: {error}); "
            "the file is truncated, corrupt or not a saved model: save the model again"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        raise ModelFileError(
            f"{path} is not a {expected_format!r} file (no matching 'format' entry); "
            f"it was not written by companion's save function"
        )
    return payload


def load(path: str | os.PathLike, *, device: str | torch.device | None = None) -> nn.Module:
    """Load a model written by :func:`save`, with its masks, in eval mode.

    Args:
        path: The file.
        device: Where to put the model (default CPU).

    Returns:
        The rebuilt model; masked layers carry ``weight_orig`` and ``weight_mask`` again.

    Raises:
        TypeError: If ``path`` is not a ``str`` or ``os.PathLike``.
        FileNotFoundError: If ``path`` does not exist.
        ModelFileError: If the file is truncated, corrupt, of another format or version.
    """
    from .pruning import apply_masks

    payload = read_archive(path, FORMAT)
    if payload.get("version") != VERSION:
        raise ModelFileError(
            f"{path} has format version {payload.get('version')!r}; this companion reads {VERSION}"
        )
    model = _build(payload["architecture"])
    state = payload["state_dict"]
    masks = {name: state[f"{name}.weight_mask"] for name in payload["masked"]}
    # Re-create the re-parametrisation first, so that weight_orig and weight_mask have a home.
    apply_masks(model, masks)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelFileError(f"{path} does not match its own architecture: {error}") from error
    # load_state_dict fills weight_orig and weight_mask but not the computed ``weight``;
    # applying the masks again recomputes it from the loaded values.
    apply_masks(model, masks)
    return model.to(device or "cpu").eval()
