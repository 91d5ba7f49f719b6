"""Saliency criteria (magnitude, Taylor, OBD, empirical Fisher) and N:M masks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from companion import pruning, saliency
from companion.masks import apply_masks, current_masks, prunable_layers
from companion.saliency import nm_masks, saliency_scores

DATA_CRITERIA = ("taylor", "obd", "fisher")


def _classification_data(n: int, features: int, classes: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    return TensorDataset(x, y)


def _seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for parameter in module.parameters():
        nn.init.normal_(parameter, std=0.5)
    return module.double()


def _mlp() -> nn.Module:
    return _seeded(
        nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    )


def _convnet() -> nn.Module:
    return _seeded(
        nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(3, 4, 2, stride=2, groups=1, padding_mode="zeros"),
            nn.Flatten(),
            nn.Linear(4 * 2 * 2, 3),
        )
    )


def _grouped_convnet() -> nn.Module:
    """Conv2d with groups and dilation (unfolded), reflect padding and Conv1d (vmap fallback)."""
    return _seeded(
        nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=2, dilation=2, groups=2),
            nn.Tanh(),
            nn.Conv2d(4, 2, 3, padding=1, padding_mode="reflect"),
            nn.Flatten(2),  # (N, 2, 16): a sequence for Conv1d
            nn.Conv1d(2, 3, 4, stride=4),
            nn.Flatten(),
            nn.Linear(3 * 4, 3),
        )
    )


def _image_data(n: int = 12, seed: int = 1) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.randn(n, 2, 4, 4, generator=g, dtype=torch.float64),
        torch.randint(0, 3, (n,), generator=g),
    )


def _effective_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _reference_ggn_obd(model: nn.Module, data: TensorDataset) -> dict[str, torch.Tensor]:
    """1/2 diag(sum_n J_n^T H_n J_n / N) w^2 with the Jacobians from torch.func.jacrev."""
    params = _effective_params(model)
    x, _ = data.tensors
    scores = {}
    for name in prunable_layers(model):
        key = f"{name}.weight"
        weight = params[key]

        def logits_of(w: torch.Tensor, example: torch.Tensor, key: str = key) -> torch.Tensor:
            return torch.func.functional_call(model, {**params, key: w}, (example[None],))[0]

        diagonal = torch.zeros_like(weight)
        for example in x:
            jacobian = torch.func.jacrev(logits_of)(weight, example).flatten(1)  # (C, P)
            p = torch.softmax(logits_of(weight, example), 0)
            hessian = torch.diag(p) - torch.outer(p, p)
            diagonal += torch.einsum("cp,cd,dp->p", jacobian, hessian, jacobian).view_as(weight)
        scores[name] = 0.5 * diagonal / len(x) * weight.square()
    return scores


def _assert_close(scores: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert scores.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(scores[name], expected[name], rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- OBD


def test_obd_equals_half_hessian_diagonal_times_w_squared_for_a_linear_model() -> None:
    data = _classification_data(20, 5, 3)
    model = _seeded(nn.Linear(5, 3))
    x, y = data.tensors
    weight, bias = model.weight.detach(), model.bias.detach()
    hessian = torch.autograd.functional.hessian(
        lambda w: F.cross_entropy(F.linear(x, w, bias), y), weight
    )
    diagonal = torch.diagonal(hessian.reshape(weight.numel(), weight.numel())).view_as(weight)
    expected = 0.5 * diagonal * weight.square()
    scores = saliency_scores(nn.Sequential(model), data, "obd", batch_size=7)
    torch.testing.assert_close(scores["0"], expected, rtol=1e-9, atol=1e-12)


def test_obd_with_a_custom_loss_uses_its_curvature() -> None:
    """Squared error: the Hessian in the logits is 2I; for a linear model GGN = Hessian."""
    data = _classification_data(16, 4, 3, seed=2)
    model = _seeded(nn.Linear(4, 3))
    x, y = data.tensors
    target = F.one_hot(y, 3).double()

    def squared_error(logits: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return (logits - F.one_hot(batch[1], 3).to(logits.dtype)).square().sum(1).mean()

    weight, bias = model.weight.detach(), model.bias.detach()
    hessian = torch.autograd.functional.hessian(
        lambda w: (F.linear(x, w, bias) - target).square().sum(1).mean(), weight
    )
    diagonal = torch.diagonal(hessian.reshape(weight.numel(), weight.numel())).view_as(weight)
    scores = saliency_scores(nn.Sequential(model), data, "obd", loss_fn=squared_error)
    torch.testing.assert_close(scores["0"], 0.5 * diagonal * weight.square())


def test_obd_custom_cross_entropy_matches_the_built_in_one() -> None:
    data = _classification_data(30, 6, 3)
    model = _mlp()
    built_in = saliency_scores(model, data, "obd")
    custom = saliency_scores(
        model, data, "obd", loss_fn=lambda logits, batch: F.cross_entropy(logits, batch[1])
    )
    _assert_close(custom, built_in)


@pytest.mark.parametrize(
    "make", [_mlp, _convnet, _grouped_convnet], ids=["mlp", "convnet", "grouped-convnet"]
)
def test_obd_is_the_exact_gauss_newton_diagonal_of_a_deep_model(make) -> None:
    model = make()
    data = _classification_data(12, 6, 3) if make is _mlp else _image_data()
    _assert_close(
        saliency_scores(model, data, "obd", batch_size=5), _reference_ggn_obd(model, data)
    )


def test_obd_handles_a_linear_layer_on_sequences_and_a_shared_layer() -> None:
    """Paths without the outer-product shortcut: Linear on (N, T, d) and a layer used twice."""

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mix = nn.Linear(3, 3)
            self.head = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hidden = torch.tanh(self.mix(torch.tanh(self.mix(x))))  # self.mix called twice
            return self.head(hidden.mean(1))  # x is (N, T, 3)

    model = _seeded(Shared())
    g = torch.Generator().manual_seed(3)
    data = TensorDataset(
        torch.randn(9, 4, 3, generator=g, dtype=torch.float64),
        torch.randint(0, 2, (9,), generator=g),
    )
    _assert_close(
        saliency_scores(model, data, "obd", batch_size=4), _reference_ggn_obd(model, data)
    )


def test_obd_rejects_logits_that_are_not_two_dimensional() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.Unflatten(1, (1, 2)))
    data = TensorDataset(torch.randn(4, 3), torch.zeros(4, 1, 2))
    with pytest.raises(ValueError, match="logits of shape"):
        saliency_scores(model, data, "obd", loss_fn=lambda out, b: (out - b[1]).square().mean())


# --------------------------------------------------------------------------- Taylor and Fisher


def test_taylor_is_weight_times_full_data_gradient() -> None:
    data = _classification_data(25, 6, 3)
    model = _mlp()
    reference = copy.deepcopy(model)
    F.cross_entropy(reference(data.tensors[0]), data.tensors[1]).backward()
    expected = {
        name: (m.weight * m.weight.grad).abs().detach()
        for name, m in prunable_layers(reference).items()
    }
    _assert_close(saliency_scores(model, data, "taylor", batch_size=8), expected)


@pytest.mark.parametrize(
    "make", [_mlp, _convnet, _grouped_convnet], ids=["mlp", "convnet", "grouped-convnet"]
)
def test_fisher_is_half_mean_squared_per_example_gradient_times_w_squared(make) -> None:
    model = make()
    data = _classification_data(12, 6, 3) if make is _mlp else _image_data()
    reference = copy.deepcopy(model)
    layers = prunable_layers(reference)
    squares = {name: torch.zeros_like(m.weight) for name, m in layers.items()}
    for x, y in zip(*data.tensors, strict=True):
        reference.zero_grad()
        F.cross_entropy(reference(x[None]), y[None]).backward()
        for name, m in layers.items():
            squares[name] += m.weight.grad.square()
    expected = {
        name: 0.5 * squares[name] / len(data) * m.weight.detach().square()
        for name, m in layers.items()
    }
    _assert_close(saliency_scores(model, data, "fisher", batch_size=5), expected)


# --------------------------------------------------------------------------- magnitude


def _keep_largest(scores: dict[str, torch.Tensor], amount: float, scope: str) -> dict:
    """Masks that keep the highest scores, counted as magnitude_masks counts (no ties here)."""
    if scope == "layer":
        masks = {}
        for name, score in scores.items():
            keep = torch.zeros(score.numel())
            n_keep = score.numel() - round(amount * score.numel())
            keep[torch.topk(score.flatten(), n_keep).indices] = 1.0
            masks[name] = keep.view_as(score)
        return masks
    flat = torch.cat([s.flatten() for s in scores.values()])
    threshold = torch.topk(flat, flat.numel() - round(amount * flat.numel())).values.min()
    return {name: (s >= threshold).float() for name, s in scores.items()}


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_scores_reproduce_magnitude_masks(scope) -> None:
    model = _mlp().float()
    scores = saliency_scores(model, None, "magnitude")
    for amount in (0.3, 0.7):
        expected = pruning.magnitude_masks(model, amount, scope=scope)
        masks = _keep_largest(scores, amount, scope)
        assert masks.keys() == expected.keys()
        for name in expected:
            assert torch.equal(masks[name], expected[name])


# --------------------------------------------------------------------------- the model is not touched


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("criterion", ["magnitude", *DATA_CRITERIA])
def test_scores_never_touch_weights_gradients_or_modes(criterion) -> None:
    model = _seeded(
        nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Dropout(0.5), nn.Linear(5, 3))
    )
    data = _classification_data(20, 6, 3)
    apply_masks(
        model, {"0": (torch.rand(5, 6, generator=torch.Generator().manual_seed(0)) > 0.3).double()}
    )
    model[3].bias.grad = torch.full_like(model[3].bias, 7.0)  # a gradient left from training
    model.train()
    model[2].eval()  # a submodule with its own flag
    before = _state(model)
    first = saliency_scores(model, data, criterion)
    second = saliency_scores(model, data, criterion)
    after = _state(model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics too
    assert torch.equal(model[3].bias.grad, torch.full_like(model[3].bias, 7.0))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "3.bias")
    assert [m.training for m in model.modules()] == [True, True, True, False, True]
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert model[0].weight.grad_fn is None  # the masked weight holds no graph
    for name in first:  # eval mode: dropout does not make the scores random
        assert torch.equal(first[name], second[name])


@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_masked_weights_score_zero_and_scores_follow_effective_weights(criterion) -> None:
    model = _mlp()
    data = _classification_data(15, 6, 3)
    g = torch.Generator().manual_seed(4)
    masks = {
        name: (torch.rand(m.weight.shape, generator=g) > 0.4).double()
        for name, m in prunable_layers(model).items()
    }
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for name, m in prunable_layers(zeroed).items():
            m.weight.mul_(masks[name])
    apply_masks(model, masks)
    masked_scores = saliency_scores(model, data, criterion)
    _assert_close(masked_scores, saliency_scores(zeroed, data, criterion))
    for name, mask in masks.items():
        assert bool((masked_scores[name][mask == 0] == 0).all())


@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_scores_do_not_depend_on_batch_size_and_work_with_frozen_parameters(
    criterion, monkeypatch
) -> None:
    model = _grouped_convnet()
    data = _image_data(10)
    reference = saliency_scores(model, data, criterion, batch_size=10)
    monkeypatch.setattr(saliency, "_PER_EXAMPLE_CHUNK", 2)  # per-example gradients in chunks
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    _assert_close(saliency_scores(model, data, criterion, batch_size=3), reference)


def test_in_place_activations_do_not_corrupt_the_scores() -> None:
    model = _seeded(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)))
    in_place = copy.deepcopy(model)
    in_place[1] = nn.ReLU(inplace=True)
    data = _classification_data(20, 6, 3)
    _assert_close(saliency_scores(in_place, data, "obd"), saliency_scores(model, data, "obd"))


def test_scores_on_the_device(device) -> None:
    model = _convnet()
    data = _image_data(8)
    expected = saliency_scores(model, data, "obd")
    moved = copy.deepcopy(model).to(device)
    on_device = TensorDataset(*(t.to(device) for t in data.tensors))
    scores = saliency_scores(moved, on_device, "obd")
    for name in expected:
        assert scores[name].device.type == device
        torch.testing.assert_close(scores[name].cpu(), expected[name])


def test_saliency_bad_input() -> None:
    model = _mlp()
    data = _classification_data(8, 6, 3)
    with pytest.raises(ValueError, match="criterion must be one of"):
        saliency_scores(model, data, "hessian")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        saliency_scores("net", data, "obd")
    with pytest.raises(ValueError, match="no prunable"):
        saliency_scores(nn.ReLU(), data, "obd")
    with pytest.raises(TypeError, match="TensorDataset"):
        saliency_scores(model, None, "taylor")
    with pytest.raises(ValueError, match="batch_size"):
        saliency_scores(model, data, "obd", batch_size=0)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        saliency_scores(model, data, "obd", loss_fn="mse")
    with pytest.raises(ValueError, match="outside|class"):
        saliency_scores(model, TensorDataset(data.tensors[0], data.tensors[1] + 5), "fisher")
    with pytest.raises(TypeError, match="integer"):
        saliency_scores(model, TensorDataset(data.tensors[0], data.tensors[0][:, 0]), "obd")


# --------------------------------------------------------------------------- N:M masks


def _groups(mask: torch.Tensor, m: int) -> torch.Tensor:
    return mask.flatten(1).reshape(mask.shape[0], -1, m)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8), (3, 3)])
def test_nm_masks_keep_exactly_the_n_largest_in_every_group(n, m) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 6))
    masks = nm_masks(model, n, m)
    assert set(masks) == {"0", "2"}  # the output layer is covered, as in magnitude_masks
    for name, module in prunable_layers(model).items():
        mask = masks[name]
        assert mask.shape == module.weight.shape
        kept = _groups(mask, m)
        assert bool((kept.sum(-1) == n).all())
        magnitudes = _groups(module.weight.detach().abs(), m)
        smallest_kept = torch.where(kept == 1, magnitudes, torch.inf).amin(-1)
        largest_dropped = torch.where(kept == 0, magnitudes, -torch.inf).amax(-1)
        assert bool((smallest_kept > largest_dropped).all())
    apply_masks(model, masks)
    assert pruning.sparsity(model) == pytest.approx(1 - n / m, abs=0.02)


def test_nm_masks_group_a_convolution_along_in_channels_times_kernel() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 2)  # rows of 4 * 2 * 2 = 16 weights
    masks = nm_masks(nn.Sequential(conv), 2, 4)
    groups = conv.weight.detach().flatten(1).abs().view(6, 4, 4)  # (filter, group, 4)
    expected = torch.zeros_like(groups).scatter_(-1, groups.topk(2, dim=-1).indices, 1.0)
    assert torch.equal(masks["0"], expected.view_as(conv.weight))


def test_nm_masks_rank_by_given_scores_and_cover_chosen_layers() -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2))
    scores = {"0": torch.arange(32.0).view(4, 8)}  # the later weight of each pair wins
    masks = nm_masks(model, 1, 2, scores=scores)
    assert list(masks) == ["0"]
    assert masks["0"].tolist() == [[0.0, 1.0] * 4] * 4
    assert list(nm_masks(model, 2, 4, layers=["1"])) == ["1"]


def test_nm_masks_rank_masked_weights_lowest() -> None:
    layer = nn.Linear(4, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[5.0, 4.0, -0.1, 0.2]]))
    model = apply_masks(nn.Sequential(layer), {"0": torch.tensor([[0.0, 1.0, 1.0, 1.0]])})
    assert nm_masks(model, 2, 4)["0"].tolist() == [[0.0, 1.0, 0.0, 1.0]]
    assert current_masks(model)["0"].tolist() == [[0.0, 1.0, 1.0, 1.0]]  # not changed


def test_nm_masks_bad_input() -> None:
    model = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"layer '0': rows of 6 weights .* groups of m=4"):
        nm_masks(model, 2, 4)
    with pytest.raises(ValueError, match=r"n must be in \[1, m\]"):
        nm_masks(model, 5, 4, layers=["1"])
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        nm_masks(model, 0, 4)
    with pytest.raises(TypeError, match="m must be an int"):
        nm_masks(model, 2, 4.0)
    with pytest.raises(ValueError, match="not a prunable layer"):
        nm_masks(model, 2, 4, layers=["fc"])
    with pytest.raises(TypeError, match="layers must be a sequence"):
        nm_masks(model, 2, 4, layers="1")
    with pytest.raises(ValueError, match="scores has no entry"):
        nm_masks(model, 2, 4, scores={"0": torch.ones(4, 6)}, layers=["1"])
    with pytest.raises(ValueError, match="has shape"):
        nm_masks(model, 2, 4, scores={"1": torch.ones(4, 2)})
    with pytest.raises(TypeError, match="scores must be a dict"):
        nm_masks(model, 2, 4, scores=[1])
