"""The output layers come from the graph, attention layers are not pruned, and pruned units are dead.

Issue 12: structured pruning protected "the last prunable layer in definition order", so a model
that defines its classifier first lost class rows, and a SqueezeNet-style final Conv2d was not
recognised; the Linear inside ``nn.MultiheadAttention`` was masked and training then failed; a
pruned filter followed by a BatchNorm still output the BatchNorm's bias.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from companion.convnets import LeNet5
from companion.masks import (
    apply_masks,
    batchnorm_after,
    current_masks,
    make_permanent,
    output_layers,
    prunable_layers,
)
from companion.models import MLP, lenet_300_100
from companion.penalties import group_lasso_penalty, group_soft_threshold_
from companion.pruning import (
    iterative_prune,
    magnitude_masks,
    masks_from_scores,
    random_masks,
    structured_sparsity,
)
from companion.soft import GradualPruner, SoftPruner

CLASSES = 10


class ClassifierFirst(nn.Module):
    """Defines its classifier before the encoder (issue 12's model)."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Linear(16, CLASSES)
        self.encoder = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.encoder(x)))


class NestedClassifier(nn.Module):
    """The classifier sits in a nested module, defined first, with dropout and flatten after."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.ModuleDict({"fc": nn.Linear(12, CLASSES)})
        self.body = nn.ModuleList([nn.Linear(6, 24), nn.Linear(24, 12)])
        self.drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.body:
            x = torch.relu(layer(x))
        return torch.flatten(self.head["fc"](self.drop(x)), 1)


class ConvClassifier(nn.Module):
    """SqueezeNet's ending: the last Conv2d's output channels are the classes, then pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU())
        self.classifier = nn.Sequential(
            nn.Dropout(0.0), nn.Conv2d(16, CLASSES, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


class DataDependent(nn.Module):
    """torch.fx cannot trace it: Python control flow on a tensor value."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.body = nn.Linear(4, 8)
        self.norm = nn.BatchNorm1d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.body(x))
        if h.sum() > 0:
            h = h * 2
        return self.head(torch.relu(h))


class WithShape(DataDependent):
    example_input_shape = (4,)


def _class_rows_intact(masks: dict[str, torch.Tensor], name: str) -> bool:
    return name not in masks or bool((masks[name].flatten(1).sum(1) > 0).all())


# --------------------------------------------------------------------------- item 2: the graph


def test_book_models_output_layer_is_their_last_layer():
    assert output_layers(MLP((4, 3, 2))) == ["fc2"]
    assert output_layers(lenet_300_100()) == ["fc3"]
    assert output_layers(LeNet5()) == ["fc3"]


@pytest.mark.parametrize(
    ("make", "head", "shape"),
    [
        (ClassifierFirst, "classifier", (8,)),
        (NestedClassifier, "head.fc", (6,)),
        (ConvClassifier, "classifier.1", (1, 9, 9)),
    ],
)
def test_nested_and_conv_classifiers_keep_all_class_rows(make, head, shape):
    torch.manual_seed(0)
    net = make()
    assert output_layers(net) == [head]
    hidden = [name for name in prunable_layers(net) if name != head]
    for masks in (
        magnitude_masks(net, 0.5, structured=True),
        magnitude_masks(net, 0.5, structured=True, scope="global"),
        random_masks(net, 0.5, structured=True, generator=torch.Generator().manual_seed(0)),
    ):
        assert sorted(masks) == sorted(hidden)
        rows = sum(m.shape[0] for m in masks.values())
        dead = sum(int((m.flatten(1).sum(1) == 0).sum()) for m in masks.values())
        assert dead == round(0.5 * rows)  # the hidden rows do go
    history = iterative_prune(
        net, lambda m: 1.0, step=0.25, target=0.5, tolerance=0.0, structured=True
    )
    assert history[-1]["amount"] == 0.5
    assert _class_rows_intact(current_masks(net), head)
    assert structured_sparsity(net) == pytest.approx(0.5)
    x = torch.rand(3, *shape)
    assert net(x).shape == (3, CLASSES)


def test_soft_and_gradual_pruners_and_group_threshold_keep_the_class_rows():
    torch.manual_seed(0)
    net = ClassifierFirst()
    pruner = SoftPruner(net, 0.5, structured=True)
    pruner.on_epoch_end(1)
    assert "classifier" not in pruner.masks
    assert bool((net.classifier.weight.abs().sum(1) > 0).all())
    assert int((net.encoder[0].weight.abs().sum(1) == 0).sum()) == 16
    torch.manual_seed(0)
    net = ClassifierFirst()
    GradualPruner(net, final=0.5, duration=1, structured=True).on_step(1)
    assert not hasattr(net.classifier, "weight_mask")
    torch.manual_seed(0)
    net = ClassifierFirst()
    before = net.classifier.weight.detach().clone()
    group_soft_threshold_(net, 10.0)  # large enough to zero every row it may touch
    assert torch.equal(net.classifier.weight.detach(), before)
    assert float(net.encoder[0].weight.detach().abs().sum()) == 0.0


def test_multiple_outputs_are_all_protected():
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.logits, self.aux = nn.Linear(8, 3), nn.Linear(8, 2)
            self.body = nn.Linear(4, 8)

        def forward(self, x):
            h = torch.relu(self.body(x))
            return {"logits": self.logits(h), "aux": self.aux(h)}

    assert output_layers(TwoHeads()) == ["logits", "aux"]
    assert list(magnitude_masks(TwoHeads(), 0.5, structured=True)) == ["body"]


def test_exclude_protects_more_layers_and_is_validated():
    net = MLP((6, 5, 4, 3))
    assert output_layers(net, exclude=["fc1"]) == ["fc1", "fc3"]
    assert list(magnitude_masks(net, 0.5, structured=True, exclude=["fc1"])) == ["fc2"]
    assert list(magnitude_masks(net, 0.5, exclude=["fc3"])) == ["fc1", "fc2"]  # unstructured too
    assert structured_sparsity(net, exclude=["fc2"]) == 0.0
    with pytest.raises(ValueError, match=r"exclude names 'fc9', which is not a prunable layer"):
        magnitude_masks(net, 0.5, exclude=["fc9"])
    with pytest.raises(TypeError, match=r"exclude must be a list of layer names"):
        magnitude_masks(net, 0.5, exclude="fc1")
    with pytest.raises(ValueError, match=r"structured pruning needs a hidden layer"):
        magnitude_masks(net, 0.5, structured=True, exclude=["fc1", "fc2"])
    with pytest.raises(ValueError, match=r"leaves no layer to prune"):
        random_masks(net, 0.5, exclude=["fc1", "fc2", "fc3"])


def test_untraceable_model_falls_back_to_a_forward_pass_without_changing_it():
    torch.manual_seed(0)
    net = WithShape().train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    assert output_layers(net) == ["head"]  # from a forward pass on example_input_shape
    assert net.training and net.norm.training
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())  # stats unchanged
    plain = DataDependent()
    assert output_layers(plain, example_input=torch.rand(2, 4)) == ["head"]
    with pytest.raises(ValueError, match=r"cannot find the output layers.*pass exclude="):
        magnitude_masks(plain, 0.5, structured=True)
    assert list(magnitude_masks(plain, 0.5, structured=True, exclude=["head"])) == ["body"]
    assert list(magnitude_masks(plain, 0.5)) == ["head", "body"]  # unstructured needs no trace


def test_a_single_layer_is_its_own_output_layer():
    assert output_layers(nn.Linear(3, 2)) == [""]
    with pytest.raises(ValueError, match=r"structured pruning needs a hidden layer"):
        magnitude_masks(nn.Linear(3, 2), 0.5, structured=True)


def test_torchvision_squeezenet_protects_its_conv_classifier():
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.squeezenet1_0(num_classes=CLASSES)
    assert output_layers(net) == ["classifier.1"]
    assert "classifier.1" not in magnitude_masks(net, 0.3, structured=True)


# --------------------------------------------------------------------------- attention


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h, _ = self.attention(h, h, h)
        return self.head(h.mean(1))


def test_layers_owned_by_multihead_attention_are_not_prunable():
    assert list(prunable_layers(Attention())) == ["embed", "head"]
    with pytest.raises(ValueError, match=r"not a prunable layer"):
        apply_masks(Attention(), {"attention.out_proj": torch.ones(8, 8)})


def test_training_a_masked_model_with_attention_works():
    torch.manual_seed(0)
    net = Attention()
    apply_masks(net, magnitude_masks(net, 0.5))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(16, 5, 4), torch.randint(0, 3, (16,))
    losses = []
    for _ in range(3):  # the second backward failed when out_proj was masked
        optimizer.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert int((net.embed.weight == 0).sum()) == 16  # the mask still holds


# --------------------------------------------------------------------------- item 3: dead units


def conv_bn(affine: bool = True) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 6, 3),
        nn.BatchNorm2d(6, affine=affine),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 6 * 6, 3),
    )


@pytest.mark.parametrize("affine", [True, False])
def test_pruned_conv_channel_before_batchnorm_is_exactly_zero(affine):
    torch.manual_seed(0)
    net = conv_bn(affine)
    with torch.no_grad():  # BatchNorm statistics and parameters far from their defaults
        net(torch.randn(64, 1, 8, 8) + 3)
        if affine:
            net[1].bias.fill_(0.5)
    masks = magnitude_masks(net, 0.5, structured=True)
    dead = masks["0"].flatten(1).sum(1) == 0
    assert int(dead.sum()) == 3
    apply_masks(net, masks, structured=True)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,))
    for _ in range(5):
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    features = net[:3]
    for mode in (True, False):
        net.train(mode)
        with torch.no_grad():
            out = features(x)
        assert float(out[:, dead].abs().max()) == 0.0, f"train={mode}"
        assert float(out[:, ~dead].abs().max()) > 0
    make_permanent(net)
    assert not any(name.endswith(("_orig", "_mask")) for name in net.state_dict())
    net.eval()
    with torch.no_grad():
        assert float(net[0].weight[dead].abs().sum()) == 0.0
        assert float(net[0].bias[dead].abs().sum()) == 0.0
        if affine:
            assert float(net[1].weight[dead].abs().sum() + net[1].bias[dead].abs().sum()) == 0.0
        assert float(net[:3](x)[:, dead].abs().max()) == 0.0


def test_dead_mlp_neuron_passes_nothing_on_and_unstructured_leaves_biases_alone():
    torch.manual_seed(0)
    net = MLP((6, 8, 3))
    with torch.no_grad():
        net.fc1.bias.fill_(1.0)  # a zero row with a positive bias would still output relu(1)
    masks = magnitude_masks(net, 0.5, structured=True)
    apply_masks(net, masks)
    assert not hasattr(net.fc1, "bias_mask")  # structured=False: today's behaviour
    apply_masks(net, masks, structured=True)
    dead = masks["fc1"].sum(1) == 0
    assert torch.equal(net.fc1.bias_mask, (~dead).float())
    with torch.no_grad():
        hidden = torch.relu(net.fc1(torch.randn(5, 6)))
    assert float(hidden[:, dead].abs().max()) == 0.0
    assert float(hidden[:, ~dead].min()) >= 0 and float(hidden[:, ~dead].max()) > 0


def test_batchnorm_after_follows_the_graph():
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.BatchNorm1d(5), nn.Linear(5, 2))
    assert batchnorm_after(net) == {"0": "2"}  # through a zero-preserving ReLU
    assert batchnorm_after(conv_bn()) == {"0": "1"}
    assert batchnorm_after(WithShape()) == {}  # untraceable and not in one Sequential
    mismatched = nn.Sequential(nn.Linear(4, 5), nn.Flatten(), nn.Linear(5, 5), nn.BatchNorm1d(5))
    assert batchnorm_after(mismatched) == {"2": "3"}


def test_structured_iterative_prune_kills_units_and_restores_exactly():
    torch.manual_seed(0)
    net = conv_bn()
    calls = iter([1.0, 1.0, 0.0])  # reference, accepted round, rejected round
    history = iterative_prune(
        net, lambda m: next(calls), step=0.5, target=1.0, tolerance=0.1, structured=True
    )
    assert [r["accepted"] for r in history] == [True, False]
    dead = net[0].weight_mask.flatten(1).sum(1) == 0
    assert int(dead.sum()) == 3  # the rejected round was undone, masks included
    assert torch.equal(net[0].bias_mask, (~dead).float())
    assert torch.equal(net[1].weight_mask, (~dead).float())
    assert torch.equal(net[1].bias_mask, (~dead).float())


def test_hard_structured_iterative_prune_and_soft_finalize_leave_plain_zeros():
    torch.manual_seed(0)
    net = conv_bn()
    iterative_prune(
        net, lambda m: 1.0, step=0.5, target=0.5, tolerance=0.0, structured=True, mode="hard"
    )
    with torch.no_grad():
        dead = net[0].weight.flatten(1).abs().sum(1) == 0
        assert int(dead.sum()) == 3
        assert float(net[0].bias[dead].abs().sum() + net[1].weight[dead].abs().sum()) == 0.0
    torch.manual_seed(0)
    mlp = MLP((6, 8, 3))
    pruner = SoftPruner(mlp, 0.5, structured=True)
    pruner.on_epoch_end(1)
    assert float(mlp.fc1.bias.detach().abs().min()) > 0  # soft zeroing touches weights only
    pruner.finalize()
    with torch.no_grad():
        dead = mlp.fc1.weight.abs().sum(1) == 0
        assert int(dead.sum()) == 4 and float(mlp.fc1.bias[dead].abs().sum()) == 0.0


# --------------------------------------------------------------------------- group penalties


def test_group_lasso_penalty_exclude():
    net = MLP((5, 4, 3))
    full = float(group_lasso_penalty(net).detach())
    rows = float(net.fc2.weight.detach().norm(dim=1).sum())
    assert float(group_lasso_penalty(net, exclude=["fc2"]).detach()) == pytest.approx(full - rows)


def test_masks_from_scores_protects_output_layers_when_structured():
    net = ClassifierFirst()
    scores = {name: torch.rand_like(m.weight) for name, m in prunable_layers(net).items()}
    masks = masks_from_scores(net, scores, 0.5, structured=True)
    assert "classifier" not in masks and sorted(masks) == ["encoder.0", "encoder.2"]
    assert "classifier" in masks_from_scores(net, scores, 0.5)


def test_layers_inside_an_opaque_torch_block_at_the_output_are_protected():
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(4, 8)
            self.block = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)

        def forward(self, x):
            return self.block(self.embed(x))

    # the block is one fx node; the embedding reaches the output through its residual too
    assert output_layers(Encoder()) == ["embed", "block.linear1", "block.linear2"]
