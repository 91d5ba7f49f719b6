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


# --------------------------------------------------------------------------- any traceable network

import copy  # noqa: E402

import torchvision  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import prune  # noqa: E402

from companion.speed import flops  # noqa: E402
from companion.surgery import ShrinkReport  # noqa: E402


def _randomise_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, so a dead conv alone is not enough."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
    return model.eval()


def _zero_channels(model: nn.Module, plan: dict[str, list[int]], masked: bool = False) -> None:
    """Structured pruning as a pruner leaves it: output channels' weights (and biases) zero.

    With ``masked``, through ``torch.nn.utils.prune`` masks (``weight_orig``/``weight_mask``,
    ``bias_orig``/``bias_mask``) instead of plain zeros.
    """
    modules = dict(model.named_modules())
    for name, idxs in plan.items():
        module = modules[name]
        for tensor_name in ("weight", "bias"):
            tensor = getattr(module, tensor_name, None)
            if tensor is None:
                continue
            if masked:
                mask = torch.ones_like(tensor)
                mask[idxs] = 0
                prune.custom_from_mask(module, tensor_name, mask)
            else:
                with torch.no_grad():
                    tensor[idxs] = 0


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_outputs(small: nn.Module, model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected, got = model(x), small(x)
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * scale)


def _group_of(report: ShrinkReport, layer: str):
    """The group whose channels ``layer`` produces."""
    (group,) = (g for g in report.groups if layer in g.producers)
    return group


def _resnet18_plan() -> tuple[dict[str, list[int]], dict[str, int]]:
    stem = [0, 5, 9]  # the channels of the stem and of every residual add of layer1
    plan = {name: stem for name in ("conv1", "bn1", "layer1.0.bn2", "layer1.1.bn2")}
    plan["layer2.0.bn1"] = [1, 2, 3, 4]  # a BatchNorm decides for its conv
    plan["layer3.1.conv1"] = plan["layer3.1.bn1"] = list(range(0, 256, 2))
    # one branch of layer4's residual adds only: the downsample branch still carries them
    plan["layer4.0.bn2"] = plan["layer4.1.bn2"] = [0, 1, 2]
    return plan, {"conv1": 3, "layer2.0.bn1": 4, "layer3.1.bn1": 128, "layer4.0.bn2": 0}


def _mobilenet_plan() -> tuple[dict[str, list[int]], dict[str, int]]:
    expand = [3, 10, 50]  # expand conv + BN, depthwise conv + BN, and the SE scale of block 4
    plan = {f"features.4.block.{name}": expand for name in ("0.0", "0.1", "1.0", "1.1", "2.fc2")}
    plan["features.4.block.2.fc1"] = [0, 7]  # the squeeze layer (bias, no BatchNorm)
    plan["features.12.1"] = list(range(0, 576, 3))  # the last conv, read by the pooled head
    return plan, {
        "features.4.block.0.1": 3,
        "features.4.block.2.fc1": 2,
        "features.12.1": 192,
    }


def _vgg11_plan() -> tuple[dict[str, list[int]], dict[str, int]]:
    plan = {"features.0": [1, 2], "features.1": [1, 2]}
    plan["features.26"] = list(range(0, 512, 4))  # the last BN, flattened into the head
    plan["classifier.0"] = list(range(100))  # head neurons with zero weights and bias
    return plan, {"features.1": 2, "features.26": 128, "classifier.0": 100}


TORCHVISION_CASES = {
    "resnet18": _resnet18_plan,
    "mobilenet_v3_small": _mobilenet_plan,
    "vgg11_bn": _vgg11_plan,
}


@pytest.mark.parametrize(
    ("arch", "masked"),
    # vgg11_bn (129M parameters) once, with plain zeros; the masks path on the other two
    [("resnet18", False), ("resnet18", True), ("mobilenet_v3_small", False)]
    + [("mobilenet_v3_small", True), ("vgg11_bn", False)],
)
def test_shrink_torchvision_models_equals_masked_model_with_fewer_parameters_and_flops(
    arch, masked
):
    torch.manual_seed(0)
    model = _randomise_statistics(getattr(torchvision.models, arch)(num_classes=10))
    plan, expected_removed = TORCHVISION_CASES[arch]()
    _zero_channels(model, plan, masked=masked)
    before = _state(model)
    x = torch.randn(2, 3, 64, 64)
    small, report = shrink(model, x, return_report=True)
    _assert_same_outputs(small, model, x)
    assert count_parameters(small) < count_parameters(model)
    assert report.parameters_after == count_parameters(small)
    assert flops(small, example_input=x) < flops(model, example_input=x)
    for layer, removed in expected_removed.items():
        assert len(_group_of(report, layer).removed) == removed, layer
    assert report.removed == sum(expected_removed.values())
    if arch == "resnet18":
        assert _group_of(report, "layer4.0.bn2").partly_dead == (0, 1, 2)
        assert report.partly_dead == (_group_of(report, "layer4.0.bn2"),)
    else:
        assert report.partly_dead == ()
    # the original is untouched: same tensors, masks still on, still in eval mode
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in after)
    assert prune.is_pruned(model) == masked and not model.training
    assert not prune.is_pruned(small) and not small.training
    assert small(x).shape == (2, 10)


