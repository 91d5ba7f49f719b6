"""Measuring models: parameters, zeros, bytes, FLOPs and latency.

These are the columns of every results table in the book. Two rules keep the
numbers honest:

* zeros are counted where they really are: for a layer pruned with
  ``torch.nn.utils.prune`` the *effective* weight ``weight_orig * weight_mask``
  is what counts, not the stored ``weight_orig``;
* cost is measured, not inferred: FLOPs come from PyTorch's own
  ``FlopCounterMode`` (which multiplies zeros like any other number, exactly as
  a dense kernel does) and latency from ``torch.utils.benchmark``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .stats import Summary
from .utils import check_positive_int, clone_model

__all__ = [
    "PRUNABLE_TYPES",
    "prunable_layers",
    "effective_weights",
    "count_parameters",
    "count_nonzero",
    "sparsity",
    "layer_sparsity",
    "model_bytes",
    "compressed_bytes",
    "flops",
    "latency",
    "Table",
    "compare_models",
    "latency_by_batch",
    "latencies",
]

#: Layer types whose ``weight`` the book prunes.
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _quiet_import(module: str):
    """Import a torch utility without its "No CUDA runtime is found" log line.

    ``torch.utils.benchmark`` and ``flop_counter`` import ``cpp_extension``,
    which logs that warning on CPU-only machines with a CUDA build of PyTorch;
    it is noise for the book's readers. The logger's level is restored.
    """
    import importlib

    logger = logging.getLogger("torch.utils.cpp_extension")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return importlib.import_module(module)
    finally:
        logger.setLevel(previous)


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


def _packed_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Weight and bias of a dynamically quantised layer, which stores them packed, not as parameters."""
    if not hasattr(module, "_packed_params") or not callable(getattr(module, "weight", None)):
        return []
    tensors = [module.weight().dequantize()]
    bias = module.bias() if callable(getattr(module, "bias", None)) else None
    if bias is not None:
        tensors.append(bias.detach())
    return tensors


def count_parameters(model: nn.Module) -> int:
    """Number of weight and bias values the model holds (masks are buffers, not counted).

    A pruned-but-not-shrunk model has as many parameters as the dense one;
    use :func:`count_nonzero` for the weights that survive. The packed int8
    weights of dynamically quantised layers are counted too.

    Example:
        >>> count_parameters(nn.Linear(3, 2))
        8
    """
    _check_model(model)
    packed = sum(t.numel() for m in model.modules() for t in _packed_tensors(m))
    return sum(p.numel() for p in model.parameters()) + packed


