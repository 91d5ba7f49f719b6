"""The book's networks: shapes, names, parameter counts, validation."""

from __future__ import annotations

import pytest
import torch

from companion.metrics import count_parameters
from companion.models import MLP, article_mlp, hinton_teacher, lenet_300_100


def test_mlp_layers_are_named_fc1_to_fcn():
    net = MLP((784, 300, 100, 10))
    assert [name for name, _ in net.named_children()] == ["fc1", "fc2", "fc3", "dropout"]
    assert [layer.out_features for layer in net.linears] == [300, 100, 10]
    assert net(torch.zeros(7, 1, 28, 28)).shape == (7, 10)
    assert net(torch.zeros(7, 784)).shape == (7, 10)


@pytest.mark.parametrize(
    "factory, params",
    [
        (article_mlp, 784 * 128 + 128 + 128 * 10 + 10),
        (lenet_300_100, 266_610),
        (hinton_teacher, 2_395_210),
    ],
)
def test_parameter_counts(factory, params):
    assert count_parameters(factory()) == params


def test_dropout_is_active_only_in_training():
    net = MLP((10, 50, 2), dropout=0.5)
    x = torch.ones(4, 10)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    torch.manual_seed(0)
    a = net(x)
    assert not torch.equal(a, net(x))


@pytest.mark.parametrize("sizes", [(10,), (10, 0, 2), (10, 2.5, 2), (10, True)])
def test_bad_sizes(sizes):
    with pytest.raises(ValueError, match="sizes"):
        MLP(sizes)


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 2])
def test_bad_dropout(dropout):
    with pytest.raises(ValueError, match="dropout"):
        MLP((4, 2), dropout=dropout)
