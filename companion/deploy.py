"""Quantisation and export: the last steps before a model leaves the notebook.

* :func:`quantize_dynamic_int8` applies PyTorch's post-training *dynamic*
  quantisation: ``nn.Linear`` weights are stored as int8 (one scale per
  tensor) and activations are quantised on the fly at inference time.
* :func:`export_torchscript` / :func:`load_exported` write a self-contained
  TorchScript file that runs without the model's Python class (e.g. from C++ or
  on a phone with PyTorch's mobile runtime) and read it back;
  :func:`check_export` compares the exported file with a reference model,
  normally the float model before quantisation.

Both APIs are marked deprecated in recent PyTorch releases (in favour of
``torchao`` and ``torch.export``) but remain the ones shipped with PyTorch
itself; their deprecation warnings are silenced here, locally, so that the
book's outputs stay readable.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .io import atomic_write
from .pruning import make_permanent
from .utils import clone_model

__all__ = ["quantize_dynamic_int8", "export_torchscript", "load_exported", "check_export"]


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _without_masks(model: nn.Module) -> nn.Module:
    """A CPU copy of ``model`` in eval mode with any pruning masks folded in."""
    return make_permanent(clone_model(model).cpu().eval())


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """Return a CPU copy of ``model`` whose ``nn.Linear`` layers use int8 weights.

    Masks from ``torch.nn.utils.prune`` are folded in first (on the copy);
    the original model is not modified. Convolutions stay in float32 (dynamic
    quantisation covers linear and recurrent layers only).

    Args:
        model: A trained model.

    Returns:
        The quantised model, in eval mode, on the CPU (PyTorch's quantised
        kernels are CPU kernels).

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``.
        ValueError: If ``model`` has no ``nn.Linear`` layer to quantise.

    Example:
        >>> q = quantize_dynamic_int8(nn.Sequential(nn.Linear(4, 2)))
        >>> type(q[0]).__name__
        'Linear'
        >>> q[0].weight().dtype
        torch.qint8
    """
    _check_model(model)
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise ValueError(
            "model has no nn.Linear layer; dynamic int8 quantisation would change nothing"
        )
    plain = _without_masks(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(plain, {nn.Linear}, dtype=torch.qint8)


def export_torchscript(
    model: nn.Module, path: str | os.PathLike, example_input: torch.Tensor
) -> Path:
    """Trace ``model`` on ``example_input`` and save it as a TorchScript file, atomically.

    Args:
        model: The model to export (masks are folded into a copy first; the
            export runs on the CPU).
        path: Destination file (conventionally ``*.pt``).
        example_input: One representative input batch.

    Returns:
        The path written.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``, ``example_input``
            is not a tensor, or ``path`` is not a ``str`` or ``os.PathLike``.
        FileNotFoundError: If the destination folder does not exist.
    """
    _check_model(model)
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    plain = _without_masks(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(plain, example_input.cpu())
        return atomic_write(path, lambda tmp: torch.jit.save(traced, tmp))


def load_exported(path: str | os.PathLike) -> torch.jit.ScriptModule:
    """Load a file written by :func:`export_torchscript` (on the CPU, in eval mode).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not a TorchScript archive.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported model at {path}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as exc:
            raise ValueError(
                f"{path} is not a TorchScript file written by export_torchscript: {exc}"
            ) from exc
    return module.eval()


@torch.no_grad()
def check_export(
    reference: nn.Module, path: str | os.PathLike, inputs: torch.Tensor
) -> dict[str, float]:
    """Compare an exported file's outputs with a *reference* model's on ``inputs`` (on the CPU).

    Pass the model the export is meant to stand in for, usually the float
    model before quantisation. Comparing the file with the very model that was
    exported only tests TorchScript's round trip (agreement is then 100% by
    construction); comparing it with the float model measures what
    quantisation and export together change.

    Args:
        reference: The model to compare against (masks are folded into a copy).
        path: The exported file (:func:`export_torchscript`).
        inputs: A batch of inputs.

    Returns:
        A dict with ``"max_abs_diff"`` (largest absolute difference between
        the file's and the reference's outputs, i.e. logits) and
        ``"agreement"`` (fraction of inputs with the same predicted class).

    Raises:
        TypeError: If ``reference`` is not an ``nn.Module`` or ``inputs`` is not a tensor.
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If ``path`` is not a TorchScript file.
    """
    _check_model(reference)
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    exported = load_exported(path)
    plain = _without_masks(reference)
    x = inputs.cpu()
    expected, actual = plain(x), exported(x)
    return {
        "max_abs_diff": float((expected - actual).abs().max()),
        "agreement": float((expected.argmax(1) == actual.argmax(1)).float().mean()),
    }
