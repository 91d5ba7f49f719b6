"""Soft pruning: regrowth, the cubic schedule, gradual pruning, sparse storage."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from companion.io import ModelFileError
from companion.metrics import layer_sparsity, sparsity
from companion.models import MLP
from companion.pruning import apply_masks, iterative_prune, magnitude_masks
from companion.soft import (
    GradualPruner,
    SoftPruner,
    clear_pruned_momentum_,
    cubic_sparsity,
    load_sparse,
    save_sparse,
)
from companion.training import train

# Zhu and Gupta (2017), s_i = 0 -> s_f = 0.9 over n = 10 steps (shared/papers.md)
ZHU_GUPTA_VECTOR = [0, 0.2439, 0.4392, 0.5913, 0.7056, 0.7875, 0.8424, 0.8757, 0.8928, 0.8991, 0.9]


def _one_sgd_step(model: nn.Module, data: torch.Tensor) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    optimizer.zero_grad()
    model(data).pow(2).sum().backward()
    optimizer.step()


def test_cubic_schedule_matches_the_paper_vector():
    values = [cubic_sparsity(t, final=0.9, duration=10) for t in range(11)]
    assert values == pytest.approx(ZHU_GUPTA_VECTOR, abs=5e-5)


def test_cubic_schedule_end_points_and_monotone():
    values = [cubic_sparsity(t, final=0.8, initial=0.1, start=5, duration=20) for t in range(40)]
    assert values[0] == values[5] == pytest.approx(0.1)
    assert values[25] == values[-1] == pytest.approx(0.8)
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"final": 1.5, "duration": 10}, "final"),
        ({"final": 0.5, "initial": 0.7, "duration": 10}, "initial"),
        ({"final": 0.5, "duration": 0}, "duration"),
        ({"final": 0.5, "duration": 10, "start": -1}, "start"),
    ],
)
def test_cubic_schedule_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        cubic_sparsity(3, **kwargs)


def test_soft_pruned_weights_regrow_but_hard_masked_do_not():
    torch.manual_seed(0)
    data = torch.randn(16, 6)
    soft, hard = MLP((6, 8, 3)), MLP((6, 8, 3))
    hard.load_state_dict(soft.state_dict())

    pruner = SoftPruner(soft, 0.5)
    pruner.on_epoch_end(1)
    zeroed = pruner.masks["fc1"] == 0
    assert bool((soft.fc1.weight[zeroed] == 0).all())
    _one_sgd_step(soft, data)
    assert bool((soft.fc1.weight[zeroed] != 0).any()), "soft-pruned weights must keep learning"

    apply_masks(hard, magnitude_masks(hard, 0.5))
    masked = hard.fc1.weight_mask == 0
    _one_sgd_step(hard, data)
    hard(data)  # the forward pre-hook recomputes weight = weight_orig * weight_mask
    assert bool((hard.fc1.weight[masked] == 0).all())


def test_soft_pruner_records_regrowth_and_keeps_the_amount(toy_data):
    torch.manual_seed(1)
    model = MLP((8, 32, 2))
    pruner = SoftPruner(model, 0.6, structured=True)
    train(model, toy_data, epochs=4, lr=0.2, on_epoch_end=pruner.on_epoch_end, progress=False)
    assert pruner.history["epoch"] == [1, 2, 3, 4]
    assert pruner.history["regrown"][0] == 0
    assert all(r >= 0 for r in pruner.history["regrown"])
    # 60% of the 32 hidden rows are zero after every epoch; the output layer is never pruned
    assert int((model.fc1.weight.abs().sum(1) == 0).sum()) == round(0.6 * 32)
    finished = pruner.finalize()
    assert not hasattr(finished.fc1, "weight_mask")
    assert int((finished.fc1.weight.abs().sum(1) == 0).sum()) == round(0.6 * 32)


def test_soft_pruner_regrowth_count_is_exact():
    model = MLP((4, 1, 1))
    pruner = SoftPruner(model, 0.5)
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
        model.fc2.weight.fill_(1.0)
    pruner.on_epoch_end(1)  # zeroes 1.0 and 2.0
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor([[5.0, 0.1, 3.0, 4.0]]))  # 5.0 regrew
    pruner.on_epoch_end(2)
    assert pruner.history["regrown"] == [0, 1]
    assert model.fc1.weight.tolist() == [[5.0, 0.0, 0.0, 4.0]]


def test_gradual_pruner_follows_the_schedule(toy_data):
    torch.manual_seed(2)
    model = MLP((8, 64, 2))
    pruner = GradualPruner(model, final=0.9, start=2, duration=12, every=3)
    train(model, toy_data, epochs=3, lr=0.1, batch_size=16, on_step=pruner.on_step, progress=False)
    assert pruner.history["step"] == [2, 5, 8, 11, 14]
    assert pruner.history["sparsity"][-1] == pytest.approx(0.9)
    assert all(
        b > a
        for a, b in zip(pruner.history["sparsity"], pruner.history["sparsity"][1:], strict=False)
    )
    assert layer_sparsity(model)["fc1.weight"] == pytest.approx(round(0.9 * 512) / 512)


def test_gradual_pruner_reaches_final_when_duration_is_not_a_multiple():
    model = MLP((10, 10, 2))
    pruner = GradualPruner(model, final=0.5, duration=5, every=2)
    for step in range(1, 8):
        pruner.on_step(step)
    assert pruner.history["step"] == [2, 4, 5]
    assert sparsity(model) == pytest.approx(0.5)


def test_soft_mode_restore_returns_the_identical_model():
    torch.manual_seed(3)
    model = MLP((6, 10, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = iter([0.9, 0.1])  # the first round is accepted, the second is not

    def scripted_accuracy(_model):
        return next(calls, 0.0)

    history = iterative_prune(
        model,
        scripted_accuracy,
        step=0.3,
        target=0.9,
        tolerance=0.05,
        mode="soft",
        reference=0.9,
        min_step=0.3,
    )
    assert [r["accepted"] for r in history] == [True, False]
    # after the restore: masks from round one, and every original value kept in weight_orig
    assert torch.equal(model.fc1.weight_orig, before["fc1.weight"])
    assert layer_sparsity(model)["fc1.weight"] == pytest.approx(round(0.3 * 60) / 60)


@pytest.mark.parametrize("structured", [False, True])
def test_sparse_round_trip_is_exact(tmp_path, structured):
    torch.manual_seed(4)
    model = MLP((20, 30, 5))
    apply_masks(model, magnitude_masks(model, 0.8, structured=structured))
    path = save_sparse(model, tmp_path / "sparse.pt")
    plain = MLP((20, 30, 5))
    state = load_sparse(path, plain)
    assert set(state) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    x = torch.randn(7, 20)
    assert torch.equal(plain(x), model(x))
    assert torch.equal(plain.fc1.weight, model.fc1.weight)


def test_sparse_file_is_smaller_than_dense(tmp_path):
    model = MLP((300, 300, 10))
    apply_masks(model, magnitude_masks(model, 0.9))
    dense = tmp_path / "dense.pt"
    torch.save(MLP((300, 300, 10)).state_dict(), dense)
    sparse = save_sparse(model, tmp_path / "sparse.pt")
    # 10% of the weights kept; values (4 B) + int16 columns (2 B) per nonzero
    assert sparse.stat().st_size < 0.25 * dense.stat().st_size


def test_load_sparse_rejects_foreign_and_truncated_files(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"hello": torch.zeros(1)}, foreign)
    with pytest.raises(ModelFileError, match="companion-sparse"):
        load_sparse(foreign)
    good = save_sparse(MLP((4, 3, 2)), tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ModelFileError, match="truncated"):
        load_sparse(truncated)
    with pytest.raises(FileNotFoundError):
        load_sparse(tmp_path / "missing.pt")


def _momentum_then_mask(clear: bool) -> torch.Tensor:
    """One SGD-momentum step with a full gradient, then a mask on w[0], then one masked step."""
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0]]))
    net = nn.Sequential(layer)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.5)
    layer.weight.grad = torch.ones(1, 2)
    optimizer.step()  # buffer [1, 1], weight [0.5, 1.5]
    apply_masks(net, {"0": torch.tensor([[0.0, 1.0]])})
    if clear:
        assert clear_pruned_momentum_(net, optimizer) == 1
    optimizer.zero_grad()
    net(torch.ones(1, 2)).sum().backward()  # gradient 0 at the masked position, 1 at the kept one
    optimizer.step()
    return layer.weight_orig.detach()


def test_momentum_moves_a_masked_stored_value_unless_cleared():
    # buffer 0.5 * 1 + 0 = 0.5 at the masked weight: its stored value moves by lr * 0.5 = 0.25
    assert _momentum_then_mask(clear=False).tolist() == [[0.25, 0.75]]
    assert _momentum_then_mask(clear=True).tolist() == [[0.5, 0.75]]


def test_gradual_pruner_with_the_optimizer_freezes_pruned_stored_values(toy_data):
    stored = {}
    for clear in (False, True):
        torch.manual_seed(5)
        model = MLP((8, 32, 2))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        pruner = GradualPruner(
            model, final=0.8, duration=6, every=2, optimizer=optimizer if clear else None
        )
        snapshots = []

        def on_step(step, pruner=pruner, model=model, snapshots=snapshots):
            pruner.on_step(step)
            if step == 6:  # the last mask update
                snapshots.append(model.fc1.weight_orig.detach().clone())

        train(model, toy_data, epochs=2, batch_size=16, optimizer=optimizer, on_step=on_step,
              progress=False)  # fmt: skip
        pruned = model.fc1.weight_mask == 0
        stored[clear] = torch.equal(model.fc1.weight_orig[pruned], snapshots[0][pruned])
    assert stored == {False: False, True: True}


def test_gradual_pruner_rejects_a_non_optimizer():
    with pytest.raises(TypeError, match="optimizer"):
        GradualPruner(MLP((4, 4, 2)), final=0.5, duration=2, optimizer="sgd")
    with pytest.raises(TypeError, match="optimizer"):
        clear_pruned_momentum_(MLP((4, 4, 2)), "sgd")


def test_structured_gradual_pruning_clears_the_momentum_of_masked_biases():
    torch.manual_seed(0)
    net = MLP((6, 8, 3))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    optimizer.step()  # every bias now has a momentum buffer
    pruner = GradualPruner(net, final=0.5, duration=1, structured=True, optimizer=optimizer)
    pruner.on_step(1)
    dead = net.fc1.weight_mask.sum(1) == 0
    assert int(dead.sum()) == 4
    assert torch.equal(net.fc1.bias_mask, (~dead).float())
    buffer = optimizer.state[net.fc1.bias_orig]["momentum_buffer"]
    assert float(buffer[dead].abs().sum()) == 0.0 and float(buffer[~dead].abs().sum()) > 0
    before = net.fc1.bias_orig.detach().clone()
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    optimizer.step()
    assert torch.equal(net.fc1.bias_orig.detach()[dead], before[dead])  # nothing moves them
