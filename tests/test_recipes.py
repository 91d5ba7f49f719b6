"""Chapter 6's pieces: the 28x28 ResNet-18, block-channel pruning that shrink can delete, the
recovery protocol over seeds and the cost table."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from companion import recipes
from companion.distillation import Recipe
from companion.metrics import count_parameters
from companion.models import MLP
from companion.speed import flops
from companion.stats import Summary, summarize
from companion.surgery import shrink


@pytest.fixture(scope="module")
def trained_resnet() -> nn.Module:
    """A ResNet-18 with non-trivial BatchNorm statistics (a few forward passes in train mode)."""
    torch.manual_seed(0)
    net = recipes.resnet18_28x28()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(16, 1, 28, 28))
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.bias.normal_(0, 0.5)  # nonzero: a masked filter alone is not dead
    return net.eval()


def test_resnet18_28x28_shapes_and_stem():
    net = recipes.resnet18_28x28(num_classes=7, in_channels=3)
    assert net(torch.zeros(2, 3, 28, 28)).shape == (2, 7)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (2, 2)
    assert isinstance(net.maxpool, nn.MaxPool2d)  # kept: the stages run at 7, 4, 2, 1 pixels
    assert net.example_input_shape == (3, 28, 28)
    assert flops(recipes.resnet18_28x28()) == 65_018_368  # one 28x28 image


@pytest.mark.parametrize("bad", [0, -1, 2.0])
def test_resnet18_28x28_rejects_bad_counts(bad):
    with pytest.raises((ValueError, TypeError), match="num_classes"):
        recipes.resnet18_28x28(num_classes=bad)


def test_residual_blocks_of_resnet18_and_other_models():
    assert list(recipes.residual_blocks(recipes.resnet18_28x28())) == [
        f"layer{s}.{b}" for s in range(1, 5) for b in range(2)
    ]
    with pytest.raises(ValueError, match="no residual block"):
        recipes.residual_blocks(MLP((4, 3)))
    with pytest.raises(TypeError, match="model"):
        recipes.residual_blocks("resnet")


def test_block_channel_masks_prune_the_weakest_filters_of_each_block(trained_resnet):
    masks = recipes.block_channel_masks(trained_resnet, 0.75)
    assert sorted(masks) == sorted(f"{b}.conv1" for b in recipes.residual_blocks(trained_resnet))
    for name, mask in masks.items():
        kept = mask.flatten(1).all(dim=1)
        assert bool((mask.flatten(1).any(dim=1) == kept).all())  # whole filters only
        weight = dict(trained_resnet.named_modules())[name].weight
        assert int(kept.sum()) == weight.shape[0] // 4
        norms = weight.detach().flatten(1).abs().sum(1)
        assert norms[kept].min() >= norms[~kept].max()


@pytest.mark.parametrize("amount", [-0.1, 1.0, 1.5])
def test_block_channel_masks_reject_bad_amounts(trained_resnet, amount):
    with pytest.raises(ValueError, match="amount"):
        recipes.block_channel_masks(trained_resnet, amount)


def test_pruned_channels_are_dead_and_shrink_deletes_them(trained_resnet):
    before = {k: v.clone() for k, v in trained_resnet.state_dict().items()}
    pruned = recipes.prune_block_channels(trained_resnet, 0.5)
    assert all(torch.equal(v, trained_resnet.state_dict()[k]) for k, v in before.items())
    x = torch.rand(8, 1, 28, 28)
    small = shrink(pruned, x)
    assert count_parameters(small) < 0.55 * count_parameters(trained_resnet)
    for block in recipes.residual_blocks(small).values():
        assert block.conv1.out_channels == block.conv2.in_channels == block.bn1.num_features
    assert small.layer1[0].conv1.out_channels == 32 and small.layer4[1].conv1.out_channels == 256
    assert small.layer1[0].conv2.out_channels == 64  # the residual stream is untouched
    with torch.no_grad():
        torch.testing.assert_close(small(x), pruned(x), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(pruned(x), trained_resnet(x), atol=1e-3)


def test_masking_the_filters_alone_leaves_a_constant_that_blocks_shrink(trained_resnet):
    # Without zeroing the BatchNorm, a masked filter still outputs relu(beta - ...): not dead.
    from companion.masks import apply_masks
    from companion.utils import clone_model

    masked = apply_masks(
        clone_model(trained_resnet), recipes.block_channel_masks(trained_resnet, 0.5)
    )
    small = shrink(masked, torch.rand(4, 1, 28, 28))
    assert count_parameters(small) == count_parameters(trained_resnet)


def _toy(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())


def test_recovery_arms_protocol():
    train, val, test = _toy(64, 0), _toy(32, 1), _toy(32, 2)
    torch.manual_seed(0)
    student = MLP((6, 8, 3))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    logits = torch.randn(64, 3)
    fast = Recipe(epochs=2, batch_size=16)
    runs = recipes.recovery_arms(
        student, train, val, test, teacher_logits=logits, seeds=[0, 1, 2],
        learning_rates=[0.05, 0.5], recipe=fast,
    )  # fmt: skip
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())
    assert list(runs.test) == list(recipes.ARMS) and runs.seeds == [0, 1, 2]
    for arm in recipes.ARMS:
        assert sorted(runs.validation[arm]) == [0.05, 0.5]
        best = max(runs.validation[arm].values())
        assert runs.validation[arm][runs.chosen[arm]] == best
        assert len(runs.test[arm]) == 3 and all(0 <= a <= 1 for a in runs.test[arm])
        assert not runs.models[arm].training
        assert isinstance(runs.summary(arm), Summary) and runs.summary(arm).n == 3
    assert runs.difference("distilled", "fine-tuned").n == 3
    # The arms differ in their loss only: the same seed and rate give the same first model
    # when the loss is the same, and a different one otherwise.
    again = recipes.recovery_arms(
        student, train, val, test, teacher_logits=logits, seeds=[0],
        learning_rates=[0.05, 0.5], recipe=fast,
    )  # fmt: skip
    assert again.test == {arm: values[:1] for arm, values in runs.test.items()}


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"seeds": []}, ValueError, "seeds"),
        ({"seeds": [-1]}, ValueError, "seeds"),
        ({"learning_rates": []}, ValueError, "learning_rates"),
        ({"learning_rates": [0.0]}, ValueError, "learning_rates"),
    ],
)
def test_recovery_arms_rejects_bad_arguments(kwargs, error, match):
    ds = _toy(8, 0)
    arguments = {"teacher_logits": torch.zeros(8, 3), "seeds": [0]} | kwargs
    with pytest.raises(error, match=match):
        recipes.recovery_arms(MLP((6, 3)), ds, ds, ds, **arguments)
    with pytest.raises(TypeError, match="student"):
        recipes.recovery_arms("net", ds, ds, ds, teacher_logits=torch.zeros(8, 3), seeds=[0])


def test_cost_table_measures_without_changing_the_models(trained_resnet):
    pruned = recipes.prune_block_channels(trained_resnet, 0.75)
    small = shrink(pruned, torch.rand(2, 1, 28, 28))
    small.train()  # measuring must restore it
    accuracy = {"dense": 0.9, "shrunk": summarize([0.8, 0.81, 0.79])}
    table = recipes.cost_table(
        {"dense": trained_resnet, "shrunk": small}, accuracy, batch_sizes=(1, 4), rounds=2,
        min_run_time=0.01,
    )  # fmt: skip
    assert table.columns == ["model", "accuracy", "params", "MFLOPs", "ms@1", "ms@4"]
    assert table.column("params") == [count_parameters(trained_resnet), count_parameters(small)]
    assert table.column("MFLOPs")[0] == pytest.approx(65.018368)
    assert table.column("MFLOPs")[1] < table.column("MFLOPs")[0] / 2
    assert all(t > 0 for t in table.column("ms@4"))
    assert small.training and not trained_resnet.training
    with pytest.raises(ValueError, match="accuracy has no entry"):
        recipes.cost_table({"dense": trained_resnet}, {}, rounds=1)
    with pytest.raises(ValueError, match="models"):
        recipes.cost_table({}, {})
