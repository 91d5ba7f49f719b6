"""The one training loop: history, hooks, optimizers, NaN guard; evaluate and predict.

Invalid arguments are rows of tests/test_bad_input.py; bit-for-bit repeatability of a seeded
run is tests/test_determinism.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from companion.models import MLP
from companion.penalties import l1_penalty
from companion.training import evaluate, make_optimizer, predict, train


def test_history_and_learning(toy_data):
    torch.manual_seed(0)
    model = MLP((8, 16, 2))
    history = train(
        model, toy_data, epochs=20, lr=0.1, batch_size=32, eval_set=toy_data, progress=False
    )
    assert set(history) == {
        "epoch",
        "loss",
        "train_accuracy",
        "seconds",
        "eval_loss",
        "eval_accuracy",
    }
    assert history["epoch"] == list(range(1, 21))
    assert history["loss"][-1] < history["loss"][0]
    assert history["eval_accuracy"][-1] > 0.9
    assert all(s > 0 for s in history["seconds"])


def test_hooks_are_called_as_documented(toy_data):
    steps, epochs = [], []
    train(
        MLP((8, 2)),
        toy_data,
        epochs=3,
        batch_size=100,
        on_step=steps.append,
        on_epoch_end=epochs.append,
        progress=False,
    )
    assert steps == list(range(1, 3 * 3 + 1))  # 256 examples in batches of 100: 3 steps an epoch
    assert epochs == [1, 2, 3]


def test_optimizer_instance_keeps_its_state(toy_data):
    model = MLP((8, 2))
    optimizer = make_optimizer(model, "sgd", lr=0.1, momentum=0.9)
    train(model, toy_data, epochs=1, optimizer=optimizer, progress=False)
    buffer = optimizer.state[model.fc1.weight]["momentum_buffer"].clone()
    train(model, toy_data, epochs=1, optimizer=optimizer, progress=False)
    assert not torch.equal(buffer, optimizer.state[model.fc1.weight]["momentum_buffer"])
    assert isinstance(make_optimizer(model, "adam", lr=1e-3), torch.optim.Adam)


def test_penalty_changes_the_objective(toy_data):
    torch.manual_seed(0)
    plain, penalised = MLP((8, 2)), MLP((8, 2))
    penalised.load_state_dict(plain.state_dict())
    h1 = train(plain, toy_data, epochs=1, progress=False)
    h2 = train(
        penalised, toy_data, epochs=1, penalty=l1_penalty, penalty_weight=0.1, progress=False
    )
    assert h2["loss"][0] > h1["loss"][0]
    assert l1_penalty(penalised) < l1_penalty(plain)


def test_custom_loss_gets_the_whole_batch(toy_data):
    seen = []
    data = TensorDataset(*toy_data.tensors, torch.arange(len(toy_data)))

    def loss_fn(logits, batch):
        seen.append(len(batch))
        return nn.functional.cross_entropy(logits, batch[1])

    train(MLP((8, 2)), data, epochs=1, batch_size=128, loss_fn=loss_fn, progress=False)
    assert seen == [3, 3]


def test_nan_loss_stops_with_epoch_and_step(toy_data):
    x, y = toy_data.tensors
    x = x.clone()
    x[40] = float("nan")
    with pytest.raises(FloatingPointError, match=r"epoch 1, step \d+ of 8"):
        train(MLP((8, 2)), TensorDataset(x, y), epochs=2, batch_size=32, progress=False)


def test_evaluate_on_a_hand_built_model():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    data = TensorDataset(
        torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]), torch.tensor([0, 1, 1])
    )
    result = evaluate(model, data)
    assert result["errors"] == 1
    assert result["accuracy"] == pytest.approx(2 / 3)
    logits = data.tensors[0]
    assert result["loss"] == pytest.approx(
        nn.functional.cross_entropy(logits, data.tensors[1]).item()
    )
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, TensorDataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(TypeError, match="TensorDataset"):
        evaluate(model, [(1, 2)])


def test_predict_restores_training_mode():
    torch.manual_seed(0)
    model = MLP((4, 8, 2), dropout=0.5)
    model.train()
    inputs = torch.rand(10, 4)
    out = predict(model, inputs, batch_size=3)
    assert out.shape == (10, 2)
    assert model.training  # the caller's mode is restored
    # predict runs in eval mode, so dropout is off and the result is repeatable
    assert torch.equal(out, predict(model, inputs, batch_size=3))
    # Other batch sizes give the same predictions up to float rounding (a matrix product of
    # another shape may round differently in the last bit, so not torch.equal).
    torch.testing.assert_close(out, predict(model, inputs, batch_size=5))


def test_train_leaves_masked_weights_current():
    from companion.pruning import apply_masks, magnitude_masks

    torch.manual_seed(0)
    net = MLP((4, 5, 3))
    apply_masks(net, magnitude_masks(net, 0.5))
    data = TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,)))
    train(net, data, epochs=1, batch_size=8, progress=False)
    for layer in net.linears:
        assert torch.equal(layer.weight, layer.weight_orig * layer.weight_mask)
