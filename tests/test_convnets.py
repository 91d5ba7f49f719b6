"""LeNet-5 and its channel surgery: the shrunk network computes the same function."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import prune

from companion.convnets import LeNet5, alive_channels, shrink_lenet5
from companion.metrics import count_parameters


def _random_lenet(seed: int = 0) -> LeNet5:
    torch.manual_seed(seed)
    net = LeNet5()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)  # nonzero biases everywhere, so folding matters
    return net


def test_lenet5_shapes_and_parameter_count():
    net = LeNet5()
    assert net(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    # conv1 156 + conv2 2416 + fc1 48120 + fc2 10164 + fc3 850
    assert count_parameters(net) == 156 + 2416 + 48120 + 10164 + 850


@pytest.mark.parametrize("bad", [{"channels": (6,)}, {"hidden": (0, 84)}, {"num_classes": True}])
def test_lenet5_rejects_bad_widths(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        LeNet5(**bad)


def test_shrink_removes_dead_channels_and_keeps_outputs_with_nonzero_biases():
    net = _random_lenet()
    with torch.no_grad():
        net.conv1.weight[[1, 4]] = 0
        net.conv2.weight[[0, 3, 5, 7, 9, 11]] = 0
        net.fc1.weight[::2] = 0
        net.fc2.weight[:40] = 0
    small = shrink_lenet5(net)
    assert small.channels == (4, 10)
    assert small.hidden == (60, 44)
    assert count_parameters(small) < count_parameters(net)
    x = torch.rand(64, 1, 28, 28)
    torch.testing.assert_close(small(x), net(x), atol=1e-4, rtol=1e-4)


def test_shrink_of_masked_model_equals_masked_model():
    net = _random_lenet(1)
    mask = torch.ones_like(net.conv2.weight)
    mask[[2, 6, 8]] = 0
    prune.custom_from_mask(net.conv2, "weight", mask)
    small = shrink_lenet5(net)
    assert small.channels == (6, 13)
    assert prune.is_pruned(net)  # the input model is left as it was
    x = torch.rand(16, 1, 28, 28)
    torch.testing.assert_close(small(x), net(x), atol=1e-4, rtol=1e-4)


def test_shrink_keeps_one_unit_of_an_emptied_layer():
    net = _random_lenet(2)
    with torch.no_grad():
        net.fc2.weight.zero_()
    small = shrink_lenet5(net)
    assert small.hidden[1] == 1
    x = torch.rand(8, 1, 28, 28)
    torch.testing.assert_close(small(x), net(x), atol=1e-4, rtol=1e-4)


def test_alive_channels_and_type_check():
    net = LeNet5()
    with torch.no_grad():
        net.conv1.weight[0] = 0
    assert alive_channels(net.conv1).tolist() == [1, 2, 3, 4, 5]
    with pytest.raises(TypeError, match="LeNet5"):
        shrink_lenet5(torch.nn.Linear(2, 2))


def test_general_shrink_agrees_with_shrink_lenet5_when_dead_channels_have_zero_biases():
    from companion.surgery import shrink

    net = _random_lenet(3)
    with torch.no_grad():
        for name, rows in (("conv1", [0, 3]), ("conv2", [1, 2, 8]), ("fc1", [5, 50]), ("fc2", [0])):
            getattr(net, name).weight[rows] = 0
            getattr(net, name).bias[rows] = 0
    x = torch.rand(8, 1, 28, 28)
    readable = shrink_lenet5(net)
    general = shrink(net, x)
    for name in ("conv1", "conv2", "fc1", "fc2", "fc3"):
        assert getattr(general, name).weight.shape == getattr(readable, name).weight.shape, name
    torch.testing.assert_close(general(x), readable(x), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(general(x), net(x), atol=1e-4, rtol=1e-4)


def test_general_shrink_keeps_a_dead_channel_with_a_nonzero_bias_that_shrink_lenet5_folds():
    from companion.surgery import shrink

    net = _random_lenet(4)
    with torch.no_grad():
        net.conv2.weight[[2, 7]] = 0  # biases stay nonzero: the channels output relu(b)
    x = torch.rand(4, 1, 28, 28)
    assert shrink_lenet5(net).channels == (6, 14)
    general = shrink(net, x)
    assert general.conv2.out_channels == 16
    torch.testing.assert_close(general(x), net(x), atol=1e-4, rtol=1e-4)
