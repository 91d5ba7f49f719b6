"""Saving and loading models: dense, masked (soft-pruned) and shrunk (hard-pruned), any module.

A companion model file is an ordinary ``torch.save`` archive that holds only
tensors, strings, numbers, lists and dicts, so it loads with
``torch.load(..., weights_only=True)``: opening a file never runs pickled code.
It stores:

* ``"format"`` and ``"version"``, so a foreign file is recognised;
* ``"architecture"``: the class and constructor arguments of the model
  (:class:`companion.models.MLP` with its ``sizes``, or
  :class:`companion.convnets.LeNet5`), which is what makes a *shrunk* model,
  whose widths differ from the original's, loadable without knowing them. Any
  other :class:`torch.nn.Module` is stored with ``{"class": "<module>.<name>",
  "rebuildable": False}``: its code is not in the file, so it loads into an
  instance the caller builds (``load(path, model=instance)``);
* ``"masked"``: the layers whose ``weight`` carries a ``torch.nn.utils.prune``
  mask, and for other modules ``"masked_parameters"``, every masked parameter
  by qualified name (``"0.weight"``, ``"block.conv.bias"``);
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


def _masked_parameters(model: nn.Module) -> list[str]:
    """Qualified names of the parameters that carry a ``torch.nn.utils.prune`` mask, sorted.

    A masked parameter ``p`` of module ``m`` is stored as ``m.p_orig`` beside the buffer
    ``m.p_mask``; its name here is ``"m.p"`` (``"p"`` for the root module).
    """
    names = []
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            base = param_name[: -len("_orig")]
            if param_name.endswith("_orig") and isinstance(
                getattr(module, f"{base}_mask", None), torch.Tensor
            ):
                names.append(f"{module_name}.{base}" if module_name else base)
    return sorted(names)


def _class_name(model: nn.Module) -> str:
    kind = type(model)
    return f"{kind.__module__}.{kind.__qualname__}"


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    state = {}
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"model's state_dict entry {key!r} is a {type(value).__name__}, not a tensor; "
                "a companion model file holds tensors only (it loads with weights_only=True)"
            )
        state[key] = value.detach().cpu().clone()
    return state


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save ``model`` (dense, masked or shrunk, any module) atomically.

    A :class:`~companion.models.MLP` or :class:`~companion.convnets.LeNet5` is
    saved with its architecture, so :func:`load` rebuilds it from the file
    alone. Any other module is saved with its state dict (masks included:
    ``weight_orig``, ``weight_mask`` and the list of masked parameters) and
    its class name; :func:`load` then restores it into an instance you pass
    as ``model=``.

    Args:
        model: The model, pruned with masks or not.
        path: Destination file (conventionally ``*.pt``); its folder must exist.

    Returns:
        The path written.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``, its state dict holds
            something other than tensors, or ``path`` is not a ``str`` or
            ``os.PathLike``.
        FileNotFoundError: If the destination folder does not exist.

    Example:
        >>> import tempfile, companion
        >>> net = companion.models.MLP((4, 3, 2))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = save(net, f"{tmp}/net.pt")
        ...     same = load(path)
        >>> all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), same.state_dict().values()))
        True
        >>> mine = nn.Sequential(nn.Linear(4, 2))  # not one of the book's architectures
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = save(mine, f"{tmp}/mine.pt")
        ...     again = load(path, model=nn.Sequential(nn.Linear(4, 2)))
        >>> torch.equal(again[0].weight, mine[0].weight)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    from .convnets import LeNet5
    from .models import MLP

    # Exactly the book's classes: a subclass may add modules or change forward, which the
    # rebuilt base class would not have.
    if type(model) in (MLP, LeNet5):
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "architecture": architecture(model),
            "masked": sorted(
                name for name, module in model.named_modules() if hasattr(module, "weight_mask")
            ),
            # Every masked parameter, biases too (structured pruning masks a dead unit's bias);
            # "masked" above stays for older companions, which know weight masks only.
            "masked_parameters": _masked_parameters(model),
            "state_dict": _cpu_state(model),
        }
    else:
        payload = {
            "format": FORMAT,
            "version": VERSION,
            # A "class" that no companion builds: an older companion's load refuses it by name.
            "architecture": {"class": _class_name(model), "rebuildable": False},
            "masked_parameters": _masked_parameters(model),
            "state_dict": _cpu_state(model),
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


def _file_masked_parameters(payload: dict[str, Any]) -> list[str]:
    """The masked parameters a file records, in either form (book architecture or any module)."""
    if "masked_parameters" in payload:
        return list(payload["masked_parameters"])
    return [f"{name}.weight" if name else "weight" for name in payload.get("masked", [])]


def _split(qualified: str) -> tuple[str, str]:
    module_name, _, param = qualified.rpartition(".")
    return module_name, param


def _key_mismatch(
    model: nn.Module, state: dict[str, torch.Tensor], file_masked: list[str]
) -> tuple[list[str], list[str], list[str]]:
    """Compare the file's keys with the keys ``model`` will have once its masks match the file's.

    Returns the missing keys (the model has them, the file does not), the unexpected ones
    (the reverse) and the shape mismatches, without changing ``model``.
    """
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    model_masked = set(_masked_parameters(model))
    for name in file_masked:
        if name in model_masked:
            continue
        # The model holds the plain parameter; after masking it holds name_orig and name_mask.
        shape = expected.pop(name, None)
        if shape is not None:
            expected[f"{name}_orig"] = expected[f"{name}_mask"] = shape
    for name in model_masked - set(file_masked):
        # The file holds the plain parameter; the model's mask is removed before loading.
        shape = expected.pop(f"{name}_orig")
        expected.pop(f"{name}_mask", None)
        expected[name] = shape
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{key} (file {tuple(state[key].shape)}, model {expected[key]})"
        for key in set(expected) & set(state)
        if tuple(state[key].shape) != expected[key]
    )
    return missing, unexpected, shapes


@torch.no_grad()
def _restore_into(
    model: nn.Module, state: dict[str, torch.Tensor], file_masked: list[str], label: str
) -> nn.Module:
    """Make ``model``'s masks those of the file, then load every tensor (strict keys)."""
    from torch.nn.utils import prune

    missing, unexpected, shapes = _key_mismatch(model, state, file_masked)
    if missing or unexpected or shapes:
        details = [
            f"{what}: {', '.join(keys[:12])}{' ...' if len(keys) > 12 else ''}"
            for what, keys in (
                ("missing keys (in model, not in the file)", missing),
                ("unexpected keys (in the file, not in model)", unexpected),
                ("shape mismatches", shapes),
            )
            if keys
        ]
        raise ValueError(f"model does not match {label}; nothing was loaded. " + ". ".join(details))
    model_masked = set(_masked_parameters(model))
    for name in sorted(model_masked - set(file_masked)):
        module_name, param = _split(name)
        prune.remove(model.get_submodule(module_name), param)  # the file's value replaces it
    for name in file_masked:
        if name not in model_masked:
            module_name, param = _split(name)
            module = model.get_submodule(module_name)
            mask = state[f"{name}_mask"].to(getattr(module, param).device)
            prune.custom_from_mask(module, param, mask)
    model.load_state_dict(state, strict=True)
    # load_state_dict fills p_orig and p_mask but not the computed p; recompute it now.
    for name in file_masked:
        module_name, param = _split(name)
        module = model.get_submodule(module_name)
        setattr(module, param, getattr(module, f"{param}_orig") * getattr(module, f"{param}_mask"))
    return model


