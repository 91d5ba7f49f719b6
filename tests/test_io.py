"""companion.io: round trips for dense, masked and shrunk models and for any user module (into
an instance, masks included); atomic writes; damaged files.

Missing files and folders, foreign files and unsupported models are rows of
tests/test_bad_input.py (``load-*``, ``save-*``).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from companion import io
from companion.convnets import LeNet5, shrink_lenet5
from companion.models import MLP
from companion.pruning import apply_masks, current_masks, magnitude_masks, make_permanent
from companion.surgery import shrink


def _masked_mlp() -> MLP:
    torch.manual_seed(0)
    model = MLP((12, 16, 8, 3))
    apply_masks(model, magnitude_masks(model, 0.6))
    return model


def _shrunk_mlp() -> MLP:
    torch.manual_seed(1)
    model = MLP((12, 16, 8, 3))
    apply_masks(model, magnitude_masks(model, 0.5, structured=True))
    return shrink(make_permanent(model))


def _masked_lenet() -> LeNet5:
    torch.manual_seed(2)
    model = LeNet5()
    apply_masks(model, magnitude_masks(model, 0.5, structured=True))
    return model


@pytest.mark.parametrize(
    "build, example",
    [
        (lambda: MLP((12, 16, 3), dropout=0.25), torch.randn(5, 12)),
        (_masked_mlp, torch.randn(5, 12)),
        (_shrunk_mlp, torch.randn(5, 12)),
        (_masked_lenet, torch.randn(2, 1, 28, 28)),
        (lambda: shrink_lenet5(make_permanent(_masked_lenet())), torch.randn(2, 1, 28, 28)),
    ],
    ids=["dense", "masked", "shrunk", "masked-lenet5", "shrunk-lenet5"],
)
def test_round_trip_is_bit_identical(tmp_path, build, example):
    model = build().eval()
    path = io.save(model, tmp_path / "model.pt")
    loaded = io.load(path)
    assert type(loaded) is type(model)
    assert io.architecture(loaded) == io.architecture(model)
    assert torch.equal(loaded(example), model(example))
    for (key_a, a), (key_b, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert key_a == key_b and torch.equal(a, b)
    masks, loaded_masks = current_masks(model), current_masks(loaded)
    assert masks.keys() == loaded_masks.keys()
    assert all(torch.equal(masks[k], loaded_masks[k]) for k in masks)


def test_masked_model_keeps_the_values_of_pruned_weights(tmp_path):
    model = _masked_mlp()
    loaded = io.load(io.save(model, tmp_path / "m.pt"))
    # soft pruning is undoable after a round trip: weight_orig still holds the pruned values
    assert torch.equal(loaded.fc1.weight_orig, model.fc1.weight_orig)
    assert bool((loaded.fc1.weight_orig[loaded.fc1.weight_mask == 0] != 0).any())


def test_file_loads_with_weights_only(tmp_path):
    path = io.save(_masked_mlp(), tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == io.FORMAT and payload["version"] == io.VERSION


def test_interrupted_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    io.save(MLP((4, 3, 2)), path)
    before = path.read_bytes()

    def exploding_save(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"half a file")
        raise KeyboardInterrupt("simulated kill during the write")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(KeyboardInterrupt):
        io.save(MLP((4, 5, 2)), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"], "no temporary file may remain"


def test_truncated_file_gives_a_clear_error(tmp_path):
    path = io.save(_masked_mlp(), tmp_path / "m.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(io.ModelFileError, match="truncated, corrupt"):
        io.load(path)


def test_newer_version_is_refused(tmp_path):
    path = io.save(MLP((4, 3, 2)), tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["version"] = 99
    torch.save(payload, path)
    with pytest.raises(io.ModelFileError, match="version 99"):
        io.load(path)


# --------------------------------------------------------------------------- any nn.Module


class Net(nn.Module):
    """A user's model: a conv block and a head, none of the book's architectures."""

    def __init__(self, hidden: int = 6) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU())
        self.head = nn.Linear(3 * 4 * 4, hidden)
        self.out = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.head(self.block(x).flatten(1))))


def _masked_net() -> Net:
    torch.manual_seed(3)
    net = Net()
    net.train()
    net(torch.randn(4, 1, 6, 6))  # BatchNorm running statistics away from their defaults
    apply_masks(net, magnitude_masks(net, 0.5))
    prune.random_unstructured(net.out, "bias", amount=0.5)  # a mask on a bias too
    return net.eval()


def _equal_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_a_user_model_with_masks_round_trips_into_a_fresh_instance(tmp_path):
    model = _masked_net()
    path = io.save(model, tmp_path / "net.pt")
    payload = torch.load(path, weights_only=True)  # still tensors and plain values only
    assert payload["architecture"] == {"class": f"{__name__}.Net", "rebuildable": False}
    assert payload["masked_parameters"] == [
        "block.0.weight",
        "head.weight",
        "out.bias",
        "out.weight",
    ]

    fresh = Net()
    loaded = io.load(path, model=fresh)
    assert loaded is fresh and not loaded.training
    _equal_state(model, loaded)
    example = torch.randn(5, 1, 6, 6)
    assert torch.equal(loaded(example), model(example))
    # The masks are live torch prune masks: pruned entries stay zero through training.
    assert torch.equal(loaded.out.bias, loaded.out.bias_orig * loaded.out.bias_mask)
    optimizer = torch.optim.SGD(loaded.parameters(), lr=0.5)
    loaded.train()
    loaded(example).sum().backward()
    optimizer.step()
    loaded(example)  # the forward pre-hook recomputes the masked tensors
    assert bool((loaded.head.weight[loaded.head.weight_mask == 0] == 0).all())
    assert bool((loaded.out.bias[loaded.out.bias_mask == 0] == 0).all())


def test_loading_replaces_masks_the_instance_has_and_the_file_has_not(tmp_path):
    dense = Net().eval()
    path = io.save(dense, tmp_path / "dense.pt")
    target = _masked_net()
    io.load(path, model=target)
    assert current_masks(target) == {} and not prune.is_pruned(target)
    _equal_state(dense, target)


def test_without_an_instance_a_user_model_is_a_clear_error(tmp_path):
    path = io.save(Net(), tmp_path / "net.pt")
    with pytest.raises(
        ValueError, match=r"Net, which is not one of the book's.*model=Net\(\.\.\.\)"
    ):
        io.load(path)


def test_a_mismatching_instance_is_refused_before_anything_changes(tmp_path):
    path = io.save(_masked_net(), tmp_path / "net.pt")
    wrong = Net(hidden=7)
    before = {k: v.clone() for k, v in wrong.state_dict().items()}
    with pytest.raises(
        ValueError, match=r"shape mismatches: head.bias \(file \(6,\), model \(7,\)\)"
    ):
        io.load(path, model=wrong)
    other = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"missing keys .*0\.weight.*unexpected keys .*block"):
        io.load(path, model=other)
    assert not prune.is_pruned(wrong)  # nothing was applied
    assert all(torch.equal(before[k], v) for k, v in wrong.state_dict().items())


def test_a_book_model_file_restores_into_an_instance_and_to_a_device(tmp_path, device):
    model = _masked_mlp().eval()
    path = io.save(model, tmp_path / "m.pt")
    instance = MLP((12, 16, 8, 3)).to(device)
    loaded = io.load(path, model=instance)
    assert loaded.fc1.weight_orig.device.type == device
    _equal_state(model, loaded.cpu())
    assert io.load(path, model=MLP((12, 16, 8, 3)), device="cpu").fc1.weight_mask.sum() > 0


def test_a_subclass_of_a_book_model_is_saved_as_a_user_model(tmp_path):
    class Wider(MLP):
        pass

    path = io.save(Wider((4, 3, 2)), tmp_path / "w.pt")
    with pytest.raises(ValueError, match="model=Wider"):
        io.load(path)
    assert isinstance(io.load(path, model=Wider((4, 3, 2))), Wider)


def test_loading_over_other_masks_gives_the_file_masks(tmp_path):
    model = _masked_net()
    path = io.save(model, tmp_path / "net.pt")
    torch.manual_seed(9)
    target = Net()
    apply_masks(target, magnitude_masks(target, 0.8))  # other layers' masks, other patterns
    io.load(path, model=target)
    _equal_state(model, target)
    example = torch.randn(3, 1, 6, 6)
    assert torch.equal(target(example), model(example))


def test_a_structurally_pruned_book_model_round_trips_with_its_bias_masks(tmp_path):
    """Structured masks also mask the dead units' biases (bias_orig, bias_mask): they come back."""
    from companion.masks import apply_masks, current_weight
    from companion.models import MLP
    from companion.pruning import magnitude_masks

    torch.manual_seed(0)
    model = MLP((6, 5, 3))
    apply_masks(model, magnitude_masks(model, 0.4, structured=True), structured=True)
    assert hasattr(model.fc1, "bias_mask")
    path = io.save(model, tmp_path / "structured.pt")
    loaded = io.load(path)
    assert set(loaded.state_dict()) == set(model.state_dict())
    assert torch.equal(current_weight(loaded.fc1, "bias"), current_weight(model.fc1, "bias"))
    x = torch.rand(4, 6)
    assert torch.equal(loaded(x), model.eval()(x))
