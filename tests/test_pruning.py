"""Masks: exact counts, agreement with torch.nn.utils.prune, persistence, and the restore loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from companion.metrics import layer_sparsity, sparsity
from companion.models import MLP
from companion.pruning import (
    apply_masks,
    current_masks,
    is_pruned,
    iterative_prune,
    magnitude_masks,
    make_permanent,
    random_masks,
    structured_sparsity,
)
from companion.training import train


@pytest.fixture
def net() -> MLP:
    torch.manual_seed(0)
    return MLP((30, 20, 10, 4))


def _zeros(mask: torch.Tensor) -> int:
    return int((mask == 0).sum())


@pytest.mark.parametrize("amount", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_layer_scope_prunes_round_amount_n_in_every_layer(net, amount):
    masks = magnitude_masks(net, amount)
    assert list(masks) == ["fc1", "fc2", "fc3"]
    for name, mask in masks.items():
        n = mask.numel()
        assert _zeros(mask) == round(amount * n), name


@pytest.mark.parametrize("amount", [0.2, 0.5, 0.8])
def test_global_scope_prunes_round_amount_total(net, amount):
    masks = magnitude_masks(net, amount, scope="global")
    total = sum(m.numel() for m in masks.values())
    assert sum(_zeros(m) for m in masks.values()) == round(amount * total)


def test_masks_equal_torch_prune(net):
    masks = magnitude_masks(net, 0.3)
    for name in ("fc1", "fc2", "fc3"):
        layer = getattr(net, name)
        reference = nn.Linear(layer.in_features, layer.out_features)
        with torch.no_grad():
            reference.weight.copy_(layer.weight)
        prune.l1_unstructured(reference, "weight", amount=0.3)
        assert torch.equal(masks[name], reference.weight_mask), name


def test_global_masks_equal_torch_global_unstructured(net):
    masks = magnitude_masks(net, 0.6, scope="global")
    twin = MLP((30, 20, 10, 4))
    twin.load_state_dict(net.state_dict())
    prune.global_unstructured(
        [(twin.fc1, "weight"), (twin.fc2, "weight"), (twin.fc3, "weight")],
        pruning_method=prune.L1Unstructured,
        amount=0.6,
    )
    for name in ("fc1", "fc2", "fc3"):
        assert torch.equal(masks[name], getattr(twin, name).weight_mask), name


def test_structured_masks_equal_torch_ln_structured_and_skip_classifier(net):
    masks = magnitude_masks(net, 0.5, structured=True, norm=2)
    assert list(masks) == ["fc1", "fc2"]
    for name in ("fc1", "fc2"):
        layer = getattr(net, name)
        reference = nn.Linear(layer.in_features, layer.out_features)
        with torch.no_grad():
            reference.weight.copy_(layer.weight)
        prune.ln_structured(reference, "weight", amount=0.5, n=2, dim=0)
        assert torch.equal(masks[name], reference.weight_mask), name
        rows_dead = (masks[name].sum(1) == 0).sum().item()
        assert rows_dead == round(0.5 * layer.out_features)


def test_global_pruning_never_empties_a_layer():
    net = MLP((50, 40, 2))
    with torch.no_grad():
        net.fc2.weight.mul_(1e-4)  # the whole output layer would be pruned without the guard
    masks = magnitude_masks(net, 0.9, scope="global")
    assert masks["fc2"].sum() >= 1
    masks = magnitude_masks(net, 1.0, scope="global")
    assert all(m.sum() >= 1 for m in masks.values())


def test_masks_compose_larger_amount_prunes_a_superset(net):
    apply_masks(net, magnitude_masks(net, 0.3))
    first = current_masks(net)
    second = magnitude_masks(net, 0.6)
    for name in first:
        assert bool((second[name] <= first[name]).all()), name


def test_random_masks_counts_and_reproducibility(net):
    a = random_masks(net, 0.4, generator=torch.Generator().manual_seed(1))
    b = random_masks(net, 0.4, generator=torch.Generator().manual_seed(1))
    c = random_masks(net, 0.4, generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert all(_zeros(a[k]) == round(0.4 * a[k].numel()) for k in a)
    s = random_masks(net, 0.5, structured=True, generator=torch.Generator().manual_seed(0))
    assert (s["fc1"].sum(1) == 0).sum() == 10


def test_masked_weights_stay_zero_through_training(net, toy_data):
    model = MLP((8, 16, 2))
    apply_masks(model, magnitude_masks(model, 0.7))
    before = current_masks(model)
    train(model, toy_data, epochs=3, lr=0.5, momentum=0.9, batch_size=16, progress=False)
    for name, mask in before.items():
        weight = getattr(model, name).weight
        assert bool((weight[mask == 0] == 0).all())
    assert sparsity(model) == pytest.approx(
        sum(_zeros(m) for m in before.values()) / sum(m.numel() for m in before.values())
    )


def test_apply_masks_uses_torch_reparametrisation_and_make_permanent(net):
    apply_masks(net, magnitude_masks(net, 0.5))
    assert is_pruned(net)
    assert {"fc1.weight_orig", "fc1.weight_mask"} <= set(net.state_dict())
    layers = layer_sparsity(net)
    assert layers["fc1.weight"] == pytest.approx(0.5)
    make_permanent(net)
    assert not is_pruned(net)
    assert "fc1.weight" in net.state_dict() and "fc1.weight_mask" not in net.state_dict()
    assert sparsity(net) == pytest.approx((300 + 100 + 20) / (600 + 200 + 40))


def test_apply_masks_replaces_an_existing_mask(net):
    apply_masks(net, magnitude_masks(net, 0.8))
    apply_masks(net, {"fc1": torch.ones_like(net.fc1.weight)})
    assert sparsity(nn.Sequential(net.fc1)) == 0.0
    assert torch.equal(net.fc1.weight, net.fc1.weight_orig)


class ScriptedEvaluator:
    """Returns accuracies from a script: reference first, then one per round."""

    def __init__(self, values):
        self.values = list(values)
        self.calls = 0

    def __call__(self, model):
        value = self.values[self.calls]
        self.calls += 1
        return value


def test_iterative_prune_restores_exactly_and_stops(net):
    evaluator = ScriptedEvaluator([0.9, 0.9, 0.89, 0.5])
    history = iterative_prune(net, evaluator, step=0.2, target=0.9, tolerance=0.02)
    assert [h["accepted"] for h in history] == [True, True, False]
    assert [h["amount"] for h in history] == [0.2, pytest.approx(0.4), pytest.approx(0.6)]
    # The rejected third round was undone: the model is exactly as after round two.
    for name, mask in current_masks(net).items():
        assert _zeros(mask) == round(0.4 * mask.numel()), name


def test_restore_brings_back_weights_masks_and_optimizer_state(net, toy_data):
    model = MLP((8, 16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train(model, toy_data, epochs=1, optimizer=optimizer, progress=False)
    apply_masks(model, magnitude_masks(model, 0.0))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer_state = {
        k: v["momentum_buffer"].clone() for k, v in optimizer.state_dict()["state"].items()
    }

    def finetune(m):
        train(m, toy_data, epochs=1, optimizer=optimizer, progress=False)

    history = iterative_prune(
        model,
        ScriptedEvaluator([1.0, 0.0]),
        step=0.5,
        target=0.5,
        tolerance=0.1,
        finetune=finetune,
        optimizer=optimizer,
        mode="hard",
    )
    assert history[0]["accepted"] is False
    make_permanent_state = model.state_dict()
    for key, value in state.items():
        if key.endswith("_orig"):
            assert torch.equal(
                make_permanent_state[key.replace("_orig", "")],
                value * state[key.replace("_orig", "_mask")],
            )
    for k, buf in optimizer.state_dict()["state"].items():
        assert torch.equal(buf["momentum_buffer"], optimizer_state[k])


def test_halving_the_step_after_a_rejection(net):
    evaluator = ScriptedEvaluator([1.0, 0.0, 1.0, 1.0])
    history = iterative_prune(net, evaluator, step=0.4, target=0.4, tolerance=0.1, min_step=0.1)
    assert [(h["step"], h["accepted"]) for h in history] == [(0.4, False), (0.2, True), (0.2, True)]


def test_soft_mode_keeps_values_hard_mode_erases_them(net):
    original = net.fc1.weight.detach().clone()
    soft = MLP((30, 20, 10, 4))
    soft.load_state_dict(net.state_dict())
    iterative_prune(soft, lambda m: 1.0, step=0.5, target=0.5, tolerance=0.0, mode="soft")
    assert is_pruned(soft) and torch.equal(soft.fc1.weight_orig.detach(), original)
    iterative_prune(net, lambda m: 1.0, step=0.5, target=0.5, tolerance=0.0, mode="hard")
    assert not is_pruned(net)
    assert sparsity(net) == pytest.approx(0.5, abs=0.01)


def test_structured_iterative_prune_counts_neurons(net):
    iterative_prune(
        net, lambda m: 1.0, step=0.25, target=0.5, tolerance=0.0, structured=True, mode="hard"
    )
    assert structured_sparsity(net) == pytest.approx(0.5)
    assert (net.fc1.weight.abs().sum(1) == 0).sum() == 10


# --------------------------------------------------------------------------- masks from any scores
from companion.pruning import masks_from_scores  # noqa: E402


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("norm", [1, 2])
def test_magnitude_masks_are_masks_from_absolute_weights(net, structured, scope, norm):
    apply_masks(net, magnitude_masks(net, 0.2))  # already-masked weights must rank lowest in both
    scores = {
        name: m.weight.detach().abs() for name, m in net.named_children() if name != "dropout"
    }
    for amount in (0.0, 0.3, 0.6, 1.0):
        expected = magnitude_masks(net, amount, scope=scope, structured=structured, norm=norm)
        got = masks_from_scores(net, scores, amount, scope=scope, structured=structured, norm=norm)
        assert list(got) == list(expected)
        assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_masks_from_scores_ranks_units_by_the_norm_of_their_scores():
    net = MLP((3, 4, 2))
    scores = {
        "fc1": torch.tensor([[1.5, 1.5, 1.5], [3.0, 0.0, 0.0], [0.0, 0.0, 0.1], [2.0, 2.0, 2.0]])
    }
    l1 = masks_from_scores(net, scores, 0.5, structured=True, norm=1)["fc1"]
    assert l1[:, 0].tolist() == [1.0, 0.0, 0.0, 1.0]  # row sums 4.5, 3, 0.1, 6
    linf = masks_from_scores(net, scores, 0.5, structured=True, norm=float("inf"))["fc1"]
    assert linf[:, 0].tolist() == [0.0, 1.0, 0.0, 1.0]  # row maxima 1.5, 3, 0.1, 2
    assert list(masks_from_scores(net, scores, 0.5)) == ["fc1"]  # only scored layers get masks


def test_masks_from_scores_accepts_negative_scores_and_keeps_masked_weights_pruned():
    net = MLP((4, 2))
    apply_masks(net, {"fc1": torch.tensor([[1.0, 1.0, 1.0, 0.0]] * 2)})
    scores = {"fc1": torch.tensor([[-5.0, -1.0, -2.0, 9.0]] * 2)}
    mask = masks_from_scores(net, scores, 0.5)["fc1"]
    # the masked column ranks below every score, even a negative one; then the two -5 go
    assert mask.tolist() == [[0.0, 1.0, 1.0, 0.0]] * 2


@pytest.mark.parametrize(
    ("scores", "error", "message"),
    [
        ([1.0], TypeError, r"scores must be a dict"),
        ({"fc9": torch.ones(3, 4)}, ValueError, r"scores names 'fc9'"),
        ({"fc1": torch.ones(4, 3)}, ValueError, r"scores\['fc1'\] has shape \(4, 3\)"),
        ({"fc1": [1.0]}, TypeError, r"scores\['fc1'\] must be a tensor"),
        ({"fc1": torch.full((3, 4), float("nan"))}, ValueError, r"must be finite"),
    ],
)
def test_masks_from_scores_rejects_bad_scores(scores, error, message):
    with pytest.raises(error, match=message):
        masks_from_scores(MLP((4, 3, 2)), scores, 0.5)


def test_masks_from_scores_needs_a_layer_it_may_prune():
    net = MLP((4, 3, 2))
    with pytest.raises(ValueError, match=r"scores cover no layer that may be pruned"):
        masks_from_scores(net, {"fc2": torch.ones(2, 3)}, 0.5, structured=True)


def test_saliency_scores_feed_masks_from_scores(net):
    from torch.utils.data import TensorDataset

    from companion.saliency import saliency_scores

    magnitude = saliency_scores(net, None, "magnitude")
    for structured in (False, True):
        expected = magnitude_masks(net, 0.5, structured=structured)
        got = masks_from_scores(net, magnitude, 0.5, structured=structured)
        assert all(torch.equal(got[k], expected[k]) for k in expected) and list(got) == list(
            expected
        )
    data = TensorDataset(torch.randn(16, 30), torch.randint(0, 4, (16,)))
    masks = masks_from_scores(net, saliency_scores(net, data, "taylor"), 0.5, scope="global")
    total = sum(m.numel() for m in masks.values())
    assert sum(_zeros(m) for m in masks.values()) == round(0.5 * total)