class _ResidualToy(nn.Module):
    """stem -> two residual blocks -> pooled linear head."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width))
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(width, width, 3, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.BatchNorm2d(width),
            )
            for _ in range(2)
        )
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return self.head(x.mean((2, 3)))


def test_residual_toy_removes_the_exact_channels_and_reports_the_partly_dead_ones():
    model = _randomise_statistics(_ResidualToy())
    # channels 1 and 2: dead in the stem and in both blocks' last BN -> removable
    # channels 5 and 6: dead in the blocks' last BN only; the identity branch carries the stem
    _zero_channels(model, {"stem.1": [1, 2], "blocks.0.4": [1, 2, 5, 6], "blocks.1.4": [1, 2, 5]})
    _zero_channels(model, {"blocks.0.1": [0, 3, 4]})  # inside block 0: not coupled to the add
    x = torch.randn(4, 3, 12, 12)
    small, report = shrink(model, x, return_report=True)
    _assert_same_outputs(small, model, x)
    residual = _group_of(report, "stem.0")
    assert set(residual.layers) >= {"stem.0", "stem.1", "blocks.0.4", "blocks.1.4", "head"}
    assert residual.removed == (1, 2)
    assert residual.partly_dead == (5, 6)
    inner = _group_of(report, "blocks.0.1")
    assert inner.removed == (0, 3, 4) and inner.partly_dead == ()
    assert small.stem[0].out_channels == 6 and small.blocks[0][0].out_channels == 5
    assert small.head.in_features == 6
    assert "partly dead" in str(report)
    assert report.partly_dead == (residual,)


class _Stem(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _UserNet(nn.Module):
    """A user-style network: nested modules, concatenation, a depthwise conv, a flatten head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _Stem(16)
        self.left = nn.Sequential(nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16))
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 4, 32),
            nn.ReLU(),
            nn.Linear(32, 5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        return self.head(torch.nn.functional.hardswish(self.mix(x)))


def test_nested_user_model_with_concatenation_depthwise_conv_and_flatten_head():
    torch.manual_seed(3)
    model = _randomise_statistics(_UserNet())
    _zero_channels(
        model,
        {
            "stem.body.1": [0, 1, 2],
            "left.1": [4],  # concatenated channel 4 ...
            "mix.1": [4, 12],  # ... and 12 (right's channel 4) die after the depthwise conv
            "right.0": [4],
            "head.2": [0, 31],
        },
    )
    x = torch.randn(3, 3, 10, 10)
    small, report = shrink(model, x, return_report=True)
    _assert_same_outputs(small, model, x)
    assert small.stem.body[0].out_channels == 13
    assert small.head[2].out_features == 30 and small.head[4].out_features == 5
    assert count_parameters(small) < count_parameters(model)
    assert flops(small, example_input=x) < flops(model, example_input=x)
    assert report.removed >= 3 + 2


def test_a_dead_producer_behind_a_sigmoid_stays():
    # sigmoid(0) = 0.5: the channel reaches the next layer as a constant, so it must stay.
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.Sigmoid(), nn.Conv2d(6, 2, 3)).eval()
    _zero_channels(model, {"0": [1, 4]})
    x = torch.randn(2, 3, 8, 8)
    small, report = shrink(model, x, return_report=True)
    assert small[0].out_channels == 6
    group = _group_of(report, "0")
    assert group.removed == () and group.kept == (1, 4) and "nonzero" in group.note
    _assert_same_outputs(small, model, x)