def _effective_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Every parameter as the forward pass sees it (masked where masked)."""
    tensors = []
    for module in model.modules():
        tensors.extend(_packed_tensors(module))
        for name, param in module.named_parameters(recurse=False):
            if name.endswith("_orig") and hasattr(module, name[: -len("_orig")]):
                tensors.append(current_weight(module, name[: -len("_orig")]))
            else:
                tensors.append(param.detach())
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
        ``{"exact_zeros": fraction == 0, "near_zero": fraction with |w| < small,
        "mean_abs_w": mean |w|}``.

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


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode, then restore every submodule's own ``training`` flag.

    A forward pass in train mode updates BatchNorm running statistics (and draws dropout masks),
    so a measurement in train mode would change the model it was asked to measure.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def _example_input(model: nn.Module, input_shape: Sequence[int], batch_size: int) -> torch.Tensor:
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    return torch.rand(batch_size, *input_shape, device=device)


def flops(model: nn.Module, input_shape: Sequence[int] = (1, 28, 28), batch_size: int = 1) -> int:
    """Floating-point operations of one forward pass, counted by PyTorch.

    ``torch.utils.flop_counter.FlopCounterMode`` counts a matrix product of
    shapes ``(m, k) @ (k, n)`` as ``2 m k n`` FLOPs. Zero weights are counted:
    a dense kernel multiplies them like any other value.

    Args:
        model: The network; it is run in eval mode (BatchNorm statistics and
            every module's ``training`` flag are left as they were).
        input_shape: Shape of one example, without the batch dimension.
        batch_size: Examples per forward pass.

    Returns:
        Total FLOPs for the batch.

    Example:
        >>> flops(nn.Linear(784, 10), input_shape=(784,))
        15680
    """
    _check_model(model)
    check_positive_int("batch_size", batch_size)
    x = _example_input(model, input_shape, batch_size)
    counter = _quiet_import("torch.utils.flop_counter").FlopCounterMode(display=False)
    with _eval_mode(model), torch.no_grad(), counter:
        model(x)
    return int(counter.get_total_flops())


def latency(
    model: nn.Module,
    batch_size: int = 256,
    *,
    input_shape: Sequence[int] = (1, 28, 28),
    num_threads: int | None = None,
    min_run_time: float = 0.2,
    warmup: int = 5,
) -> float:
    """Median wall-clock seconds of one forward pass, measured with ``torch.utils.benchmark``.

    The model runs in eval mode under ``torch.no_grad()``; a few warm-up calls
    come first, then ``Timer.blocked_autorange`` repeats the call for at least
    ``min_run_time`` seconds and the median is returned. On CUDA the timer
    synchronises the device.

    Args:
        model: The network.
        batch_size: Examples per forward pass.
        input_shape: Shape of one example.
        num_threads: CPU threads for the measurement (default: PyTorch's
            current setting, i.e. what the book's training uses).
        min_run_time: Seconds of repeated measurement, > 0.
        warmup: Untimed calls before measuring, >= 0.

    Returns:
        The median time per call in seconds.
    """
    _check_model(model)
    check_positive_int("batch_size", batch_size)
    check_positive_int("warmup", warmup, allow_zero=True)
    if not min_run_time > 0:
        raise ValueError(f"min_run_time must be > 0 seconds, got {min_run_time}")
    threads = (
        torch.get_num_threads()
        if num_threads is None
        else check_positive_int("num_threads", num_threads)
    )
    x = _example_input(model, input_shape, batch_size)
    with _eval_mode(model):
        with torch.no_grad():
            for _ in range(warmup):
                model(x)
        timer = _quiet_import("torch.utils.benchmark").Timer(
            stmt="with torch.no_grad(): model(x)",
            globals={"model": model, "x": x, "torch": torch},
            num_threads=threads,
        )
        return float(timer.blocked_autorange(min_run_time=min_run_time).median)


def _copies_on(
    models: Mapping[str, nn.Module], device: str | torch.device | None
) -> Mapping[str, nn.Module]:
    """``models`` unchanged for ``device=None``, else independent copies moved to ``device``."""
    if device is None:
        return models
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"device must be None, a torch.device or a device string such as 'cpu' or 'cuda', "
            f"got {device!r}"
        ) from error
    return {label: clone_model(model).to(target) for label, model in models.items()}


def latencies(
    models: Mapping[str, nn.Module],
    batch_size: int = 256,
    *,
    input_shape: Sequence[int] = (1, 28, 28),
    min_run_time: float = 1.0,
    rounds: int = 5,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Median forward-pass latency of several models, measured in interleaved rounds.

    Measuring one model after another lets a burst of background load land on
    one of them only and distort their ratio. Here every round measures every
    model for ``min_run_time / rounds`` seconds (with :func:`latency`), and each
    model's result is the median over the rounds, so slow moments affect all
    models alike.

    Args:
        models: ``{label: model}``.
        batch_size: Batch size of the forward pass, >= 1.
        input_shape: Shape of one example.
        min_run_time: Total seconds of measurement per model, > 0.
        rounds: Number of interleaved rounds, >= 1.
        device: Where to time the models: copies are moved there, the models
            themselves stay where they are. ``None`` times each model where
            it is (on a GPU, a small MLP's latency is launch overhead, so the
            book passes ``"cpu"`` for claims about CPU speed).

    Returns:
        ``{label: median seconds per forward pass}``.

    Raises:
        ValueError: If ``models`` is empty, a number is out of range or
            ``device`` is not a device.

    Example:
        >>> times = latencies({"a": nn.Linear(4, 2), "b": nn.Linear(4, 8)}, 8, input_shape=(4,), min_run_time=0.02)
        >>> sorted(times), all(t > 0 for t in times.values())
        (['a', 'b'], True)
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty mapping of {label: model}")
    check_positive_int("rounds", rounds)
    if not min_run_time > 0:
        raise ValueError(f"min_run_time must be > 0 seconds, got {min_run_time}")
    models = _copies_on(models, device)
    samples: dict[str, list[float]] = {label: [] for label in models}
    for _ in range(rounds):
        for label, model in models.items():
            samples[label].append(
                latency(
                    model,
                    batch_size,
                    input_shape=input_shape,
                    min_run_time=min_run_time / rounds,
                )
            )
    return {label: float(torch.tensor(times).median()) for label, times in samples.items()}


@dataclass(repr=False)
class Table:
    """A small results table that prints as text and renders as HTML in notebooks.

    Args:
        rows: One mapping per row; the keys of the first row are the columns.
        formats: Optional ``{column: format spec}``, e.g. ``{"accuracy": ".2%"}``; a
            :class:`companion.stats.Summary` cell prints as ``97.71 ± 0.06% (n=5)``.

    Example:
        >>> print(Table([{"model": "a", "params": 10}, {"model": "bb", "params": 2}]))
        model  params
        a          10
        bb          2
    """

    rows: list[dict[str, object]]
    formats: dict[str, str] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return list(self.rows[0]) if self.rows else []

    def _cell(self, column: str, value: object) -> str:
        if value is None:
            return "n/a"
        spec = self.formats.get(column)
        if spec is not None and isinstance(value, (int, float, Summary)):
            return format(value, spec)  # a Summary prints "mean ± half-width (n=...)"
        if isinstance(value, Summary):
            return str(value)
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    def _grid(self) -> list[list[str]]:
        return [[self._cell(c, row.get(c, "")) for c in self.columns] for row in self.rows]

    def __str__(self) -> str:
        grid = [self.columns, *self._grid()]
        widths = [max(len(r[i]) for r in grid) for i in range(len(self.columns))]
        numeric = [
            all(isinstance(row.get(c), (int, float, Summary)) for row in self.rows)
            for c in self.columns
        ]
        lines = []
        for r in grid:
            cells = [
                cell.rjust(w) if is_num else cell.ljust(w)
                for cell, w, is_num in zip(r, widths, numeric, strict=True)
            ]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{c}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{v}</td>" for v in r) + "</tr>" for r in self._grid())
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def column(self, name: str) -> list[object]:
        """All values of one column, in row order."""
        if name not in self.columns:
            raise KeyError(f"no column {name!r}; columns are {self.columns}")
        return [row[name] for row in self.rows]

    def row(self, key: object, column: str | None = None) -> dict[str, object]:
        """The first row whose first (or given) column equals ``key``."""
        column = column or self.columns[0]
        for r in self.rows:
            if r.get(column) == key:
                return r
        raise KeyError(f"no row with {column}={key!r}")


def latency_by_batch(
    models: Mapping[str, nn.Module],
    batch_sizes: Sequence[int] = (1, 16, 64, 256, 1024),
    *,
    input_shape: Sequence[int] = (1, 28, 28),
    min_run_time: float = 1.0,
    device: str | torch.device | None = None,
) -> Table:
    """Median forward-pass latency of several models at several batch sizes.

    Speedups from smaller models depend strongly on the batch size: at batch 1
    the fixed overhead of each call dominates, at large batches the
    arithmetic does. One row per batch size, one ``<label>_ms`` column per
    model, and ``speedup`` = first model's latency / last model's latency.

    Args:
        models: ``{label: model}``; the first is the baseline of ``speedup``,
            the last the model compared with it.
        batch_sizes: Positive batch sizes, one row each.
        input_shape: Shape of one example.
        min_run_time: Seconds each measurement runs for (see :func:`latency`).
        device: Where to time the models (see :func:`latencies`).

    Returns:
        A :class:`Table` with columns ``batch``, ``<label>_ms`` per model and
        ``speedup``.

    Raises:
        ValueError: If ``models`` is empty or a batch size is not a positive int.

    Example:
        >>> table = latency_by_batch({"a": nn.Linear(4, 2)}, [1, 8], input_shape=(4,), min_run_time=0.01)
        >>> [row["batch"] for row in table.rows], table.columns
        ([1, 8], ['batch', 'a_ms', 'speedup'])
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty mapping of {label: model}")
    for batch_size in batch_sizes:
        check_positive_int("batch_sizes", batch_size)
    labels = list(models)
    models = _copies_on(models, device)  # copy once, not once per batch size
    rows = []
    for batch_size in batch_sizes:
        row: dict[str, object] = {"batch": batch_size}
        times = latencies(models, batch_size, input_shape=input_shape, min_run_time=min_run_time)
        for label in labels:
            row[f"{label}_ms"] = times[label] * 1e3
        row["speedup"] = row[f"{labels[0]}_ms"] / row[f"{labels[-1]}_ms"]
        rows.append(row)
    formats = {f"{label}_ms": ".3f" for label in labels}
    formats["speedup"] = ".2f"
    return Table(rows, formats)


def compare_models(
    models: Mapping[str, nn.Module],
    dataset: TensorDataset | None = None,
    *,
    batch_size: int = 256,
    input_shape: Sequence[int] = (1, 28, 28),
    measure_latency: bool = True,
    min_run_time: float = 0.2,
    latency_device: str | torch.device | None = None,
) -> Table:
    """One row per model: accuracy, parameters, nonzeros, bytes, FLOPs, latency.

    Args:
        models: ``{label: model}`` in the order the rows should appear.
        dataset: If given, test accuracy and error count are measured on it.
        batch_size: Batch size of the FLOP count and the latency measurement.
        input_shape: Shape of one example.
        measure_latency: Skip the (slowest) latency column when false.
        min_run_time: Seconds of latency measurement per model, spread over
            interleaved rounds (see :func:`latencies`); raise it for steadier
            medians.
        latency_device: Where to time the models (see ``device`` in
            :func:`latencies`); accuracy is always measured where the models are.

    Returns:
        A :class:`Table` with columns ``model``, ``accuracy``, ``errors``
        (when ``dataset`` is given), ``params``, ``nonzero``, ``bytes``,
        ``zlib_bytes``, ``MFLOPs`` (per batch; ``None``, shown as "n/a", for
        int8 models, whose integer kernels ``FlopCounterMode`` does not count)
        and ``latency_ms``.
    """
    from .training import evaluate

    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty mapping of {label: model}")
    rows = []
    for label, model in models.items():
        row: dict[str, object] = {"model": label}
        if dataset is not None:
            result = evaluate(model, dataset)
            row["accuracy"] = result["accuracy"]
            row["errors"] = result["errors"]
        row["params"] = count_parameters(model)
        row["nonzero"] = count_nonzero(model)
        row["bytes"] = model_bytes(model)
        row["zlib_bytes"] = compressed_bytes(model)
        counted = flops(model, input_shape, batch_size)
        # FlopCounterMode counts floating-point kernels only; int8 layers would read as 0.
        quantized = any(_packed_tensors(m) for m in model.modules())
        row["MFLOPs"] = None if quantized and counted == 0 else counted / 1e6
        rows.append(row)
    if measure_latency:
        # Interleaved rounds, so that background load does not favour one model.
        times = latencies(
            models,
            batch_size,
            input_shape=input_shape,
            min_run_time=min_run_time,
            device=latency_device,
        )
        for row in rows:
            row["latency_ms"] = times[row["model"]] * 1e3
    return Table(rows, formats={"accuracy": ".2%", "MFLOPs": ".2f", "latency_ms": ".3f"})
