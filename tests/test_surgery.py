"""shrink: a physically smaller MLP that computes exactly what the masked one computes."""

from __future__ import annotations

import pytest
import torch

from companion.metrics import count_parameters
from companion.models import MLP
from companion.pruning import apply_masks, magnitude_masks, make_permanent
from companion.surgery import alive_units, shrink


def _random_mlp(sizes, seed=0) -> MLP:
    torch.manual_seed(seed)
    net = MLP(sizes)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.5)  # nonzero biases: removed neurons carry a constant
    return net


@pytest.mark.parametrize("permanent", [False, True])
def test_shrink_equals_masked_model_including_biases_of_removed_neurons(permanent):
    net = _random_mlp((20, 16, 12, 5))
    apply_masks(net, magnitude_masks(net, 0.5, structured=True, norm=2))
    if permanent:
        make_permanent(net)
    small = shrink(net)
    assert small.sizes == (20, 8, 6, 5)
    assert count_parameters(small) == 20 * 8 + 8 + 8 * 6 + 6 + 6 * 5 + 5
    x = torch.randn(100, 20)
    torch.testing.assert_close(small(x), net(x), atol=1e-5, rtol=1e-5)


def test_folding_matters():
    net = _random_mlp((6, 4, 3), seed=1)
    with torch.no_grad():
        net.fc1.weight[:2] = 0
        net.fc1.bias[:2] = torch.tensor([1.0, 2.0])  # positive: relu passes them
    small = shrink(net)
    x = torch.randn(10, 6)
    torch.testing.assert_close(small(x), net(x), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(small.fc2.bias, net.fc2.bias)


def test_shrink_keeps_input_output_and_one_neuron():
    net = _random_mlp((7, 5, 3))
    with torch.no_grad():
        net.fc1.weight.zero_()
    small = shrink(net)
    assert small.sizes == (7, 1, 3)
    x = torch.randn(4, 7)
    torch.testing.assert_close(small(x), net(x), atol=1e-6, rtol=1e-6)


def test_shrink_does_not_modify_input_and_rejects_other_models():
    net = _random_mlp((4, 4, 2))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    shrink(net)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    with pytest.raises(TypeError, match="MLP"):
        shrink(torch.nn.Linear(3, 3))


def test_alive_units():
    net = _random_mlp((3, 4, 2))
    with torch.no_grad():
        net.fc1.weight[2] = 0
    assert alive_units(net.fc1).tolist() == [0, 1, 3]


def test_shrink_sees_an_optimizer_step_taken_after_the_last_forward_pass():
    # torch's prune hook recomputes `weight` only before a forward pass; shrink must not
    # read the stale attribute after an optimizer step.
    net = _random_mlp((8, 6, 3), seed=2)
    apply_masks(net, magnitude_masks(net, 0.5, structured=True, norm=2))
    x = torch.randn(16, 8)
    net(x).sum().backward()
    torch.optim.SGD(net.parameters(), lr=0.5).step()
    stale = net.fc1.weight.detach().clone()
    small = shrink(net)
    assert not torch.equal(stale, net.fc1.weight_orig * net.fc1.weight_mask)
    torch.testing.assert_close(small(x), net(x), atol=1e-5, rtol=1e-5)
