"""companion.lottery: criteria sweep, lottery-ticket rounds with their controls, 2:4 against 50%."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from companion import lottery
from companion.masks import current_masks
from companion.models import MLP
from companion.training import train
from companion.utils import clone_model


def _data(n: int = 96, features: int = 8, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return TensorDataset(x, y)


def _make() -> MLP:
    return MLP((8, 16, 8, 2))


def _train_fn(data: TensorDataset):
    def train_fn(model, seed):
        train(model, data, epochs=1, lr=0.05, batch_size=16, seed=seed, progress=False)

    return train_fn


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def references():
    data = _data()
    initial, trained = lottery.train_from_init(_make, _train_fn(data), seeds=[0, 1])
    return data, initial, trained


def test_train_from_init_keeps_the_initial_weights_and_seeds_them(references):
    _, initial, trained = references
    assert not torch.equal(initial[0].fc1.weight, trained[0].fc1.weight)  # trained moved
    assert not torch.equal(initial[0].fc1.weight, initial[1].fc1.weight)  # seeds differ
    again, _ = lottery.train_from_init(_make, lambda m, s: None, seeds=[0])
    assert torch.equal(again[0].fc1.weight, initial[0].fc1.weight)  # the seed fixes theta_0


def test_criteria_sweep_prunes_the_amount_and_leaves_references_alone(references):
    data, _, trained = references
    before = [_state(m) for m in trained]
    rows = lottery.criteria_sweep(
        trained, [0, 1], data, data, amounts=[0.5, 0.9], criteria=lottery.CRITERIA
    )
    assert len(rows) == 2 * len(lottery.CRITERIA) * 2
    for r in rows:
        assert r["sparsity"] == pytest.approx(r["amount"], abs=0.02)
        assert 0.0 <= r["accuracy"] <= 1.0
    assert all(_same_state(b, _state(m)) for b, m in zip(before, trained, strict=True))


def test_criteria_sweep_random_draws_differ_by_seed_and_magnitude_is_the_magnitude_mask():
    model = _make()
    data = _data()
    same = [clone_model(model), clone_model(model)]
    rows = lottery.criteria_sweep(
        same, [0, 1], data, data, amounts=[0.7], criteria=["random", "magnitude"]
    )
    random_acc = {r["seed"]: r["accuracy"] for r in rows if r["criterion"] == "random"}
    magnitude_acc = {r["seed"]: r["accuracy"] for r in rows if r["criterion"] == "magnitude"}
    assert magnitude_acc[0] == magnitude_acc[1]  # same network, same deterministic mask
    scores = [lottery._scores(m, "random", None, s) for m, s in zip(same, [0, 1], strict=True)]
    assert not torch.equal(scores[0]["fc1"], scores[1]["fc1"])
    assert random_acc  # both seeds evaluated


def test_criteria_sweep_rejects_bad_arguments(references):
    data, _, trained = references
    with pytest.raises(ValueError, match="criteria"):
        lottery.criteria_sweep(trained, [0, 1], data, data, amounts=[0.5], criteria=["l2"])
    with pytest.raises(ValueError, match="amounts"):
        lottery.criteria_sweep(trained, [0, 1], data, data, amounts=[1.5])
    with pytest.raises(ValueError, match="same length"):
        lottery.criteria_sweep(trained, [0], data, data, amounts=[0.5])
    with pytest.raises(ValueError, match="scope"):
        lottery.criteria_sweep(trained, [0, 1], data, data, amounts=[0.5], scope="net")


def test_round_fractions_compound_the_rate():
    flat = [f for pair in lottery.round_fractions(3, 0.5, 0.2) for f in pair]
    assert flat == pytest.approx([0.5, 0.8, 0.25, 0.64, 0.125, 0.512])
    assert list(lottery.round_fractions(1, 0.4)[0]) == pytest.approx([0.6, 0.8])
    with pytest.raises(ValueError, match="rate"):
        lottery.round_fractions(2, 1.0)
    with pytest.raises(ValueError, match="rounds"):
        lottery.round_fractions(0, 0.5)


def test_lottery_rounds_arms_masks_and_rewinding(references, monkeypatch):
    data, initial, trained = references
    before = [_state(m) for m in (*initial, *trained)]
    seen: list[tuple[int, dict, dict]] = []
    train_fn = _train_fn(data)

    def recording_train_fn(model, seed):
        # what each arm starts from: its masks and its weights before training
        seen.append((seed, current_masks(model), _state(model)))
        train_fn(model, seed)

    rows = lottery.lottery_rounds(
        initial,
        trained,
        [0, 1],
        data,
        make_model=_make,
        train_fn=recording_train_fn,
        rounds=2,
        rate=0.5,
    )
    assert [(r["seed"], r["round"], r["arm"]) for r in rows] == [
        (s, r, arm)
        for s in (0, 1)
        for r, arms in (
            (0, ("dense",)),
            (1, ("ticket", "reinit", "random mask")),
            (2, ("ticket", "reinit", "random mask")),
        )
        for arm in arms
    ]
    for r in rows:
        if r["round"]:
            hidden, output = lottery.round_fractions(2, 0.5)[r["round"] - 1]
            assert r["kept_fc1"] == pytest.approx(hidden, abs=0.01)
            assert r["kept_fc2"] == pytest.approx(hidden, abs=0.02)
            assert r["kept_fc3"] == pytest.approx(output, abs=0.07)
    # seed 0, round 1: ticket, reinit, random mask
    (s_t, masks_t, state_t), (s_r, masks_r, state_r), (s_m, masks_m, state_m) = seen[:3]
    assert s_t == s_r == s_m == 0  # same data order for every arm
    init = initial[0].state_dict()
    assert torch.equal(state_t["fc1.weight_orig"], init["fc1.weight"])  # rewound to theta_0
    assert torch.equal(masks_r["fc1"], masks_t["fc1"])  # reinit: the ticket's mask ...
    assert not torch.equal(state_r["fc1.weight_orig"], init["fc1.weight"])  # ... fresh weights
    assert torch.equal(state_m["fc1.weight_orig"], init["fc1.weight"])  # random mask: theta_0 ...
    assert not torch.equal(masks_m["fc1"], masks_t["fc1"])  # ... another mask, same fraction
    assert masks_m["fc1"].sum() == masks_t["fc1"].sum()
    # the ticket mask shrinks: round 2 keeps a subset of round 1
    masks_t2 = seen[3][1]
    assert bool((masks_t2["fc1"] <= masks_t["fc1"]).all())
    after = [_state(m) for m in (*initial, *trained)]
    assert all(_same_state(b, a) for b, a in zip(before, after, strict=True))


def test_lottery_rounds_rejects_bad_arguments(references):
    data, initial, trained = references
    kwargs = {"make_model": _make, "train_fn": _train_fn(data), "rounds": 1, "rate": 0.5}
    with pytest.raises(ValueError, match="same length"):
        lottery.lottery_rounds(initial[:1], trained, [0, 1], data, **kwargs)
    with pytest.raises(TypeError, match="train_fn"):
        lottery.lottery_rounds(initial, trained, [0, 1], data, **{**kwargs, "train_fn": 3})
    with pytest.raises(ValueError, match="rate"):
        lottery.lottery_rounds(initial, trained, [0, 1], data, **{**kwargs, "rate": 0.0})


def test_nm_vs_unstructured_same_fraction_and_same_fine_tuning(references):
    data, _, trained = references
    calls = []

    def finetune(model, seed):
        calls.append((seed, {k: int(v.sum()) for k, v in current_masks(model).items()}))

    rows = lottery.nm_vs_unstructured(trained, [0, 1], data, finetune_fn=finetune)
    assert [(r["seed"], r["pattern"]) for r in rows] == [
        (0, "2:4"),
        (0, "unstructured"),
        (1, "2:4"),
        (1, "unstructured"),
    ]
    for r in rows:
        assert r["sparsity"] == 0.5
    # both patterns keep half of every layer, and both are fine-tuned with the seed
    assert [c[0] for c in calls] == [0, 0, 1, 1]
    assert calls[0][1] == calls[1][1]
    with pytest.raises(TypeError, match="finetune_fn"):
        lottery.nm_vs_unstructured(trained, [0, 1], data, finetune_fn=None)
