"""Chapter 2's seed protocols (companion.experiments) on tiny synthetic data."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from companion import experiments as ex
from companion.models import MLP
from companion.stats import Summary


@pytest.fixture
def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def make() -> MLP:
    return MLP((6, 8, 4, 2))


@pytest.fixture
def refs(data):
    return ex.train_references(make, data, seeds=[0, 1, 2], epochs=2, lr=0.1)


def test_references_depend_on_the_seed_and_repeat_exactly(data, refs):
    again = ex.train_references(make, data, seeds=[1], epochs=2, lr=0.1)
    assert torch.equal(again[0].fc1.weight, refs[1].fc1.weight)
    assert not torch.equal(refs[0].fc1.weight, refs[1].fc1.weight)


def test_l1_runs_pairs_methods_and_only_the_proximal_step_makes_zeros(data):
    rows, models = ex.l1_runs(
        make, data, data, lambdas=[0.0, 0.05], seeds=[0, 1], epochs=2, lr=0.2, batch_size=16
    )
    assert [(r["seed"], r["method"]) for r in rows] == [
        (0, "none"), (0, "subgradient"), (0, "proximal"),
        (1, "none"), (1, "subgradient"), (1, "proximal"),
    ]  # fmt: skip
    for r in rows:
        if r["method"] == "proximal":
            assert r["exact_zeros"] > 0.05
        else:
            assert r["exact_zeros"] == 0
    assert set(models) == {
        (s, lam, m) for s, lam, m in ((r["seed"], r["lambda"], r["method"]) for r in rows)
    }


def test_pruning_curves_rows_sparsity_and_random_draws_per_seed(data, refs):
    calls = []
    rows, tuned = ex.pruning_curves(
        refs,
        [0, 1, 2],
        data,
        amounts=[0.5, 0.75],
        finetune_fn=lambda m, s: calls.append(s),
        finetune_amounts=[0.75],
    )
    assert len(rows) == 3 * 2 * 2 * 2 and len(calls) == 3 * 4 and len(tuned) == 12
    for r in rows:
        assert r["sparsity"] == pytest.approx(r["amount"], abs=0.02)
        assert (r["fine-tuned"] is None) == (r["amount"] == 0.5)
    m0, m1 = tuned[(0, "layer", "random", 0.75)], tuned[(1, "layer", "random", 0.75)]
    assert not torch.equal(m0.fc1.weight_mask, m1.fc1.weight_mask)
    assert not hasattr(refs[0].fc1, "weight_mask")  # references untouched


def test_layer_sensitivity_prunes_one_layer(data, refs):
    rows = ex.layer_sensitivity(refs[:1], [0], data, amounts=[0.0, 1.0])
    assert [(r["layer"], r["amount"]) for r in rows] == [
        ("fc1", 0.0), ("fc1", 1.0), ("fc2", 0.0), ("fc2", 1.0), ("fc3", 0.0), ("fc3", 1.0)
    ]  # fmt: skip
    from companion.training import evaluate

    assert rows[0]["accuracy"] == evaluate(refs[0], data)["accuracy"]


def test_structured_vs_small_dense_shrinks_and_trains_the_control(data, refs):
    rows, models = ex.structured_vs_small_dense(
        refs[:2], [0, 1], data, data, amount=0.5,
        finetune_epochs=1, finetune_lr=0.05, scratch_epochs=2, scratch_lr=0.1,
    )  # fmt: skip
    assert [r["sizes"] for r in rows] == [(6, 4, 2, 2), (6, 4, 2, 2)]
    masked, small = models[0]
    x = torch.randn(5, 6)
    torch.testing.assert_close(small.eval()(x), masked.eval()(x), atol=1e-5, rtol=0)
    for r in rows:
        assert 0 <= r["small dense"] <= 1


def test_han_vs_dense_keeps_the_schedule_and_trains_an_unpruned_control(data, refs):
    rows, pruned = ex.han_vs_dense(refs, [0, 1, 2], data, data, schedule=[0.5, 0.8])
    for r in rows:
        assert r["kept"] == pytest.approx(0.2, abs=0.02)
        assert {"kept_fc1", "kept_fc2", "kept_fc3"} <= set(r)
    assert set(pruned) == {0, 1, 2}


def test_rows_values_and_summary_table():
    rows = [
        {"seed": s, "arm": a, "acc": 0.9 + s / 100 + (a == "b") / 10}
        for s in range(3)
        for a in "ab"
    ]
    assert ex.rows_values(rows, "acc", arm="a") == pytest.approx([0.9, 0.91, 0.92])
    table = ex.summary_table(rows, ["arm"], ["acc"], {"acc": ".1%"})
    assert [r["arm"] for r in table.rows] == ["a", "b"]
    assert isinstance(table.rows[1]["acc"], Summary) and table.rows[1]["acc"].n == 3
    with pytest.raises(ValueError, match="repeat a seed"):
        ex.rows_values(rows, "acc")
    with pytest.raises(ValueError, match="no row"):
        ex.rows_values(rows, "acc", arm="c")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda d, r: ex.train_references(make, d, seeds=[], epochs=1, lr=0.1), "seeds"),
        (lambda d, r: ex.train_references(make, d, seeds=[0, 0], epochs=1, lr=0.1), "distinct"),
        (lambda d, r: ex.pruning_curves(r, [0], d, amounts=[0.5]), "same length"),
        (lambda d, r: ex.pruning_curves(r[:1], [0], d, amounts=[1.5]), "amounts"),
        (
            lambda d, r: ex.pruning_curves(r[:1], [0], d, amounts=[0.5], finetune_amounts=[0.5]),
            "finetune_fn",
        ),
        (lambda d, r: ex.pruning_curves(r[:1], [0], d, amounts=[0.5], scopes=["all"]), "scopes"),
        (lambda d, r: ex.han_vs_dense(r[:1], [0], d, d, schedule=[0.8, 0.5]), "increasing"),
        (
            lambda d, r: ex.l1_runs(make, d, d, lambdas=[-1.0], seeds=[0], epochs=1, lr=0.1),
            "lambdas",
        ),
        (
            lambda d, r: ex.structured_vs_small_dense(
                r[:1],
                [0],
                d,
                d,
                amount=1.0,
                finetune_epochs=1,
                finetune_lr=0.1,
                scratch_epochs=1,
                scratch_lr=0.1,
            ),
            "amount",
        ),  # fmt: skip
    ],
)
def test_bad_arguments_name_the_argument(data, refs, call, match):
    with pytest.raises(ValueError, match=match):
        call(data, refs)


def test_wrong_types():
    with pytest.raises(TypeError, match="make_model"):
        ex.train_references(
            3, TensorDataset(torch.randn(4, 6), torch.zeros(4).long()), seeds=[0], epochs=1, lr=0.1
        )
    with pytest.raises(TypeError, match="references"):
        ex.layer_sensitivity(
            [3], [0], TensorDataset(torch.randn(4, 6), torch.zeros(4).long()), amounts=[0.5]
        )
