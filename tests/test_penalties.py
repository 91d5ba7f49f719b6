"""Penalty values and gradients against hand computations; the proximal step."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from companion.models import MLP
from companion.penalties import group_lasso_penalty, l1_penalty, l2_penalty, soft_threshold_


@pytest.fixture
def net() -> MLP:
    torch.manual_seed(0)
    return MLP((5, 4, 3))


def test_values_match_hand_computation(net):
    w1, w2 = net.fc1.weight.detach(), net.fc2.weight.detach()
    assert l1_penalty(net).item() == pytest.approx(
        (w1.abs().sum() + w2.abs().sum()).item(), rel=1e-6
    )
    assert l2_penalty(net).item() == pytest.approx(((w1**2).sum() + (w2**2).sum()).item(), rel=1e-6)
    rows = [w1[j].norm().item() for j in range(4)] + [w2[j].norm().item() for j in range(3)]
    assert group_lasso_penalty(net).item() == pytest.approx(sum(rows), rel=1e-6)


def test_biases_only_when_asked(net):
    bias = net.fc1.bias.detach().abs().sum() + net.fc2.bias.detach().abs().sum()
    assert l1_penalty(net, include_bias=True).item() == pytest.approx(
        (l1_penalty(net) + bias).item(), rel=1e-6
    )


def test_gradients(net):
    l1_penalty(net).backward()
    assert torch.equal(net.fc1.weight.grad, net.fc1.weight.detach().sign())
    assert net.fc1.bias.grad is None
    net.zero_grad()
    l2_penalty(net).backward()
    torch.testing.assert_close(net.fc2.weight.grad, 2 * net.fc2.weight.detach())
    net.zero_grad()
    group_lasso_penalty(net).backward()
    w = net.fc1.weight.detach()
    torch.testing.assert_close(net.fc1.weight.grad, w / w.norm(dim=1, keepdim=True))


def test_penalties_see_masked_weights(net):
    prune.l1_unstructured(net.fc1, "weight", amount=0.5)
    assert l1_penalty(net).item() == pytest.approx(
        (net.fc1.weight.detach().abs().sum() + net.fc2.weight.detach().abs().sum()).item(), rel=1e-6
    )


def test_soft_threshold_makes_exact_zeros(net):
    with torch.no_grad():
        net.fc1.weight.copy_(torch.linspace(-1, 1, 20).view(4, 5))
    before = net.fc1.weight.detach().clone()
    soft_threshold_(net, 0.3)
    after = net.fc1.weight.detach()
    expected = before.sign() * (before.abs() - 0.3).clamp_min(0)
    torch.testing.assert_close(after, expected)
    assert int((after == 0).sum()) == int((before.abs() <= 0.3).sum())


def test_soft_threshold_on_masked_layer_keeps_mask():
    layer = nn.Linear(4, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -0.5, 0.05, 2.0]]))
    prune.custom_from_mask(layer, "weight", torch.tensor([[1.0, 0.0, 1.0, 1.0]]))
    zeros = soft_threshold_(nn.Sequential(layer), 0.1)
    assert zeros == 2
    torch.testing.assert_close(layer.weight_orig.detach(), torch.tensor([[0.4, -0.4, 0.0, 1.9]]))


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_soft_threshold_rejects_bad_threshold(net, bad):
    with pytest.raises(ValueError, match="threshold"):
        soft_threshold_(net, bad)


def test_model_without_prunable_layers():
    for fn in (l1_penalty, l2_penalty, group_lasso_penalty):
        with pytest.raises(ValueError, match="no prunable"):
            fn(nn.ReLU())


# --------------------------------------------------------------------------- group soft threshold
from companion.penalties import group_soft_threshold_  # noqa: E402
from companion.surgery import shrink  # noqa: E402


def test_group_soft_threshold_matches_its_formula_and_leaves_the_output_layer(net):
    w1, w2 = net.fc1.weight.detach().clone(), net.fc2.weight.detach().clone()
    tau = float(w1.norm(dim=1).median())
    zero_rows = group_soft_threshold_(net, tau)
    norms = w1.norm(dim=1, keepdim=True)
    torch.testing.assert_close(net.fc1.weight.detach(), w1 * (1 - tau / norms).clamp_min(0))
    assert torch.equal(net.fc2.weight.detach(), w2)  # class rows are never thresholded
    assert zero_rows == int((norms <= tau).sum()) >= 1


def test_group_soft_threshold_makes_exact_zero_rows_that_shrink_removes():
    torch.manual_seed(0)
    net = MLP((6, 8, 5, 3))
    norms = net.fc1.weight.detach().norm(dim=1)
    tau = float(norms.sort().values[3])  # the 4 weakest rows of fc1 (and some of fc2) die
    zero_rows = group_soft_threshold_(net, tau)
    dead1 = int((net.fc1.weight.detach().abs().sum(1) == 0).sum())
    dead2 = int((net.fc2.weight.detach().abs().sum(1) == 0).sum())
    assert dead1 == 4 and zero_rows == dead1 + dead2
    small = shrink(net)
    assert small.sizes == (6, 8 - dead1, max(5 - dead2, 1), 3)
    x = torch.rand(7, 6)
    torch.testing.assert_close(small(x), net(x), atol=1e-6, rtol=0)


def test_subgradient_of_group_lasso_leaves_no_zero_rows():
    torch.manual_seed(0)
    net = MLP((4, 6, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        group_lasso_penalty(net).backward()
        opt.step()
    assert int((net.fc1.weight.detach().abs().sum(1) == 0).sum()) == 0


def test_group_soft_threshold_on_masked_layer_scales_weight_orig():
    net = MLP((2, 2, 1))
    with torch.no_grad():
        net.fc1.weight.copy_(torch.tensor([[3.0, 4.0], [0.3, 0.4]]))
    prune.custom_from_mask(net.fc1, "weight", torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    assert group_soft_threshold_(net, 1.0) == 1  # row 0's effective norm is 3: scaled by 2/3
    torch.testing.assert_close(
        net.fc1.weight_orig.detach(), torch.tensor([[2.0, 8 / 3], [0.0, 0.0]])
    )
    torch.testing.assert_close(net.fc1.weight.detach(), torch.tensor([[2.0, 0.0], [0.0, 0.0]]))


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_group_soft_threshold_rejects_bad_threshold(net, bad):
    with pytest.raises(ValueError, match="threshold"):
        group_soft_threshold_(net, bad)


def test_group_soft_threshold_needs_a_hidden_layer():
    with pytest.raises(ValueError, match="needs a hidden prunable"):
        group_soft_threshold_(nn.Linear(3, 2), 0.1)
    with pytest.raises(ValueError, match="needs a hidden prunable"):
        group_soft_threshold_(MLP((4, 3, 2)), 0.1, exclude=["fc1"])
