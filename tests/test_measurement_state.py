"""Measuring a model never changes it: parameters, buffers (BatchNorm statistics) and mode stay as they were."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from companion import report, speed


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(4 * 28 * 28, 10),
    )


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[bool]]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, [m.training for m in model.modules()]


def assert_unchanged(model: nn.Module, before) -> None:
    state, modes = before
    now = model.state_dict()
    assert state.keys() == now.keys()
    for key, value in state.items():
        assert torch.equal(value, now[key]), f"{key} changed"
    assert [m.training for m in model.modules()] == modes


SHAPE = (1, 28, 28)

MEASUREMENTS = {
    "flops": lambda m: speed.flops(m, SHAPE, batch_size=8),
    "latency": lambda m: speed.latency(m, 8, input_shape=SHAPE, min_run_time=0.01, warmup=1),
    "latencies": lambda m: speed.latencies(
        {"m": m}, 8, input_shape=SHAPE, min_run_time=0.01, rounds=1
    ),
    "latency_by_batch": lambda m: speed.latency_by_batch(
        {"m": m}, [2], input_shape=SHAPE, min_run_time=0.01
    ),
    "compare_models": lambda m: report.compare_models(
        {"m": m},
        TensorDataset(torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))),
        batch_size=8,
        min_run_time=0.01,
    ),
}


@pytest.mark.parametrize("training", [True, False], ids=["train-mode", "eval-mode"])
@pytest.mark.parametrize("name", list(MEASUREMENTS))
def test_measurement_leaves_batchnorm_and_mode_bit_identical(name, training):
    model = small_cnn().train(training)
    if training:  # give the running statistics non-default values first
        with torch.no_grad():
            model(torch.rand(8, 1, 28, 28))
    before = snapshot(model)
    MEASUREMENTS[name](model)
    assert_unchanged(model, before)


def test_flops_counts_the_same_in_either_mode():
    model = small_cnn()
    assert speed.flops(model.train(), SHAPE) == speed.flops(model.eval(), SHAPE)


def test_a_users_model_needs_an_input_shape_there_is_no_silent_mnist_default():
    with pytest.raises(ValueError, match="input_shape is required for a Sequential"):
        speed.flops(small_cnn())


def test_the_book_models_declare_their_input_shape():
    from companion.convnets import LeNet5
    from companion.models import MLP

    assert speed.flops(MLP((784, 10))) == speed.flops(MLP((784, 10)), (1, 28, 28))
    assert speed.flops(MLP((4, 2))) == 2 * 4 * 2  # 4 inputs, not an MNIST image
    assert speed.flops(LeNet5()) == speed.flops(LeNet5(), (1, 28, 28))


def test_flops_follow_the_resolution_of_the_example_input():
    """The issue's case: a 1-channel net on 64x64 images was reported at MNIST's 28x28."""
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    small = speed.flops(net, example_input=torch.rand(3, 1, 28, 28))
    large = speed.flops(net, example_input=torch.rand(3, 1, 64, 64))
    assert large == small * (64 * 64) // (28 * 28)
    assert large == speed.flops(net, (1, 64, 64))


def test_a_wrong_input_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"cannot run on inputs of shape \(1, 3, 28, 28\)"):
        speed.flops(small_cnn(), (3, 28, 28))
    with pytest.raises(ValueError, match="cannot run on inputs"):
        speed.latency(small_cnn(), 2, input_shape=(1, 14, 14), min_run_time=0.01)


def test_input_shape_and_example_input_are_exclusive_and_checked():
    with pytest.raises(ValueError, match="not both"):
        speed.flops(small_cnn(), SHAPE, example_input=torch.rand(1, *SHAPE))
    with pytest.raises(ValueError, match="positive ints"):
        speed.flops(small_cnn(), (1, 0, 28))
    with pytest.raises(TypeError, match="example_input must be a torch.Tensor"):
        speed.flops(small_cnn(), example_input=[1, 2])


def test_compare_models_takes_the_input_shape_from_the_dataset_it_evaluates():
    net = nn.Sequential(nn.Flatten(), nn.Linear(2 * 5 * 5, 3))
    data = TensorDataset(torch.rand(8, 2, 5, 5), torch.randint(0, 3, (8,)))
    table = report.compare_models({"net": net}, data, batch_size=4, measure_latency=False)
    assert table.rows[0]["MFLOPs"] == pytest.approx(speed.flops(net, (2, 5, 5), 4) / 1e6)
