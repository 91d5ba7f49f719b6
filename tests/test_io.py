"""companion.io: round trips for dense, masked and shrunk models; atomic writes; damaged files.

Missing files and folders, foreign files and unsupported models are rows of
tests/test_bad_input.py (``load-*``, ``save-*``).
"""

from __future__ import annotations

import pytest
import torch

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
