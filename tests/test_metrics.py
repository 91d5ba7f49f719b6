"""Parameter and zero counts, checkpoint sizes, FLOPs, latency and the results table."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn.utils import prune
from torch.utils.data import TensorDataset

from companion import speed
from companion.deploy import quantize_dynamic_int8
from companion.masks import PRUNABLE_TYPES, effective_weights, prunable_layers
from companion.metrics import (
    compressed_bytes,
    count_nonzero,
    count_parameters,
    layer_sparsity,
    model_bytes,
    sparsity,
)
from companion.models import MLP
from companion.report import compare_models
from companion.speed import flops, latency, latency_by_batch
from companion.table import Table

FAST = 0.01  # min_run_time for every latency measurement here: the value is never asserted


def _mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP((784, 30, 10))


def _hand_zeroed() -> MLP:
    """fc1: 784*30 weights, the first 10 rows zero; fc2: 30*10 weights, one zero; biases dense."""
    model = _mlp()
    with torch.no_grad():
        model.fc1.weight[:10] = 0.0
        model.fc2.weight[0, 0] = 0.0
        model.fc1.bias.fill_(0.5)
        model.fc2.bias.fill_(0.5)
    return model


def _masked(amount: float = 0.75) -> MLP:
    """Magnitude-pruned with ``torch.nn.utils.prune`` masks, not made permanent."""
    model = _mlp()
    for layer in (model.fc1, model.fc2):
        prune.l1_unstructured(layer, "weight", amount=amount)
    return model


N_WEIGHTS = 784 * 30 + 30 * 10
N_BIASES = 30 + 10


# --------------------------------------------------------------------------- counting


def test_prunable_layers_and_types():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 26 * 26, 3))
    assert list(prunable_layers(model)) == ["0", "3"]
    assert nn.Linear in PRUNABLE_TYPES and nn.Conv2d in PRUNABLE_TYPES
    assert prunable_layers(nn.ReLU()) == {}


def test_counts_on_a_dense_model():
    model = _mlp()
    assert count_parameters(model) == N_WEIGHTS + N_BIASES
    assert count_nonzero(model) == N_WEIGHTS + N_BIASES
    assert sparsity(model) == 0.0
    assert layer_sparsity(model) == {"fc1.weight": 0.0, "fc2.weight": 0.0}


def test_counts_with_hand_set_zeros():
    model = _hand_zeroed()
    zeros = 10 * 784 + 1
    assert count_parameters(model) == N_WEIGHTS + N_BIASES
    assert count_nonzero(model) == N_WEIGHTS + N_BIASES - zeros
    assert sparsity(model) == pytest.approx(zeros / N_WEIGHTS)
    assert layer_sparsity(model) == pytest.approx({"fc1.weight": 10 / 30, "fc2.weight": 1 / 300})


def test_biases_count_as_parameters_but_not_as_sparsity():
    model = _mlp()
    with torch.no_grad():
        model.fc1.bias.zero_()
        model.fc2.bias.zero_()
    assert count_nonzero(model) == N_WEIGHTS
    assert sparsity(model) == 0.0


def test_counts_on_a_masked_model():
    model = _masked(0.75)
    kept = round(0.25 * 784 * 30) + round(0.25 * 30 * 10)
    # Masks are buffers: the parameter count is the dense one.
    assert count_parameters(model) == N_WEIGHTS + N_BIASES
    assert count_nonzero(model) == kept + N_BIASES
    assert sparsity(model) == pytest.approx(1 - kept / N_WEIGHTS)
    assert layer_sparsity(model) == pytest.approx({"fc1.weight": 0.75, "fc2.weight": 0.75})
    # The stored weight_orig is still dense: counting it would report no sparsity at all.
    assert int(torch.count_nonzero(model.fc1.weight_orig)) == 784 * 30


def test_effective_weights_apply_the_masks():
    model = _masked(0.5)
    weights = effective_weights(model)
    assert list(weights) == ["fc1.weight", "fc2.weight"]
    for name, layer in (("fc1", model.fc1), ("fc2", model.fc2)):
        expected = layer.weight_orig * layer.weight_mask
        assert torch.equal(weights[f"{name}.weight"], expected)
        assert not weights[f"{name}.weight"].requires_grad


def test_effective_weights_of_a_plain_model_are_its_weights():
    model = _hand_zeroed()
    weights = effective_weights(model)
    assert torch.equal(weights["fc1.weight"], model.fc1.weight)
    assert torch.equal(weights["fc2.weight"], model.fc2.weight)


def test_conv_layers_are_counted():
    conv = nn.Conv2d(2, 4, 3)
    with torch.no_grad():
        conv.weight[0] = 0.0  # one of four output channels
    assert sparsity(conv) == pytest.approx(0.25)
    assert count_nonzero(conv) == 3 * 2 * 3 * 3 + 4


def test_quantized_model_keeps_its_parameter_count():
    model = _mlp().eval()
    quantized = quantize_dynamic_int8(model)
    assert count_parameters(quantized) == count_parameters(model)
    assert count_nonzero(quantized) <= count_parameters(model)
    row = compare_models({"int8": quantized}, batch_size=2, measure_latency=False).row("int8")
    assert row["MFLOPs"] is None  # FlopCounterMode does not count int8 kernels: shown as n/a


# --------------------------------------------------------------------------- bytes


def test_model_bytes_of_a_masked_model_exceed_the_dense_ones():
    dense, masked = _mlp(), _masked(0.9)
    assert model_bytes(masked) > model_bytes(dense)  # weight_orig and weight_mask both stored
    assert model_bytes(dense) > 4 * (N_WEIGHTS + N_BIASES)  # float32 values plus overhead


def test_compressed_bytes_of_a_sparse_model():
    sparse = _masked(0.9)
    for layer in (sparse.fc1, sparse.fc2):
        prune.remove(layer, "weight")  # zeros made permanent: a dense tensor, 90% zeros
    dense = _mlp()
    assert model_bytes(sparse) == model_bytes(dense)
    assert compressed_bytes(sparse) < model_bytes(sparse)
    assert compressed_bytes(sparse) < 0.5 * compressed_bytes(dense)
    assert compressed_bytes(sparse, level=0) >= model_bytes(sparse)  # stored, not compressed


@pytest.mark.parametrize("level", [-1, 10, 1.5, True, "9"])
def test_compressed_bytes_rejects_bad_levels(level):
    with pytest.raises(ValueError, match="level"):
        compressed_bytes(_mlp(), level=level)


# --------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize("batch_size", [1, 3, 64])
@pytest.mark.parametrize("bias", [True, False])
def test_flops_of_a_linear_layer(batch_size, bias):
    # FlopCounterMode counts the matrix product only (2 * b * 784 * 300); the bias add is free.
    layer = nn.Linear(784, 300, bias=bias)
    assert flops(layer, input_shape=(784,), batch_size=batch_size) == 2 * 784 * 300 * batch_size


def test_flops_of_an_mlp_ignore_zeros():
    expected = 2 * (784 * 30 + 30 * 10) * 8
    assert flops(_mlp(), batch_size=8) == expected
    assert flops(_masked(0.9), batch_size=8) == expected  # zeros are multiplied all the same


def test_flops_of_a_conv_layer():
    conv = nn.Conv2d(1, 4, 3)
    assert flops(conv, (1, 28, 28), batch_size=2) == 2 * 2 * 4 * 26 * 26 * (1 * 3 * 3)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1, ValueError), (2.0, TypeError)])
def test_flops_rejects_bad_batch_sizes(bad, error):
    with pytest.raises(error, match="batch_size"):
        flops(_mlp(), batch_size=bad)


# --------------------------------------------------------------------------- latency


def test_latency_is_a_positive_float_and_restores_the_mode():
    model = _mlp().train()
    seconds = latency(model, 4, min_run_time=FAST, warmup=1)
    assert isinstance(seconds, float) and seconds > 0
    assert model.training
    model.eval()
    latency(model, 4, min_run_time=FAST, warmup=0, num_threads=1)
    assert not model.training


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": 1.5}, TypeError, "batch_size"),
        ({"min_run_time": 0}, ValueError, "min_run_time"),
        ({"min_run_time": -1.0}, ValueError, "min_run_time"),
        ({"warmup": -1}, ValueError, "warmup"),
        ({"num_threads": 0}, ValueError, "num_threads"),
    ],
)
def test_latency_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        latency(_mlp(), **{"min_run_time": FAST, **kwargs})


def test_latency_by_batch_columns_and_rows():
    models = {"dense": _mlp(), "small": MLP((784, 5, 10))}
    table = latency_by_batch(models, [1, 4], min_run_time=FAST)
    assert table.columns == ["batch", "dense_ms", "small_ms", "speedup"]
    assert table.column("batch") == [1, 4]
    for row in table.rows:
        assert row["dense_ms"] > 0 and row["small_ms"] > 0
        assert row["speedup"] == pytest.approx(row["dense_ms"] / row["small_ms"])
    assert table.formats == {"dense_ms": ".3f", "small_ms": ".3f", "speedup": ".2f"}
    assert table.row(4)["batch"] == 4


def test_latency_by_batch_with_one_model_has_speedup_one():
    table = latency_by_batch({"a": nn.Linear(4, 2)}, [2], input_shape=(4,), min_run_time=FAST)
    assert table.columns == ["batch", "a_ms", "speedup"]
    assert table.rows[0]["speedup"] == 1.0


@pytest.mark.parametrize(
    "models, batch_sizes, error, match",
    [
        ({}, [1], ValueError, "models"),
        ([nn.Linear(4, 2)], [1], ValueError, "models"),
        ({"a": nn.Linear(4, 2)}, [0], ValueError, "batch_sizes"),
        ({"a": nn.Linear(4, 2)}, [1, -3], ValueError, "batch_sizes"),
        ({"a": nn.Linear(4, 2)}, [2.0], TypeError, "batch_sizes"),
    ],
)
def test_latency_by_batch_rejects_bad_arguments(models, batch_sizes, error, match):
    with pytest.raises(error, match=match):
        latency_by_batch(models, batch_sizes, input_shape=(4,), min_run_time=FAST)


# --------------------------------------------------------------------------- compare_models


def test_compare_models_columns_and_row_lookup():
    models = {"dense": _mlp(), "pruned": _masked(0.75)}
    table = compare_models(models, batch_size=4, min_run_time=FAST)
    assert table.columns == [
        "model",
        "params",
        "nonzero",
        "bytes",
        "zlib_bytes",
        "MFLOPs",
        "latency_ms",
    ]
    assert table.column("model") == ["dense", "pruned"]
    dense, pruned = table.row("dense"), table.row("pruned")
    assert dense["params"] == pruned["params"] == N_WEIGHTS + N_BIASES
    assert dense["nonzero"] == N_WEIGHTS + N_BIASES
    assert pruned["nonzero"] == count_nonzero(models["pruned"])
    assert pruned["bytes"] > dense["bytes"]
    assert dense["MFLOPs"] == pytest.approx(2 * N_WEIGHTS * 4 / 1e6)
    assert dense["latency_ms"] > 0
    assert table.row(N_WEIGHTS + N_BIASES, column="params") is dense


def test_compare_models_with_a_dataset_and_no_latency():
    g = torch.Generator().manual_seed(0)
    dataset = TensorDataset(torch.rand(50, 1, 28, 28, generator=g), torch.randint(0, 10, (50,)))
    table = compare_models({"m": _mlp()}, dataset, measure_latency=False)
    assert table.columns == [
        "model",
        "accuracy",
        "errors",
        "params",
        "nonzero",
        "bytes",
        "zlib_bytes",
        "MFLOPs",
    ]
    row = table.row("m")
    assert 0.0 <= row["accuracy"] <= 1.0
    assert row["errors"] == round((1 - row["accuracy"]) * 50)


@pytest.mark.parametrize("models", [{}, [_mlp()], None])
def test_compare_models_rejects_bad_models(models):
    with pytest.raises(ValueError, match="models"):
        compare_models(models, measure_latency=False)


# --------------------------------------------------------------------------- Table


def test_table_text_alignment_and_default_formats():
    rows = [{"model": "a", "params": 10, "acc": 0.123456}, {"model": "bb", "params": 2, "acc": 1.0}]
    table = Table(rows)
    assert str(table).splitlines() == [
        "model  params     acc",  # numbers right-aligned, text left-aligned
        "a          10  0.1235",  # floats default to 4 significant digits
        "bb          2       1",
    ]
    assert repr(table) == str(table)
    assert table.columns == ["model", "params", "acc"]


def test_table_formats_and_missing_values():
    table = Table(
        [{"model": "x", "accuracy": 0.98765, "MFLOPs": None}, {"model": "y", "accuracy": 1}],
        formats={"accuracy": ".1%", "MFLOPs": ".2f"},
    )
    lines = str(table).splitlines()
    assert lines[0].split() == ["model", "accuracy", "MFLOPs"]
    assert lines[1].split() == ["x", "98.8%", "n/a"]
    assert lines[2].split() == ["y", "100.0%"]  # a missing cell is blank


def test_table_html():
    table = Table([{"model": "a", "acc": 0.5}], formats={"acc": ".0%"})
    html = table._repr_html_()
    assert html == (
        "<table><thead><tr><th>model</th><th>acc</th></tr></thead>"
        "<tbody><tr><td>a</td><td>50%</td></tr></tbody></table>"
    )


def test_table_column_and_row_errors():
    table = Table([{"model": "a", "params": 1}])
    assert table.column("params") == [1]
    with pytest.raises(KeyError, match="no column 'nope'"):
        table.column("nope")
    with pytest.raises(KeyError, match="no row with model='b'"):
        table.row("b")


def test_an_empty_table():
    table = Table([])
    assert table.columns == []
    assert str(table) == ""
    assert table._repr_html_() == "<table><thead><tr></tr></thead><tbody></tbody></table>"


def test_table_rows_survive_a_json_round_trip():
    table = compare_models({"m": _mlp()}, measure_latency=False)
    assert json.loads(json.dumps(table.rows)) == table.rows


# --------------------------------------------------------------------------- type checks


@pytest.mark.parametrize(
    "function",
    [count_parameters, count_nonzero, model_bytes, compressed_bytes, prunable_layers, flops],
)
def test_a_non_module_is_rejected(function):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        function({"weight": torch.zeros(2)})


@pytest.mark.parametrize("function", [sparsity, layer_sparsity])
def test_sparsity_needs_a_prunable_layer(function):
    with pytest.raises(ValueError, match="no prunable"):
        function(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))


def test_latencies_measures_every_model_in_interleaved_rounds(monkeypatch):
    calls = []

    def fake_latency(model, batch_size, *, input_shape, example_input, min_run_time):
        calls.append((model, min_run_time))
        return 0.001 * (len(calls) % 3 + 1)

    monkeypatch.setattr(speed, "latency", fake_latency)
    a, b = nn.Linear(4, 2), nn.Linear(4, 3)
    times = speed.latencies({"a": a, "b": b}, 8, input_shape=(4,), min_run_time=1.0, rounds=3)
    assert [model for model, _ in calls] == [a, b, a, b, a, b]
    assert all(run_time == pytest.approx(1.0 / 3) for _, run_time in calls)
    assert set(times) == {"a", "b"}
    # medians of a's samples (2, 1, 3) ms and b's (3, 2, 1) ms
    assert times["a"] == pytest.approx(0.002) and times["b"] == pytest.approx(0.002)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rounds": 0}, "rounds"),
        ({"min_run_time": 0.0}, "min_run_time"),
        ({"models": {}}, "models"),
    ],
)
def test_latencies_rejects_bad_arguments(kwargs, match):
    arguments = {"models": {"a": nn.Linear(4, 2)}, "input_shape": (4,), **kwargs}
    with pytest.raises(ValueError, match=match):
        speed.latencies(**arguments)


def test_latencies_on_another_device_time_copies_and_leave_the_models_alone():
    from companion.report import compare_models
    from companion.speed import latencies

    net = nn.Sequential(nn.Linear(4, 3))
    times = latencies({"net": net}, 8, input_shape=(4,), min_run_time=0.02, device="cpu")
    assert list(times) == ["net"] and times["net"] > 0
    assert next(net.parameters()).device.type == "cpu" and net.training
    table = compare_models(
        {"net": net}, input_shape=(4,), batch_size=8, min_run_time=0.02, latency_device="cpu"
    )
    assert table.rows[0]["latency_ms"] > 0
    with pytest.raises(ValueError, match="device must be"):
        latencies({"net": net}, 8, input_shape=(4,), device="bogus")


def test_weight_stats_counts_masked_weights_and_ignores_biases():
    from companion.metrics import weight_stats
    from companion.pruning import apply_masks

    net = nn.Sequential(nn.Linear(4, 5))
    with torch.no_grad():
        net[0].weight.fill_(0.5)
        net[0].weight[0, :2] = 5e-4
        net[0].bias.zero_()
    apply_masks(net, {"0": (torch.arange(20) >= 5).float().view(5, 4)})
    stats = weight_stats(net)
    assert stats["exact_zeros"] == pytest.approx(5 / 20)
    assert stats["near_zero"] == pytest.approx(5 / 20)  # the two 5e-4 weights are masked
    assert stats["mean_abs_w"] == pytest.approx(15 * 0.5 / 20)
    assert weight_stats(net, small=1.0)["near_zero"] == 1.0
    with pytest.raises(ValueError, match="small must be > 0"):
        weight_stats(net, small=0.0)
    with pytest.raises(ValueError, match="no prunable"):
        weight_stats(nn.ReLU())
