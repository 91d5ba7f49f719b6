"""Chapter 3's protocols (companion.soft): one arm of a comparison per call, tiny synthetic data."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from companion import soft
from companion.metrics import layer_sparsity, sparsity
from companion.models import MLP, lenet_300_100
from companion.pruning import is_pruned


@pytest.fixture
def images() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 1, 28, 28, generator=g)
    return TensorDataset(x, torch.randint(0, 10, (96,), generator=g))


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_train_with_penalty_is_reproducible_and_l2_equals_weight_decay(images):
    a = soft.train_with_penalty(0, images, l2=1e-3, include_bias=True, batch_size=32)
    b = soft.train_with_penalty(0, images, weight_decay=2e-3, batch_size=32)
    c = soft.train_with_penalty(0, images, l2=1e-3, include_bias=True, batch_size=32)
    assert _same_weights(a, c)
    assert all(
        torch.allclose(x, y, atol=1e-6)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert int((a.fc1.weight == 0).sum()) == 0


def test_train_with_penalty_l1_gives_exact_zeros(images):
    model = soft.train_with_penalty(1, images, l1=0.05, batch_size=32)
    assert bool((model.fc1.weight == 0).any())


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"l2": -1.0}, "l2"),
        ({"l2": 1e-3, "l1": 1e-3}, "at most one"),
        ({"lr": 0.0}, "lr"),
        ({"seed": -1}, "seed"),
    ],
)
def test_train_with_penalty_bad_input(images, kwargs, name):
    seed = kwargs.pop("seed", 0)
    with pytest.raises(ValueError, match=name):
        soft.train_with_penalty(seed, images, **kwargs)


def test_train_reference_snapshots_equal_a_shorter_run(images):
    long = soft.train_reference(0, images, epochs=3, lr=0.01, batch_size=32, keep=[1, 2])
    short = soft.train_reference(0, images, epochs=2, lr=0.01, batch_size=32)
    assert sorted(long["snapshots"]) == [1, 2]
    assert _same_weights(long["snapshots"][2], short["model"])
    assert not _same_weights(long["snapshots"][2], long["model"])
    with pytest.raises(ValueError, match="keep"):
        soft.train_reference(0, images, epochs=2, lr=0.01, keep=[3])


def test_soft_from_scratch_shares_the_reference_initialisation(images):
    run = soft.soft_from_scratch(
        0, images, amount=0.5, structured=True, epochs=2, lr=0.01, batch_size=32
    )
    assert run["pruner"].history["epoch"] == [1, 2]
    assert int((run["model"].fc1.weight.abs().sum(1) == 0).sum()) == 150
    torch.manual_seed(123)  # the function seeds itself: the global state does not matter
    again = soft.soft_from_scratch(
        0, images, amount=0.5, structured=True, epochs=2, lr=0.01, batch_size=32
    )
    assert _same_weights(run["model"], again["model"])


@pytest.mark.parametrize("method", soft.METHODS)
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_prune_and_finetune_reaches_the_sparsity_and_leaves_the_input(images, method, scope):
    net = lenet_300_100()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    run = soft.prune_and_finetune(
        net, images, method=method, amount=0.9, scope=scope, seed=0, epochs=2, lr=0.01,
        batch_size=16, every=2, zeroing_eval=images if method == "soft" else None,
    )  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert sparsity(run["model"]) == pytest.approx(0.9, abs=1e-3)
    assert is_pruned(run["model"]) == (method != "soft")
    if scope == "layer":
        assert all(s == pytest.approx(0.9, abs=2e-3) for s in layer_sparsity(run["model"]).values())
    if method == "soft":
        assert [z["epoch"] for z in run["zeroing"]] == [1, 2]
        assert run["pruner"].history["epoch"] == [0, 1, 2]
    else:
        assert run["zeroing"] == []


def test_prune_and_finetune_gradual_keeps_stored_values_of_pruned_weights(images):
    run = soft.prune_and_finetune(
        lenet_300_100(), images, method="gradual", amount=0.8, seed=0, epochs=2, lr=0.05,
        batch_size=16, every=1,
    )  # fmt: skip
    # the momentum was cleared at every mask update, so no pruned weight moved after pruning:
    # re-running the final masking step changes no stored value
    model, pruner = run["model"], run["pruner"]
    assert pruner.optimizer is not None
    for layer in (model.fc1, model.fc2, model.fc3):
        buffer = pruner.optimizer.state[layer.weight_orig]["momentum_buffer"]
        assert bool((buffer[layer.weight_mask == 0] == 0).all())


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"method": "random"}, ValueError, "method"),
        ({"amount": 1.5}, ValueError, "amount"),
        ({"scope": "net"}, ValueError, "scope"),
        ({"gradual_fraction": 0.0}, ValueError, "gradual_fraction"),
        ({"epochs": 0}, ValueError, "epochs"),
        ({"lr": -0.1}, ValueError, "lr"),
        ({"model": "net"}, TypeError, "model"),
    ],
)
def test_prune_and_finetune_bad_input(images, kwargs, error, name):
    args = {"model": MLP((784, 8, 10)), "method": "one-shot", "amount": 0.5, "epochs": 1, "lr": 0.1}
    args.update(kwargs)
    model = args.pop("model")
    with pytest.raises(error, match=name):
        soft.prune_and_finetune(model, images, seed=0, **args)


def test_zeroed_neuron_gradients_follow_the_bias():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight[:3] = 0.0
        net[0].bias.copy_(torch.tensor([0.5, -0.5, 0.0, 0.1]))
    report = soft.zeroed_neuron_gradients(net, torch.randn(16, 5), torch.randint(0, 2, (16,)))
    assert set(report) == {"0", "2"}
    assert report["0"]["zeroed"] == 3 and report["0"]["positive_bias"] == 1
    assert report["0"]["gradient_exactly_where_bias_positive"]
    assert all(p.grad is None for p in net.parameters())


def test_latency_rounds_returns_one_sample_per_round():
    times = soft.latency_rounds(
        {"a": nn.Linear(4, 2), "b": nn.Linear(4, 8)}, 4, rounds=3, seconds_per_round=0.005,
        input_shape=(4,),
    )  # fmt: skip
    assert sorted(times) == ["a", "b"] and all(len(v) == 3 for v in times.values())
    assert all(t > 0 for v in times.values() for t in v)
    with pytest.raises(ValueError, match="rounds"):
        soft.latency_rounds({"a": nn.Linear(4, 2)}, rounds=1, input_shape=(4,))
    with pytest.raises(ValueError, match="models"):
        soft.latency_rounds({})