def load(
    path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    model: nn.Module | None = None,
) -> nn.Module:
    """Load a model written by :func:`save`, with its masks, in eval mode.

    Without ``model`` the file must hold one of the book's architectures,
    which is rebuilt. With ``model`` the file's weights and masks are restored
    into that instance (any module, also for a file of the book's
    architectures): parameters masked in the file are masked in the instance
    (``torch.nn.utils.prune.custom_from_mask``), masks the instance has and
    the file has not are removed, and every key must match (strict). A
    mismatch is reported before anything is changed.

    Args:
        path: The file.
        device: Where to put the model (default: CPU for a rebuilt model,
            where it already is for ``model``).
        model: An instance of the saved model's class to restore into, in place.

    Returns:
        The rebuilt model, or ``model`` itself; masked layers carry
        ``weight_orig`` and ``weight_mask`` again.

    Raises:
        TypeError: If ``path`` is not a ``str`` or ``os.PathLike`` or
            ``model`` is not an ``nn.Module``.
        FileNotFoundError: If ``path`` does not exist.
        ModelFileError: If the file is truncated, corrupt, of another format or version.
        ValueError: If the file holds a model that is not one of the book's
            architectures and no ``model`` is given, or ``model``'s keys or
            shapes do not match the file (the message lists them).
    """
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
    payload = read_archive(path, FORMAT)
    if payload.get("version") != VERSION:
        raise ModelFileError(
            f"{path} has format version {payload.get('version')!r}; this companion reads {VERSION}"
        )
    arch = payload.get("architecture")
    if not isinstance(arch, dict) or "state_dict" not in payload:
        raise ModelFileError(
            f"{path} has no architecture or state_dict entry; save the model again"
        )
    state = payload["state_dict"]
    if model is not None:
        _restore_into(
            model, state, _file_masked_parameters(payload), f"{path} ({arch.get('class')})"
        )
        if device is not None:
            model.to(device)
        return model.eval()
    if arch.get("rebuildable") is False:
        short = str(arch.get("class")).rsplit(".", 1)[-1]
        raise ValueError(
            f"{path} holds a {arch.get('class')}, which is not one of the book's architectures "
            f"and cannot be rebuilt from the file; build one and pass it: "
            f"load(path, model={short}(...))"
        )
    rebuilt = _build(arch)
    try:
        # The same restore as for an instance: every masked parameter (weights, and biases of
        # structurally pruned units) is re-parametrised first, then every tensor is loaded.
        _restore_into(
            rebuilt, state, _file_masked_parameters(payload), f"{path} ({arch.get('class')})"
        )
    except (RuntimeError, ValueError) as error:
        raise ModelFileError(f"{path} does not match its own architecture: {error}") from error
    return rebuilt.to(device or "cpu").eval()
