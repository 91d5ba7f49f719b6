"""Results tables: :func:`compare_models` for a chapter's measured table, :func:`headline` for the front page.

:func:`compare_models` puts what a model holds (:mod:`companion.metrics`), what
it costs to run (:mod:`companion.speed`) and its accuracy side by side.

A chapter ends with one :func:`headline` call. In the notebook it shows a
small table; in the stored notebook it also leaves a machine-readable copy
(MIME type ``HEADLINE_MIME``) from which the intro page's results table is
generated, so the front page never carries a number typed by hand.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .metrics import (
    compressed_bytes,
    count_nonzero,
    count_parameters,
    has_quantized_weights,
    model_bytes,
)
from .speed import flops, latencies
from .table import Table
from .training import evaluate

__all__ = ["HEADLINE_MIME", "Headline", "headline", "Table", "compare_models"]

HEADLINE_MIME = "application/vnd.companion.headline+json"


class Headline:
    """The displayed result of :func:`headline`."""

    def __init__(self, chapter: str, results: dict[str, str]) -> None:
        self.chapter = chapter
        self.results = results

    def __repr__(self) -> str:
        width = max(len(k) for k in self.results)
        lines = [f"Headline results of {self.chapter}:"]
        lines += [f"  {k.ljust(width)}  {v}" for k, v in self.results.items()]
        return "\n".join(lines)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, object]:
        payload = {"chapter": self.chapter, "results": self.results}
        return {"text/plain": repr(self), HEADLINE_MIME: json.loads(json.dumps(payload))}


def headline(chapter: str, results: Mapping[str, str]) -> Headline:
    """Publish a chapter's headline results (display the returned object).

    Args:
        chapter: The notebook's name without extension, e.g. ``"02_hard_pruning"``.
        results: ``{description: formatted value}``, e.g.
            ``{"Weights kept by Han-style pruning": "8.1%"}``; values are
            shown as given, so format them in the notebook.

    Returns:
        A :class:`Headline` that notebooks render as a table.

    Raises:
        ValueError: If ``chapter`` is empty or ``results`` is empty.
        TypeError: If a value is not a string.

    Example:
        >>> headline("01_background", {"Test accuracy": "97.9%"})
        Headline results of 01_background:
          Test accuracy  97.9%
    """
    if not isinstance(chapter, str) or not chapter:
        raise ValueError(f"chapter must be a non-empty string, got {chapter!r}")
    if not isinstance(results, Mapping) or not results:
        raise ValueError("results must be a non-empty mapping of {description: value}")
    for key, value in results.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(
                f"results must map str to str (format numbers first), got {key!r}: {value!r}"
            )
    return Headline(chapter, dict(results))


def compare_models(
    models: Mapping[str, nn.Module],
    dataset: TensorDataset | None = None,
    *,
    batch_size: int = 256,
    input_shape: Sequence[int] | None = None,
    example_input: torch.Tensor | None = None,
    measure_latency: bool = True,
    min_run_time: float = 0.2,
    latency_device: str | torch.device | None = None,
) -> Table:
    """One row per model: accuracy, parameters, nonzeros, bytes, FLOPs, latency.

    Args:
        models: ``{label: model}`` in the order the rows should appear.
        dataset: If given, test accuracy and error count are measured on it.
        batch_size: Batch size of the FLOP count and the latency measurement.
        input_shape: Shape of one example for the FLOP count and the latency. Defaults to
            the shape of ``dataset``'s inputs when a dataset is given, else to each model's
            ``example_input_shape`` (see :func:`companion.speed.flops`).
        example_input: A batch of real inputs instead of ``input_shape``.
        measure_latency: Skip the (slowest) latency column when false.
        min_run_time: Seconds of latency measurement per model, spread over
            interleaved rounds (see :func:`~companion.speed.latencies`); raise it for steadier
            medians.
        latency_device: Where to time the models (see ``device`` in
            :func:`~companion.speed.latencies`); accuracy is always measured where the models are.

    Returns:
        A :class:`Table` with columns ``model``, ``accuracy``, ``errors``
        (when ``dataset`` is given), ``params``, ``nonzero``, ``bytes``,
        ``zlib_bytes``, ``MFLOPs`` (per batch; ``None``, shown as "n/a", for
        int8 models, whose integer kernels ``FlopCounterMode`` does not count)
        and ``latency_ms``.
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty mapping of {label: model}")
    if input_shape is None and example_input is None and isinstance(dataset, TensorDataset):
        input_shape = tuple(dataset.tensors[0].shape[1:])  # the data being evaluated
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
        counted = flops(model, input_shape, batch_size, example_input=example_input)
        # FlopCounterMode counts floating-point kernels only; int8 layers would read as 0.
        quantized = has_quantized_weights(model)
        row["MFLOPs"] = None if quantized and counted == 0 else counted / 1e6
        rows.append(row)
    if measure_latency:
        # Interleaved rounds, so that background load does not favour one model.
        times = latencies(
            models,
            batch_size,
            input_shape=input_shape,
            example_input=example_input,
            min_run_time=min_run_time,
            device=latency_device,
        )
        for row in rows:
            row["latency_ms"] = times[row["model"]] * 1e3
    return Table(rows, formats={"accuracy": ".2%", "MFLOPs": ".2f", "latency_ms": ".3f"})
