"""The protocols of the chapter "Distillation beyond logits": ``companion.beyond_logits``.

Every arm of a seed starts from the same weights and differs only in its loss; the tuning picks
the best validation candidate and reuses its run for the first seed; the teacher is never
changed; a born-again student starts from weights of its own; bad input names the argument.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

import companion.beyond_logits as bl
from companion.distillation import Recipe
from companion.models import MLP
from companion.training import evaluate
from companion.utils import seed_everything

SIZES = (6, 4, 3)
FAST = Recipe(lr=0.05, epochs=2, batch_size=16, alpha=0.0)
KD = Recipe(lr=0.05, epochs=2, batch_size=16, temperature=2.0, alpha=0.9)


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g))


def _teacher():
    seed_everything(5)
    return MLP((6, 12, 8, 3), dropout=0.2).eval()


def _setting(arm, lr=0.05):
    if arm == "logit KD":
        return bl.Setting(KD.replace(lr=lr))
    return bl.Setting(FAST.replace(lr=lr), weight=0.5 if arm in ("hint", "cosine") else 0.0)


@pytest.fixture
def starts(monkeypatch):
    """The student's weights at the moment each fit call starts, and what it was given."""
    seen = []
    real_fit = bl.fit

    def recording_fit(student, dataset, recipe, **kwargs):
        seen.append(({k: v.clone() for k, v in student.state_dict().items()}, kwargs))
        return real_fit(student, dataset, recipe, **kwargs)

    monkeypatch.setattr(bl, "fit", recording_fit)
    return seen


def test_every_arm_of_a_seed_starts_from_the_same_weights_and_differs_in_its_loss(starts):
    teacher = _teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    models = {
        arm: bl.train_arm(arm, _setting(arm), _data(), seed=3, teacher=teacher, student_sizes=SIZES)
        for arm in bl.ARMS
    }
    first = starts[0][0]
    for state, _ in starts[1:]:
        assert all(torch.equal(first[k], state[k]) for k in first)
    given = [kwargs for _, kwargs in starts]
    assert "teacher_logits" not in given[0] and "features" not in given[0]
    torch.testing.assert_close(given[1]["teacher_logits"], teacher(_data().tensors[0]))
    assert [g["features"][0].kind for g in given[2:]] == ["hint", "cosine"]
    trained = [m.fc1.weight for m in models.values()]
    assert all(not torch.equal(trained[0], w) for w in trained[1:])  # the losses differ
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training and all(not m.training for m in models.values())


def test_a_run_is_reproducible_from_its_seed():
    a = bl.train_arm(
        "cosine", _setting("cosine"), _data(), seed=1, teacher=_teacher(), student_sizes=SIZES
    )
    b = bl.train_arm(
        "cosine", _setting("cosine"), _data(), seed=1, teacher=_teacher(), student_sizes=SIZES
    )
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_compare_arms_picks_the_best_validation_candidate_and_reuses_its_run(starts):
    data, val, test = _data(), _data(seed=1), _data(seed=2)
    grid = [_setting("hint", lr) for lr in (0.01, 0.05, 0.2)]
    result = bl.compare_arms(
        data,
        val,
        test,
        seeds=[0, 1, 2],
        teachers=[_teacher()] * 3,
        candidates={"hint": grid},
        student_sizes=SIZES,
    )
    assert list(result.validation["hint"]) == grid
    best = max(grid, key=result.validation["hint"].get)
    assert result.chosen["hint"] == best
    assert len(starts) == 3 + 2  # three candidates on seed 0, then seeds 1 and 2 only
    assert result.validation["hint"][best] == evaluate(result.models["hint"][0], val)["accuracy"]
    assert result.test["hint"] == [evaluate(m, test)["accuracy"] for m in result.models["hint"]]