def test_output_units_and_the_last_channel_stay():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1))
    _randomise_statistics(model)
    _zero_channels(model, {"1": [0, 1, 2, 3], "3": [1]})  # every hidden channel, one output
    x = torch.randn(2, 3, 6, 6)
    small, report = shrink(model, x, return_report=True)
    assert small[0].out_channels == 1 and small[3].out_channels == 3
    assert _group_of(report, "0").kept == (0,)
    assert "output" in _group_of(report, "3").note
    _assert_same_outputs(small, model, x)


def test_shrink_keeps_training_flags_and_statistics():
    model = _randomise_statistics(_ResidualToy()).train()
    _zero_channels(model, {"blocks.1.1": [2, 3]})
    stats = model.blocks[1][1].running_mean.clone()
    x = torch.randn(2, 3, 8, 8)
    small = shrink(model, x)
    assert small.training and small.blocks[1][1].training
    assert torch.equal(model.blocks[1][1].running_mean, stats)  # no forward pass in train mode
    assert small.blocks[1][1].num_features == 6
    torch.testing.assert_close(
        small.blocks[1][1].running_mean, stats[[0, 1, 4, 5, 6, 7]], rtol=0, atol=0
    )
    model.eval()
    _assert_same_outputs(small.eval(), model, x)


def test_mlp_keeps_the_teaching_path_and_reports_it():
    net = _random_mlp((10, 8, 6, 3))
    with torch.no_grad():
        net.fc1.weight[[0, 2, 4]] = 0
        net.fc2.weight.zero_()
    small, report = shrink(net, return_report=True)
    assert small.sizes == (10, 5, 1, 3)
    assert torch.equal(small(torch.ones(1, 10)), shrink(copy.deepcopy(net))(torch.ones(1, 10)))
    assert report.groups[0].removed == (0, 2, 4)
    assert report.groups[1].kept == (0,) and len(report.groups[1].removed) == 5
    assert report.parameters_after == count_parameters(small)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, TypeError, "example_inputs must be given"),
        ({"example_inputs": [[1.0, 2.0]]}, TypeError, "example_inputs must be a torch.Tensor"),
        ({"example_inputs": torch.ones(1, 3), "rtol": 0.0}, ValueError, r"rtol must be"),
    ],
)
def test_shrink_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        shrink(nn.Sequential(nn.Linear(3, 3)), **kwargs)


class _ChannelMeanGate(nn.Module):
    """A spatial gate from the mean over channels: removing a zero channel changes the mean."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        y = self.b(y * torch.sigmoid(y.mean(1, keepdim=True)))
        return self.out(y)


def test_a_mean_over_channels_keeps_its_group_and_the_others_still_shrink():
    model = _randomise_statistics(_ChannelMeanGate())
    _zero_channels(model, {"a.1": [2, 3], "b.1": [0, 5, 6]})
    x = torch.randn(2, 3, 8, 8)
    small, report = shrink(model, x, return_report=True)
    _assert_same_outputs(small, model, x)
    gated = _group_of(report, "a.1")
    assert gated.removed == () and gated.kept == (2, 3) and "changed the outputs" in gated.note
    assert _group_of(report, "b.1").removed == (0, 5, 6)
    assert small.a[0].out_channels == 8 and small.b[0].out_channels == 5


def test_a_grouped_convolution_keeps_its_channels():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=4),  # four groups of four: not depthwise
        nn.ReLU(),
        nn.Conv2d(16, 2, 1),
    )
    _randomise_statistics(model)
    _zero_channels(model, {"1": [1, 6], "3": [0, 9]})
    x = torch.randn(2, 3, 8, 8)
    small, report = shrink(model, x, return_report=True)
    _assert_same_outputs(small, model, x)
    assert small[0].out_channels == 16
    assert "grouped convolution" in _group_of(report, "1").note
    # its outputs too: removing two of them would leave 14 channels for 4 groups
    assert "grouped convolution" in _group_of(report, "3").note
    assert _group_of(report, "3").kept == (0, 9)
    assert count_parameters(small) == count_parameters(model)


def test_shrink_runs_on_the_models_device(device):
    model = _randomise_statistics(_ResidualToy()).to(device)
    _zero_channels(model, {"stem.1": [0], "blocks.0.4": [0], "blocks.1.4": [0], "blocks.1.1": [3]})
    x = torch.randn(2, 3, 8, 8, device=device)
    small, report = shrink(model, x, return_report=True)
    assert all(p.device.type == device for p in small.parameters())
    assert report.removed == 2
    _assert_same_outputs(small, model, x)
