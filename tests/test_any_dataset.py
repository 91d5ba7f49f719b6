"""train, evaluate and predict on any data set: TensorDataset (the fast path, unchanged),
map-style Datasets such as a Subset, DataLoaders; models returning tuples or dicts through
``output=``; regression through ``loss_fn`` without an accuracy.

The invalid-input rows (a list instead of a data set, dict batches, float targets for the
cross-entropy, a tuple-returning model without ``output``) are in tests/test_bad_input.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset

from companion.models import MLP
from companion.training import evaluate, predict, train
from companion.utils import SEED_BASE_ENV


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


class Noisy(Dataset):
    """A map-style data set with on-the-fly augmentation: new noise at every access."""

    def __init__(self, base: TensorDataset, scale: float = 0.01) -> None:
        self.base, self.scale, self.calls = base, scale, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        x, y = self.base[i]
        return x + self.scale * torch.randn_like(x), y


class WithFeatures(nn.Module):
    """A model that returns ``(logits, features)``, as many research models do."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.relu(self.body(x))
        return self.head(features), features


class DictOutput(WithFeatures):
    """A model that returns a dict with ``"logits"``, as Hugging Face models do."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        logits, features = super().forward(x)
        return {"logits": logits, "features": features}


# --------------------------------------------------------------------------- the fast path


def test_tensor_dataset_path_matches_a_direct_replica(toy_data, monkeypatch):
    """Bit for bit what the book's loop always did: one seeded randperm per epoch (seed +
    COMPANION_SEED_BASE), slices of it as batches, the last one smaller, SGD on the
    cross-entropy. The book's stored results depend on this."""
    monkeypatch.setenv(SEED_BASE_ENV, "3")
    torch.manual_seed(0)
    model = MLP((8, 16, 2))
    replica = copy.deepcopy(model)
    history = train(
        model, toy_data, epochs=3, lr=0.1, batch_size=48, momentum=0.9, seed=4, progress=False
    )

    x, y = toy_data.tensors
    optimizer = torch.optim.SGD(replica.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(4 + 3)
    losses = []
    for _ in range(3):
        total = torch.zeros(())
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 48):  # 256 = 5 * 48 + 16: the last batch is kept
            index = order[start : start + 48]
            loss = F.cross_entropy(replica(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(index)
        losses.append(total.item() / len(x))
    assert _same_weights(model, replica)
    assert history["loss"] == losses


# --------------------------------------------------------------------------- other data sets


def test_a_subset_trains_exactly_like_the_tensors_it_holds(toy_data):
    """A map-style data set gets the same batch size and the same seeded order as the fast
    path (a DataLoader's RandomSampler draws the same randperm from the same generator), so a
    Subset over all the examples gives the very same run. With dropout, the very same run also
    means that the DataLoader draws nothing from the global generator."""
    torch.manual_seed(0)
    fast, general = MLP((8, 16, 2), dropout=0.3), MLP((8, 16, 2), dropout=0.3)
    general.load_state_dict(fast.state_dict())
    kwargs = {"epochs": 2, "lr": 0.1, "batch_size": 48, "seed": 7, "progress": False}
    torch.manual_seed(1)
    h_fast = train(fast, toy_data, eval_set=toy_data, **kwargs)
    everything = Subset(toy_data, range(len(toy_data)))
    torch.manual_seed(1)
    h_general = train(general, everything, eval_set=everything, **kwargs)
    assert _same_weights(fast, general)
    for key in ("loss", "train_accuracy", "eval_accuracy"):
        assert h_general[key] == h_fast[key]
    assert h_general["eval_loss"] == pytest.approx(h_fast["eval_loss"], rel=1e-6)


def test_a_subset_trains_on_its_examples_only(toy_data):
    half = Subset(toy_data, range(0, len(toy_data), 2))
    steps = []
    torch.manual_seed(0)
    history = train(
        MLP((8, 16, 2)),
        half,
        epochs=15,
        lr=0.1,
        batch_size=32,
        on_step=steps.append,
        progress=False,
    )
    assert len(steps) == 15 * 4  # 128 examples in batches of 32
    assert history["train_accuracy"][-1] > 0.9


def test_a_user_dataloader_is_used_as_it_is(toy_data):
    loader = DataLoader(toy_data, batch_size=100, shuffle=True)  # its batch size, not train's
    steps, sizes = [], []

    def loss_fn(logits, batch):
        sizes.append(len(batch[1]))
        return F.cross_entropy(logits, batch[1])

    torch.manual_seed(0)
    model = MLP((8, 16, 2))
    train(
        model, loader, epochs=2, batch_size=7, loss_fn=loss_fn, on_step=steps.append, progress=False
    )
    assert steps == list(range(1, 2 * 3 + 1))
    assert sizes == [100, 100, 56] * 2
    result = evaluate(model, DataLoader(toy_data, batch_size=64))
    assert set(result) == {"loss", "accuracy", "errors"}


def test_augmentation_runs_anew_every_epoch(toy_data):
    noisy = Noisy(toy_data)
    torch.manual_seed(0)
    history = train(MLP((8, 16, 2)), noisy, epochs=3, lr=0.1, batch_size=32, progress=False)
    assert noisy.calls == 3 * len(toy_data)
    assert history["loss"][-1] < history["loss"][0]


def test_batches_are_moved_to_the_model_device(toy_data, device):
    torch.manual_seed(0)
    model = MLP((8, 16, 2)).to(device)
    history = train(model, Noisy(toy_data), epochs=2, batch_size=64, progress=False)
    assert len(history["loss"]) == 2
    result = evaluate(model, Subset(toy_data, range(100)))
    assert 0 <= result["errors"] <= 100


def test_evaluate_agrees_across_the_forms_of_data(toy_data):
    torch.manual_seed(0)
    model = MLP((8, 16, 2))
    train(model, toy_data, epochs=2, lr=0.1, progress=False)
    fast = evaluate(model, toy_data)
    for other in (Subset(toy_data, range(len(toy_data))), DataLoader(toy_data, batch_size=50)):
        state = torch.get_rng_state()
        result = evaluate(model, other, batch_size=70)
        if isinstance(other, Subset):  # a measurement leaves the global generator alone
            assert torch.equal(state, torch.get_rng_state())
        assert result["errors"] == fast["errors"]
        assert result["accuracy"] == fast["accuracy"]
        assert result["loss"] == pytest.approx(fast["loss"], rel=1e-6)


def test_a_dataset_of_tuples_with_python_int_targets(toy_data):
    """Items as plain Python tuples (a tensor and an int), as torchvision data sets give them."""

    class Pairs(Dataset):
        def __len__(self):
            return len(toy_data)

        def __getitem__(self, i):
            x, y = toy_data[i]
            return x, int(y)

    torch.manual_seed(0)
    history = train(MLP((8, 16, 2)), Pairs(), epochs=10, lr=0.1, batch_size=32, progress=False)
    assert history["train_accuracy"][-1] > 0.9


# --------------------------------------------------------------------------- model outputs


@pytest.mark.parametrize(
    ("model_type", "output", "kind"),
    [(WithFeatures, lambda out: out[0], "tuple"), (DictOutput, lambda out: out["logits"], "dict")],
    ids=["tuple", "dict"],
)
def test_output_picks_the_logits(toy_data, model_type, output, kind):
    torch.manual_seed(0)
    model = model_type()
    history = train(
        model,
        toy_data,
        epochs=10,
        lr=0.1,
        batch_size=32,
        output=output,
        eval_set=toy_data,
        progress=False,
    )
    assert history["eval_accuracy"][-1] > 0.9
    assert evaluate(model, toy_data, output=output)["accuracy"] == history["eval_accuracy"][-1]
    assert predict(model, toy_data.tensors[0], output=output).shape == (len(toy_data), 2)
    with pytest.raises(TypeError, match=rf"model returned a {kind}, not a tensor.*pass output="):
        train(model, toy_data, epochs=1, progress=False)
    with pytest.raises(TypeError, match=rf"model returned a {kind}"):
        evaluate(model, toy_data)


def test_the_output_must_be_batch_by_classes_for_the_cross_entropy(toy_data):
    with pytest.raises(ValueError, match=r"shape \[batch, classes\] = \[64, classes\].*\(64,\)"):
        train(nn.Sequential(nn.Linear(8, 1), nn.Flatten(0)), toy_data, epochs=1, progress=False)


# --------------------------------------------------------------------------- regression


@pytest.mark.parametrize("width", [None, 3], ids=["batch", "batch-by-k"])
def test_regression_through_loss_fn_reports_no_accuracy(width):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    w = torch.randn(5, width or 1, generator=g)
    y = x @ w if width else (x @ w).squeeze(1)
    data = TensorDataset(x, y)
    head = nn.Linear(5, width or 1)
    model = head if width else nn.Sequential(head, nn.Flatten(0))

    def mse(out, batch):
        return F.mse_loss(out, batch[1])

    history = train(
        model,
        data,
        epochs=20,
        lr=0.05,
        batch_size=20,
        loss_fn=mse,
        eval_set=data,
        progress=False,
    )
    assert set(history) == {"epoch", "loss", "seconds", "eval_loss"}
    assert history["loss"][-1] < 0.1 * history["loss"][0]
    result = evaluate(model, data, loss_fn=mse)
    assert set(result) == {"loss"}
    with torch.no_grad():
        expected = F.mse_loss(model(x), y).item()
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    assert history["eval_loss"][-1] == pytest.approx(expected, rel=1e-5)
    # The same numbers through a DataLoader (batch means weighted by batch size).
    loaded = evaluate(model, DataLoader(data, batch_size=30), loss_fn=mse)
    assert loaded["loss"] == pytest.approx(expected, rel=1e-5)


def test_an_iterable_dataset_streams_in_its_own_order(toy_data):
    """A stream without a length: batched in the order it yields, never shuffled."""

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(zip(*toy_data.tensors, strict=True))

    seen = []

    def loss_fn(logits, batch):
        seen.append(batch[1].clone())
        return F.cross_entropy(logits, batch[1])

    train(MLP((8, 2)), Stream(), epochs=2, batch_size=100, loss_fn=loss_fn, progress=False)
    assert [len(t) for t in seen] == [100, 100, 56] * 2
    assert torch.equal(torch.cat(seen[:3]), toy_data.tensors[1])
    assert torch.equal(torch.cat(seen[3:]), toy_data.tensors[1])
    nan_stream = DataLoader(TensorDataset(torch.full((4, 8), float("nan")), torch.zeros(4).long()))
    with pytest.raises(FloatingPointError, match=r"step 1 of 4"):
        train(MLP((8, 2)), nan_stream, epochs=1, progress=False)
