"""distill with precomputed logits or without labels; cosine_sgd, Recipe, fit and the
multi-seed protocols of chapter 4 (tiny synthetic data, seconds)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import TensorDataset

from companion.distillation import (
    SCARCE_ARMS,
    Recipe,
    cosine_sgd,
    distill,
    fit,
    omitted_class,
    scarce_label_arms,
    train_teachers,
)
from companion.models import MLP
from companion.training import predict, train
from companion.utils import seed_everything

FAST = Recipe(lr=0.1, epochs=2, batch_size=32)


def _three_classes(n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0.4).long() + (x[:, 0] > -0.4).long()
    return TensorDataset(x, y)


@pytest.fixture
def teacher():
    data = _three_classes()
    seed_everything(0)
    model = MLP((6, 16, 3))
    train(model, data, epochs=3, lr=0.1, batch_size=32, progress=False)
    return model.eval()


def _pair():
    seed_everything(1)
    a = MLP((6, 5, 3))
    b = MLP((6, 5, 3))
    b.load_state_dict(a.state_dict())
    return a, b


def test_precomputed_logits_train_exactly_as_the_cached_teacher(teacher):
    data = _three_classes()
    a, b = _pair()
    distill(a, teacher, data, epochs=2, lr=0.1, seed=2, progress=False)
    distill(
        b,
        None,
        data,
        teacher_logits=predict(teacher, data.tensors[0]),
        epochs=2,
        lr=0.1,
        seed=2,
        progress=False,
    )
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)


def test_without_labels_the_targets_are_never_read(teacher):
    data = _three_classes()
    logits = predict(teacher, data.tensors[0])
    a, b = _pair()
    wrong = TensorDataset(data.tensors[0], torch.zeros_like(data.tensors[1]))
    distill(a, None, wrong, teacher_logits=logits, labels=False, epochs=2, lr=0.1, progress=False)
    distill(
        b,
        None,
        TensorDataset(data.tensors[0]),
        teacher_logits=logits,
        labels=False,
        epochs=2,
        lr=0.1,
        progress=False,
    )
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)
    # And the labels do matter when they are used.
    c, _ = _pair()
    distill(c, None, wrong, teacher_logits=logits, alpha=0.5, epochs=2, lr=0.1, progress=False)
    assert not torch.allclose(c.fc1.weight, a.fc1.weight)


def test_uncached_unlabelled_distillation_matches_the_cached_one(teacher):
    data = TensorDataset(_three_classes().tensors[0])
    a, b = _pair()
    distill(a, teacher, data, labels=False, epochs=1, lr=0.1, progress=False)
    distill(b, teacher, data, labels=False, cache_teacher=False, epochs=1, lr=0.1, progress=False)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"teacher": None}, TypeError, "teacher must be a torch.nn.Module"),
        ({"teacher_logits": torch.zeros(5, 3)}, ValueError, "one row per example"),
        ({"teacher_logits": torch.zeros(240)}, ValueError, r"shape \[batch, classes\]"),
        ({"teacher_logits": torch.full((240, 3), float("nan"))}, ValueError, "NaN"),
        ({"teacher_logits": [[0.0]]}, TypeError, "must be a torch.Tensor"),
        (
            {"teacher_logits": torch.zeros(240, 3), "cache_teacher": False},
            ValueError,
            "cannot be combined with cache_teacher=False",
        ),
        ({"labels": 1}, TypeError, "labels must be a bool"),
        ({"teacher": "t", "teacher_logits": torch.zeros(240, 3)}, TypeError, "Module or None"),
    ],
)
def test_distill_rejects(kwargs, error, match, teacher):
    args = {"teacher": teacher, **kwargs}
    with pytest.raises(error, match=match):
        distill(
            MLP((6, 3)), args.pop("teacher"), _three_classes(), epochs=1, progress=False, **args
        )


def test_cosine_sgd_decays_from_lr_to_zero():
    opt, on_step = cosine_sgd(torch.nn.Linear(2, 2), lr=0.4, total_steps=10, momentum=0.5)
    assert opt.param_groups[0]["lr"] == 0.4 and opt.param_groups[0]["momentum"] == 0.5
    rates = []
    for k in range(1, 11):
        on_step(k)
        rates.append(opt.param_groups[0]["lr"])
    assert rates[4] == pytest.approx(0.2)  # half-way: half the rate
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="total_steps must be an integer >= 1"):
        cosine_sgd(torch.nn.Linear(2, 2), lr=0.1, total_steps=0)
    with pytest.raises(ValueError, match="lr must be"):
        cosine_sgd(torch.nn.Linear(2, 2), lr=0.0, total_steps=3)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("lr", 0.0, "lr must be"),
        ("epochs", 0, "epochs must be an integer >= 1"),
        ("label_smoothing", 1.0, r"label_smoothing must be in \[0.0, 1.0\)"),
        ("temperature", 0.0, "temperature must be"),
        ("alpha", 1.5, r"alpha must be in \[0.0, 1.0\]"),
        ("batch_size", 0, "batch_size must be an integer >= 1"),
        ("momentum", 1.0, "momentum must be"),
    ],
)
def test_recipe_validates(field, value, match):
    with pytest.raises(ValueError, match=match):
        Recipe(**{field: value})


def test_fit_student_alone_and_distilled_share_everything_but_the_loss(teacher):
    data = _three_classes()
    logits = predict(teacher, data.tensors[0])
    a, b = _pair()
    ha = fit(a, data, FAST, seed=0)
    # alpha = 0 turns the distillation loss into the plain cross-entropy: same training.
    hb = fit(
        b, data, Recipe(lr=0.1, epochs=2, batch_size=32, alpha=0.0), seed=0, teacher_logits=logits
    )
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)
    assert ha["loss"] == pytest.approx(hb["loss"])
    c, d = _pair()
    fit(c, data, FAST, seed=0, epochs=3)
    fit(d, data, Recipe(lr=0.1, epochs=2, batch_size=32, label_smoothing=0.2), seed=0)
    assert not torch.allclose(c.fc1.weight, a.fc1.weight)  # epochs overrides the recipe
    assert not torch.allclose(d.fc1.weight, a.fc1.weight)  # label smoothing is applied


def test_fit_student_rejects():
    data = _three_classes()
    with pytest.raises(TypeError, match="recipe must be a companion.distillation.Recipe"):
        fit(MLP((6, 3)), data, {"lr": 0.1}, seed=0)
    with pytest.raises(ValueError, match="labels=False needs teacher_logits"):
        fit(MLP((6, 3)), data, FAST, seed=0, labels=False)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        fit(MLP((6, 3)), data, FAST, seed=0, epochs=0)


def test_train_teachers_one_per_seed_reproducible():
    data = _three_classes()
    first = train_teachers(data, [0, 1], sizes=(6, 8, 3), recipe=FAST)
    again = train_teachers(data, [1], sizes=(6, 8, 3), recipe=FAST)
    assert all(not t.training for t in first)
    assert not torch.equal(first[0].fc1.weight, first[1].fc1.weight)
    torch.testing.assert_close(first[1].fc1.weight, again[0].fc1.weight)
    with pytest.raises(ValueError, match="seeds must hold at least one seed"):
        train_teachers(data, [], sizes=(6, 8, 3))


def _protocol_args(teacher, seeds=(0, 1)):
    data = _three_classes(300)
    return dict(
        train_part=data,
        test_set=_three_classes(90, seed=5),
        seeds=list(seeds),
        big_teacher_logits=predict(teacher, data.tensors[0]),
        small_teachers=train_teachers(
            TensorDataset(*(t[:60] for t in data.tensors)),
            list(seeds),
            sizes=(6, 8, 3),
            recipe=FAST,
        ),
        alone=FAST,
        distilled=FAST,
        labelled=60,
        student_sizes=(6, 4, 3),
    )


def test_scarce_label_arms_returns_every_arm_per_seed_and_is_reproducible(teacher):
    args = _protocol_args(teacher)
    results = scarce_label_arms(**args)
    assert list(results) == list(SCARCE_ARMS)
    assert all(len(v) == 2 and all(0.0 <= a <= 1.0 for a in v) for v in results.values())
    again = scarce_label_arms(
        **{**args, "seeds": [1], "small_teachers": args["small_teachers"][1:]}
    )
    assert {arm: v[1] for arm, v in results.items()} == {arm: v[0] for arm, v in again.items()}


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"seeds": [], "small_teachers": []}, ValueError, "seeds must hold at least one seed"),
        ({"seeds": [0]}, ValueError, "one teacher per seed"),
        ({"labelled": 300}, ValueError, r"labelled must be in \[1, 299\]"),
        ({"alone": {}}, TypeError, "alone must be a companion.distillation.Recipe"),
        ({"big_teacher_logits": torch.zeros(10, 3)}, ValueError, "one row per image"),
    ],
)
def test_scarce_label_arms_rejects(change, error, match, teacher):
    with pytest.raises(error, match=match):
        scarce_label_arms(**{**_protocol_args(teacher), **change})


def test_omitted_class_counts_and_bias_choice(teacher):
    data = _three_classes(300)
    val, test = _three_classes(90, seed=6), _three_classes(90, seed=7)
    logits = predict(teacher, data.tensors[0])
    results = omitted_class(
        data,
        val,
        test,
        seeds=[0, 1],
        teacher_logits=logits,
        recipe=FAST,
        omitted=2,
        sizes=(6, 8, 3),
        biases=(0.0, 1.0, 2.0),
    )
    n_class = int((test.tensors[1] == 2).sum())
    assert results["removed"] == [int((data.tensors[1] == 2).sum())] * 2
    for arm in ("alone", "distilled"):
        assert all(b in (0.0, 1.0, 2.0) for b in results[f"{arm} bias"])
        assert all(0 <= r <= n_class for r in results[f"{arm} recognised"])
        assert all(0 <= r <= n_class for r in results[f"{arm} recognised, bias"])
        assert all(0 <= e <= len(test) for e in results[f"{arm} errors, bias"])
    # A student trained alone without class 2 has only been taught to push its logit down.
    assert results["alone predicted"] == [0, 0]
    with pytest.raises(ValueError, match="omitted=5 is not a class"):
        omitted_class(data, val, test, seeds=[0], teacher_logits=logits, recipe=FAST, omitted=5)
    with pytest.raises(ValueError, match="biases must hold at least one"):
        omitted_class(data, val, test, seeds=[0], teacher_logits=logits, recipe=FAST, biases=())
    with pytest.raises(ValueError, match="one row per image"):
        omitted_class(data, val, test, seeds=[0], teacher_logits=logits[:3], recipe=FAST)


def test_same_steps_on_the_larger_transfer_set():
    # 22 epochs over 10,000 labelled images are 4 epochs over 55,000 images.
    assert max(1, round(22 * 10_000 / 55_000)) == 4
    assert math.ceil(10_000 / 256) * 22 == pytest.approx(math.ceil(55_000 / 256) * 4, rel=0.03)


def test_recipe_replace_copies_and_validates():
    recipe = Recipe(lr=0.1)
    assert recipe.replace(epochs=44) == Recipe(lr=0.1, epochs=44)
    assert recipe.epochs == 22
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        recipe.replace(epochs=0)


def test_scarce_label_arms_unlabelled_recipe_changes_only_that_arm(teacher):
    args = _protocol_args(teacher, seeds=(0,))
    default = scarce_label_arms(**args)
    own = scarce_label_arms(**args, unlabelled=Recipe(lr=0.05, epochs=3, batch_size=32))
    changed = [arm for arm in SCARCE_ARMS if own[arm] != default[arm]]
    assert changed in ([], ["small teacher, unlabelled"])  # tiny data: it may tie
    assert {a: v for a, v in own.items() if a != "small teacher, unlabelled"} == {
        a: v for a, v in default.items() if a != "small teacher, unlabelled"
    }
    with pytest.raises(TypeError, match="unlabelled must be a companion.distillation.Recipe"):
        scarce_label_arms(**args, unlabelled={"lr": 0.1})
