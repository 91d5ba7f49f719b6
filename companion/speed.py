"""What a model costs to run: FLOPs and measured latency.

Cost is measured, not inferred: FLOPs come from PyTorch's own
``FlopCounterMode`` (which multiplies zeros like any other number, exactly as
a dense kernel does) and latency from ``torch.utils.benchmark``.

Measuring never changes the model: every forward pass runs in eval mode under
``torch.no_grad()`` and each submodule's ``training`` flag is restored
afterwards, so BatchNorm statistics and dropout are left as they were.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from .masks import _check_model
from .table import Table
from .utils import check_positive_int, clone_model

__all__ = ["flops", "latency", "latencies", "latency_by_batch"]


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


def _resolve_shape(
    model: nn.Module, input_shape: Sequence[int] | None, example_input: torch.Tensor | None
) -> tuple[int, ...] | None:
    """The shape of one example: ``input_shape``, else the model's ``example_input_shape``.

    Returns ``None`` when ``example_input`` is given (its own shape is used). There is no silent
    default: a model that is not one of the book's (which declare ``example_input_shape``) needs
    ``input_shape`` or ``example_input``.
    """
    if example_input is not None:
        if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1:
            raise TypeError(
                "example_input must be a torch.Tensor batch [batch, ...], got "
                f"{type(example_input).__name__}"
            )
        if input_shape is not None:
            raise ValueError("pass either input_shape or example_input, not both")
        if example_input.shape[0] < 1:
            raise ValueError("example_input must hold at least one example (batch dimension >= 1)")
        return None
    if input_shape is None:
        input_shape = getattr(model, "example_input_shape", None)
        if input_shape is None:
            raise ValueError(
                f"input_shape is required for a {type(model).__name__}: pass input_shape=(shape of one "
                "example, without the batch dimension) or example_input=<a batch>; only the book's "
                "models (which set example_input_shape) have a default"
            )
    try:
        shape = tuple(int(d) for d in input_shape)
    except TypeError as error:
        raise TypeError(
            f"input_shape must be a sequence of positive ints, got {input_shape!r}"
        ) from error
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"input_shape must be a non-empty sequence of positive ints, got {shape}")
    return shape


def _example_input(
    model: nn.Module,
    input_shape: Sequence[int] | None,
    batch_size: int,
    example_input: torch.Tensor | None = None,
) -> torch.Tensor:
    """A batch of ``batch_size`` inputs: the first example of ``example_input`` repeated, else random."""
    shape = _resolve_shape(model, input_shape, example_input)
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    if shape is None:
        first = example_input[:1].to(device)
        return first.repeat(batch_size, *([1] * (first.dim() - 1)))
    return torch.rand(batch_size, *shape, device=device)


def _forward(model: nn.Module, x: torch.Tensor) -> object:
    """``model(x)``, with a clear error when the input shape does not fit the model."""
    try:
        return model(x)
    except RuntimeError as error:
        raise ValueError(
            f"the model cannot run on inputs of shape {tuple(x.shape)} (batch first); pass the "
            f"input_shape of one example, or example_input=<a batch> ({error})"
        ) from error


def flops(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    batch_size: int = 1,
    *,
    example_input: torch.Tensor | None = None,
) -> int:
    """Floating-point operations of one forward pass, counted by PyTorch.

    ``torch.utils.flop_counter.FlopCounterMode`` counts a matrix product of
    shapes ``(m, k) @ (k, n)`` as ``2 m k n`` FLOPs. Zero weights are counted:
    a dense kernel multiplies them like any other value.

    Args:
        model: The network; it is run in eval mode (BatchNorm statistics and
            every module's ``training`` flag are left as they were).
        input_shape: Shape of one example, without the batch dimension. Defaults to the
            model's ``example_input_shape`` attribute (the book's models set it to
            ``(1, 28, 28)``); any other model needs ``input_shape`` or ``example_input``.
        batch_size: Examples per forward pass.
        example_input: A batch of real inputs, for models whose input is not a float tensor
            of a fixed shape (its first example is repeated ``batch_size`` times).

    Returns:
        Total FLOPs for the batch.

    Raises:
        ValueError: If no input shape is known, both ``input_shape`` and ``example_input``
            are given, or the model cannot run on inputs of that shape.

    Example:
        >>> flops(nn.Linear(784, 10), input_shape=(784,))
        15680
    """
    _check_model(model)
    check_positive_int("batch_size", batch_size)
    x = _example_input(model, input_shape, batch_size, example_input)
    counter = _quiet_import("torch.utils.flop_counter").FlopCounterMode(display=False)
    with _eval_mode(model), torch.no_grad(), counter:
        _forward(model, x)
    return int(counter.get_total_flops())


def latency(
    model: nn.Module,
    batch_size: int = 256,
    *,
    input_shape: Sequence[int] | None = None,
    example_input: torch.Tensor | None = None,
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
        input_shape: Shape of one example (default: the model's ``example_input_shape``;
            see :func:`flops`).
        example_input: A batch of real inputs instead of ``input_shape`` (see :func:`flops`).
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
    x = _example_input(model, input_shape, batch_size, example_input)
    with _eval_mode(model):
        with torch.no_grad():
            _forward(model, x)  # fails clearly on a wrong shape before any timing
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
    input_shape: Sequence[int] | None = None,
    example_input: torch.Tensor | None = None,
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
        input_shape: Shape of one example (default: each model's ``example_input_shape``;
            see :func:`flops`).
        example_input: A batch of real inputs instead of ``input_shape`` (see :func:`flops`).
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
                    example_input=example_input,
                    min_run_time=min_run_time / rounds,
                )
            )
    return {label: float(torch.tensor(times).median()) for label, times in samples.items()}


def latency_by_batch(
    models: Mapping[str, nn.Module],
    batch_sizes: Sequence[int] = (1, 16, 64, 256, 1024),
    *,
    input_shape: Sequence[int] | None = None,
    example_input: torch.Tensor | None = None,
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
        input_shape: Shape of one example (default: each model's ``example_input_shape``;
            see :func:`flops`).
        example_input: A batch of real inputs instead of ``input_shape`` (see :func:`flops`).
        min_run_time: Seconds each measurement runs for (see :func:`latency`).
        device: Where to time the models (see :func:`latencies`).

    Returns:
        A :class:`~companion.table.Table` with columns ``batch``, ``<label>_ms`` per model and
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
        times = latencies(
            models,
            batch_size,
            input_shape=input_shape,
            example_input=example_input,
            min_run_time=min_run_time,
        )
        for label in labels:
            row[f"{label}_ms"] = times[label] * 1e3
        row["speedup"] = row[f"{labels[0]}_ms"] / row[f"{labels[-1]}_ms"]
        rows.append(row)
    formats = {f"{label}_ms": ".3f" for label in labels}
    formats["speedup"] = ".2f"
    return Table(rows, formats)