def test_born_again_students_start_from_weights_of_their_own(starts):
    data = _data()
    teachers = [
        bl.train_arm("alone", _setting("alone"), data, seed=s, student_sizes=SIZES) for s in (0, 1)
    ]
    starts.clear()
    result = bl.born_again(
        teachers,
        data,
        _data(seed=1),
        _data(seed=2),
        seeds=[0, 1],
        candidates=[KD, KD.replace(lr=0.1)],
        student_sizes=SIZES,
    )
    assert len(starts) == 2 + 1 and len(result.test["born again"]) == 2
    seed_everything(0)
    teacher_start = MLP(SIZES).state_dict()
    seed_everything(0 + bl.BORN_AGAIN_SEED_OFFSET)
    own_start = MLP(SIZES).state_dict()
    assert all(torch.equal(own_start[k], starts[0][0][k]) for k in own_start)
    assert not torch.equal(teacher_start["fc1.weight"], starts[0][0]["fc1.weight"])
    torch.testing.assert_close(starts[-1][1]["teacher_logits"], teachers[1](data.tensors[0]))
    assert result.chosen["born again"].recipe in (KD, KD.replace(lr=0.1))


def test_setting_describes_only_what_the_arm_uses():
    assert str(bl.Setting(FAST)) == "lr 0.05, 2 epochs"
    assert str(bl.Setting(KD)) == "lr 0.05, 2 epochs, T 2, alpha 0.9"
    assert str(bl.Setting(FAST, weight=0.25)) == "lr 0.05, 2 epochs, weight 0.25"


BAD = [
    (lambda: bl.Setting(FAST, weight=-1.0), ValueError, r"weight"),
    (lambda: bl.Setting("fast"), TypeError, r"recipe must be a companion.distillation.Recipe"),
    (
        lambda: bl.train_arm("fitnets", _setting("alone"), _data(), seed=0),
        ValueError,
        r"arm must be one of",
    ),
    (
        lambda: bl.train_arm("hint", _setting("hint"), _data(), seed=0),
        ValueError,
        r"needs the teacher",
    ),
    (
        lambda: bl.train_arm(
            "hint", bl.Setting(KD, weight=0.5), _data(), seed=0, teacher=_teacher()
        ),
        ValueError,
        r"needs weight > 0 and recipe.alpha = 0",
    ),
    (
        lambda: bl.train_arm("cosine", bl.Setting(FAST), _data(), seed=0, teacher=_teacher()),
        ValueError,
        r"needs weight > 0",
    ),
    (
        lambda: bl.train_arm("alone", _setting("hint"), _data(), seed=0),
        ValueError,
        r"no feature term",
    ),
    (lambda: bl.train_arm("alone", FAST, _data(), seed=0), TypeError, r"setting must be a Setting"),
    (
        lambda: bl.train_arm("alone", _setting("alone"), [1, 2], seed=0),
        TypeError,
        r"labelled must be",
    ),
    (
        lambda: bl.compare_arms(
            _data(),
            _data(),
            _data(),
            seeds=[0, 1],
            teachers=[_teacher()],
            candidates={"alone": [_setting("alone")]},
        ),
        ValueError,
        r"one teacher per seed \(2\), got 1",
    ),
    (
        lambda: bl.compare_arms(
            _data(),
            _data(),
            _data(),
            seeds=[],
            teachers=[],
            candidates={"alone": [_setting("alone")]},
        ),
        ValueError,
        r"seeds must hold at least one seed",
    ),
    (
        lambda: bl.compare_arms(
            _data(), _data(), _data(), seeds=[0], teachers=[_teacher()], candidates={"alone": []}
        ),
        ValueError,
        r"candidates\['alone'\] must be a non-empty list",
    ),
    (
        lambda: bl.compare_arms(
            _data(),
            _data(),
            _data(),
            seeds=[0],
            teachers=[_teacher()],
            candidates={"alone": [_setting("alone")] * 2},
        ),
        ValueError,
        r"the same Setting twice",
    ),
    (
        lambda: bl.compare_arms(
            _data(),
            "val",
            _data(),
            seeds=[0],
            teachers=[_teacher()],
            candidates={"alone": [_setting("alone")]},
        ),
        TypeError,
        r"val_set must be a TensorDataset",
    ),
    (
        lambda: bl.born_again([_teacher()], _data(), _data(), _data(), seeds=[0], candidates=[]),
        ValueError,
        r"candidates must be a non-empty list",
    ),
    (
        lambda: bl.born_again(
            [_teacher()], _data(), _data(), _data(), seeds=[0, 1], candidates=[KD]
        ),
        ValueError,
        r"one teacher per seed",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), BAD)
def test_bad_input_fails_early_with_a_clear_message(call, error, message):
    with pytest.raises(error, match=message):
        call()
