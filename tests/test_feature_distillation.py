"""Feature distillation (FitNets hints, cosine hidden-state loss) through ``distill``, and the
forward- against reverse-KL demonstration ``fit_one_mode``.

Hooks capture the named layers only and are removed afterwards (also on errors); the hint and
cosine losses equal their formulas; the teacher stays frozen and bit-identical; the regressor is
trained with the student; bad input fails early with a message naming the argument.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from companion.distillation import (
    FeatureLoss,
    capture_features,
    cosine_feature_loss,
    cosine_sgd,
    distill,
    fit_one_mode,
    hint_loss,
    make_regressor,
    mixture_probs,
)
from companion.models import MLP
from companion.utils import seed_everything


def _data(n=48, features=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g)
    )


def _teacher():
    """A teacher with BatchNorm and dropout: eval mode and no_grad are visible in its state."""
    seed_everything(1)
    return nn.Sequential(
        nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3)
    )


def _student():
    seed_everything(2)
    return MLP((6, 8, 3))


def _hooks(model):
    return [name for name, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _run(features, *, student=None, teacher=..., dataset=None, **kwargs):
    args = dict(epochs=2, batch_size=16, lr=0.1, progress=False, seed=3)
    args.update(kwargs)
    return distill(
        student if student is not None else _student(),
        teacher if teacher is not ... else _teacher(),
        dataset if dataset is not None else _data(),
        features=features,
        **args,
    )


# --------------------------------------------------------------------------- hooks


def test_capture_features_records_the_named_layers_only_and_removes_its_hooks():
    model = _teacher()
    with capture_features(model, ["0", "2"], detach=True) as seen:
        assert sorted(_hooks(model)) == ["0", "2"]
        out = model.eval()(torch.randn(5, 6))
    assert sorted(seen) == ["0", "2"]
    assert seen["0"].shape == (5, 16) and not seen["0"].requires_grad
    torch.testing.assert_close(seen["2"], torch.relu(model[1](seen["0"])))  # what layer 2 gave
    assert out.shape == (5, 3)
    assert _hooks(model) == []


def test_capture_features_removes_its_hooks_when_the_block_raises():
    model = _teacher()
    with pytest.raises(ZeroDivisionError), capture_features(model, ["1"]):
        raise ZeroDivisionError
    assert _hooks(model) == []


def test_distill_hooks_both_models_only_during_the_call_also_on_errors():
    student, teacher = _student(), _teacher()
    seen_hooks = []

    def on_step(step):
        seen_hooks.append((sorted(_hooks(student)), sorted(_hooks(teacher))))

    _run(
        [FeatureLoss("fc1", "2")],
        student=student,
        teacher=teacher,
        on_step=on_step,
        cache_teacher=False,
    )
    assert seen_hooks[0] == (["fc1"], ["2"])
    assert _hooks(student) == [] and _hooks(teacher) == []
    seen_hooks.clear()  # cached: the teacher ran once before training, and has no hook now
    _run([FeatureLoss("fc1", "2")], student=student, teacher=teacher, on_step=on_step)
    assert seen_hooks[0] == (["", "fc1"], [])  # "": the pre-hook that clears the record
    assert _hooks(student) == [] and _hooks(teacher) == []

    def fail(step):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run([FeatureLoss("fc1", "2")], student=student, teacher=teacher, on_step=fail)
    assert _hooks(student) == [] and _hooks(teacher) == []


def test_a_layer_that_does_not_run_is_a_clear_error_and_leaves_no_hooks():
    student, teacher = _student(), _teacher()
    student.unused = nn.Linear(3, 3)  # MLP.forward calls fc1 and fc2 only
    with pytest.raises(RuntimeError, match=r"layer 'unused' of the student did not run"):
        _run([FeatureLoss("unused", "4", kind="cosine")], student=student, teacher=teacher)
    assert _hooks(student) == [] and _hooks(teacher) == []


# --------------------------------------------------------------------------- the losses


def test_hint_loss_equals_its_formula_and_its_gradient_reaches_student_and_regressor():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(7, 5, generator=g, requires_grad=True)
    t = torch.randn(7, 9, generator=g)
    regressor = make_regressor(s, t, seed=4)
    w, b = regressor.weight, regressor.bias
    by_hand = ((s @ w.T + b - t) ** 2).sum() / t.numel()
    value = hint_loss(s, t, regressor)
    torch.testing.assert_close(value, by_hand)
    value.backward()
    assert s.grad is not None and w.grad is not None and float(w.grad.abs().sum()) > 0


def test_hint_loss_of_feature_maps_through_a_one_by_one_convolution():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 5, 4, 4, generator=g)
    regressor = make_regressor(s, t)
    assert isinstance(regressor, nn.Conv2d) and regressor.kernel_size == (1, 1)
    mixed = torch.einsum("oc,bchw->bohw", regressor.weight[:, :, 0, 0], s)
    by_hand = ((mixed + regressor.bias[None, :, None, None] - t) ** 2).mean()
    torch.testing.assert_close(hint_loss(s, t, regressor), by_hand)


def test_cosine_feature_loss_equals_its_formula_and_pytorchs_cosine_embedding_loss():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(6, 2, 3, generator=g), torch.randn(6, 6, generator=g)
    flat = s.flatten(1)
    by_hand = (1 - (flat * t).sum(1) / (flat.norm(dim=1) * t.norm(dim=1))).mean()
    torch.testing.assert_close(cosine_feature_loss(s, t), by_hand)
    reference = nn.CosineEmbeddingLoss()(flat, t, torch.ones(6))
    torch.testing.assert_close(cosine_feature_loss(s, t), reference)
    assert cosine_feature_loss(t, 3 * t).item() == pytest.approx(0.0, abs=1e-6)


def test_make_regressor_is_seeded_and_leaves_the_global_random_state_alone():
    s, t = torch.zeros(2, 4), torch.zeros(2, 3)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a, b, c = (
        make_regressor(s, t, seed=1),
        make_regressor(s, t, seed=1),
        make_regressor(s, t, seed=2),
    )
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)
    bound = 1 / 4**0.5  # PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert float(a.weight.detach().abs().max()) <= bound
    assert float(a.bias.detach().abs().max()) <= bound
    assert make_regressor(torch.zeros(2, 5, 4), torch.zeros(2, 5, 7)).out_features == 7


# --------------------------------------------------------------------------- distill with features


def test_teacher_stays_frozen_bit_identical_and_in_its_mode():
    teacher = _teacher().train()
    before = _snapshot(teacher)
    _run([FeatureLoss("fc1", "0"), FeatureLoss("fc2", "4", kind="cosine")], teacher=teacher)
    after = _snapshot(teacher)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics too
    assert all(p.grad is None for p in teacher.parameters())
    assert teacher.training and all(m.training for m in teacher.modules())


def test_history_holds_the_total_and_every_term():
    hint = FeatureLoss("fc1", "0", weight=0.5)
    cos = FeatureLoss("fc2", "4", kind="cosine", weight=2.0)
    history = _run([hint, cos], eval_set=_data(seed=9))
    for key in ("loss", "loss_kd", "loss_hint", "loss_cosine", "train_accuracy", "eval_accuracy"):
        assert len(history[key]) == 2, key
    for epoch in range(2):
        total = (
            history["loss_kd"][epoch]
            + 0.5 * history["loss_hint"][epoch]
            + 2.0 * history["loss_cosine"][epoch]
        )
        assert history["loss"][epoch] == pytest.approx(total, rel=1e-5)
    assert history["loss_hint"][0] > 0 and 0 <= history["loss_cosine"][0] <= 2


def test_the_regressor_is_trained_with_the_student_and_kept_for_the_next_call():
    hint = FeatureLoss("fc1", "0", weight=1.0)
    history = _run([hint], epochs=6)
    regressor = hint.regressor
    assert isinstance(regressor, nn.Linear) and regressor.weight.shape == (16, 8)
    fresh = make_regressor(torch.zeros(1, 8), torch.zeros(1, 16), seed=3)  # seed=3 of _run
    assert not torch.equal(regressor.weight, fresh.weight)  # it moved
    assert history["loss_hint"][-1] < history["loss_hint"][0]
    kept = regressor.weight.clone()
    _run([hint], epochs=1)
    assert hint.regressor is regressor and not torch.equal(regressor.weight, kept)


def test_an_optimizer_instance_gains_the_regressor_as_a_group_under_the_schedule():
    student = _student()
    optimizer, on_step = cosine_sgd(student, lr=0.1, total_steps=6)
    hint = FeatureLoss("fc1", "0")
    _run([hint], student=student, optimizer=optimizer, on_step=on_step, epochs=2)
    assert len(optimizer.param_groups) == 2
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == {
        id(p) for p in hint.regressor.parameters()
    }
    assert [group["lr"] for group in optimizer.param_groups] == [0.0, 0.0]  # the schedule's end


def test_features_may_be_one_term_or_a_module_list():
    terms = nn.ModuleList([FeatureLoss("fc1", "0"), FeatureLoss("fc2", "4", kind="cosine")])
    assert {"loss_hint", "loss_cosine"} <= set(_run(terms))
    assert "loss_hint" in _run(FeatureLoss("fc1", "0"))


def test_a_given_regressor_is_used_and_optimised():
    regressor = nn.Linear(8, 16)
    start = regressor.weight.clone()
    hint = FeatureLoss("fc1", "0", regressor=regressor)
    _run([hint])
    assert hint.regressor is regressor and not torch.equal(regressor.weight, start)


@pytest.mark.parametrize("form", ["subset", "loader"])
def test_feature_terms_with_any_data_set_and_no_labels(form):
    data = _data()
    source = Subset(data, range(40)) if form == "subset" else DataLoader(data, batch_size=8)
    history = _run([FeatureLoss("fc1", "2", kind="hint")], dataset=source, labels=False)
    assert len(history["loss_hint"]) == 2 and 0 <= history["train_accuracy"][-1] <= 1


def test_feature_maps_of_a_convolutional_student_and_teacher():
    seed_everything(0)
    teacher = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 36, 3)
    )
    student = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 36, 3)
    )
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(32, 1, 6, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    )
    hint = FeatureLoss("1", "1")
    history = _run([hint], student=student, teacher=teacher, dataset=data)
    assert isinstance(hint.regressor, nn.Conv2d) and hint.regressor.weight.shape == (6, 2, 1, 1)
    assert len(history["loss_hint"]) == 2


def test_weight_zero_trains_the_student_as_logit_distillation_does():
    plain, featured = _student(), _student()
    _run(None, student=plain, cache_teacher=False)
    history = _run([FeatureLoss("fc1", "0", weight=0.0)], student=featured)
    for p, q in zip(plain.parameters(), featured.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert history["loss_hint"][0] > 0  # measured, though it weighs nothing


def _counting(model):
    calls = []
    model.register_forward_pre_hook(lambda module, inputs: calls.append(len(inputs[0])))
    return calls


@pytest.mark.parametrize("labels", [True, False])
def test_cached_teacher_features_give_the_per_batch_result_with_one_teacher_pass(labels):
    terms = lambda: [  # noqa: E731 - a fresh pair of terms (and regressors) per run
        FeatureLoss("fc1", "0", weight=0.5),
        FeatureLoss("fc2", "4", kind="cosine", weight=2.0),
    ]
    runs = {}
    for cache in (True, False):
        student, teacher = _student(), _teacher()
        calls = _counting(teacher)
        history = _run(
            terms(), student=student, teacher=teacher, cache_teacher=cache, labels=labels, epochs=3
        )
        history.pop("seconds")
        runs[cache] = (history, student, calls)
    (cached, s1, calls1), (batchwise, s2, calls2) = runs[True], runs[False]
    assert calls1 == [48]  # the whole data set in one chunk, once
    assert len(calls2) == 3 * 3  # 48 examples in batches of 16, three epochs
    assert cached.keys() == batchwise.keys()
    for key in cached:
        assert cached[key] == pytest.approx(batchwise[key], rel=1e-5, abs=1e-7), key
    for p, q in zip(s1.parameters(), s2.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_caching_a_layer_whose_output_is_not_batch_first_is_a_clear_error():
    class Transposing(nn.Module):
        def forward(self, x):
            return x.t()

    teacher = nn.Sequential(nn.Linear(6, 5), Transposing(), Transposing(), nn.Linear(5, 3))
    with pytest.raises(ValueError, match=r"layer '1' of the teacher .* pass cache_teacher=False"):
        _run([FeatureLoss("fc1", "1")], teacher=teacher)
    assert _hooks(teacher) == []


@pytest.mark.parametrize("empty", [None, []])
def test_without_feature_terms_distill_is_bit_identical(empty):
    a, b = _student(), _student()
    args = dict(epochs=2, batch_size=16, lr=0.1, progress=False, seed=3)
    h1 = distill(a, _teacher(), _data(), **args)
    h2 = distill(b, _teacher(), _data(), features=empty, **args)
    h1.pop("seconds"), h2.pop("seconds")
    assert h1 == h2
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


# --------------------------------------------------------------------------- bad input

BAD = [
    (
        lambda: _run([FeatureLoss("nope", "0")]),
        ValueError,
        r"student_layer 'nope' is not a layer of the student.*'fc1', 'fc2'",
    ),
    (
        lambda: _run([FeatureLoss("fc1", "9")]),
        ValueError,
        r"teacher_layer '9' is not a layer of the teacher.*'0', '1'",
    ),
    (
        lambda: _run([FeatureLoss("fc1", "0")], teacher_logits=torch.zeros(48, 3), teacher=None),
        ValueError,
        r"teacher_logits cannot be combined with features",
    ),
    (
        lambda: _run(FeatureLoss("fc1", "0"), teacher=None),
        TypeError,
        r"teacher must be a torch.nn.Module",
    ),
    (lambda: _run(["fc1"]), TypeError, r"features must hold companion.distillation.FeatureLoss"),
    (lambda: _run("fc1"), TypeError, r"features must be a list of FeatureLoss"),
    (
        lambda: _run([FeatureLoss("fc1", "0"), FeatureLoss("fc2", "2")]),
        ValueError,
        r"same name 'hint' twice",
    ),
    (lambda: _run([FeatureLoss("fc1", "0", name="kd")]), ValueError, r"cannot be named 'kd'"),
    (
        lambda: _run([FeatureLoss("fc1", "4", kind="cosine")]),
        ValueError,
        r"8 student and 3 teacher features.*kind='hint'",
    ),
    (
        lambda: _run([FeatureLoss("fc1", "0")], teacher=_teacher().to("meta")),
        ValueError,
        r"teacher is on meta but student is on cpu",
    ),
    (
        lambda: FeatureLoss("fc1", "0", kind="mse"),
        ValueError,
        r"kind must be one of \('hint', 'cosine'\)",
    ),
    (lambda: FeatureLoss("fc1", "0", weight=-1.0), ValueError, r"weight must be in \[0.0, inf\)"),
    (lambda: FeatureLoss("", "0"), ValueError, r"student_layer must be a non-empty string"),
    (lambda: FeatureLoss("fc1", 0), TypeError, r"teacher_layer must be a str"),
    (
        lambda: FeatureLoss("fc1", "0", regressor="linear"),
        TypeError,
        r"regressor must be a torch.nn.Module",
    ),
    (
        lambda: FeatureLoss("fc1", "0")(torch.zeros(2, 3), torch.zeros(2, 3)),
        RuntimeError,
        r"no regressor yet; call build",
    ),
    (
        lambda: make_regressor(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 2, 2)),
        ValueError,
        r"no regressor maps.*same height and width",
    ),
    (
        lambda: make_regressor(torch.zeros(2, 3), torch.zeros(3, 3)),
        ValueError,
        r"same batch size, got 2 and 3",
    ),
    (
        lambda: hint_loss(torch.zeros(2, 3), torch.zeros(2, 4), nn.Identity()),
        ValueError,
        r"teacher feature's shape \(2, 4\)",
    ),
    (
        lambda: cosine_feature_loss([1.0], torch.zeros(2, 2)),
        TypeError,
        r"student_feature must be a torch.Tensor",
    ),
    (
        lambda: capture_features(MLP((4, 3)), ["fc9"]).__enter__(),
        ValueError,
        r"layer 'fc9' is not a layer of the model",
    ),
    (
        lambda: fit_one_mode(torch.ones(5) / 5, torch.linspace(0, 1, 5), divergence="js"),
        ValueError,
        r"divergence must be one of",
    ),
    (
        lambda: fit_one_mode(torch.ones(4) / 4, torch.linspace(0, 1, 5)),
        ValueError,
        r"one entry per grid point",
    ),
    (lambda: fit_one_mode(torch.ones(5), torch.linspace(0, 1, 5)), ValueError, r"must sum to 1"),
    (
        lambda: fit_one_mode(
            torch.tensor([0.5, 0.5, 0.0]), torch.linspace(0, 1, 3), divergence="reverse"
        ),
        ValueError,
        r"positive at every grid point",
    ),
    (
        lambda: fit_one_mode(torch.ones(3) / 3, torch.tensor([0.0, 2.0, 1.0])),
        ValueError,
        r"strictly increasing",
    ),
    (
        lambda: fit_one_mode(torch.ones(3) / 3, torch.linspace(0, 1, 3), init_std=0.0),
        ValueError,
        r"init_std must be in",
    ),
    (
        lambda: mixture_probs(torch.linspace(0, 1, 3), [0.0], [1.0, 2.0]),
        ValueError,
        r"same non-zero length",
    ),
    (lambda: mixture_probs(torch.linspace(0, 1, 3), [0.0], [0.0]), ValueError, r"stds must be in"),
]


@pytest.mark.parametrize(("call", "error", "message"), BAD)
def test_bad_input_fails_early_with_a_clear_message(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_bad_layer_name_changes_nothing():
    student, teacher = _student(), _teacher()
    before_s, before_t = _snapshot(student), _snapshot(teacher)
    with pytest.raises(ValueError, match="is not a layer"):
        _run(
            [FeatureLoss("fc1", "0"), FeatureLoss("fc3", "2", kind="cosine")],
            student=student,
            teacher=teacher,
        )
    assert all(torch.equal(before_s[k], v) for k, v in _snapshot(student).items())
    assert all(torch.equal(before_t[k], v) for k, v in _snapshot(teacher).items())
    assert _hooks(student) == [] and _hooks(teacher) == []


# --------------------------------------------------------------------------- forward and reverse KL

GRID = torch.linspace(-6, 6, 241, dtype=torch.float64)
MODES, STD = (-2.0, 2.0), 0.5


def _moments(probs):
    mean = float((probs * GRID).sum())
    return mean, float((probs * (GRID - mean) ** 2).sum()) ** 0.5


@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.7, 0.3)])
def test_forward_kl_covers_both_modes_by_matching_the_teachers_moments(weights):
    p = mixture_probs(GRID, MODES, (STD, STD), weights)
    fit = fit_one_mode(p, GRID, divergence="forward", init_mean=1.0)
    for student, teacher in zip(_moments(fit.probs), _moments(p), strict=True):
        assert student == pytest.approx(teacher, abs=1e-3)
    assert fit.std > 3 * STD  # wide: spread over both modes
    middle = int(torch.argmin((GRID - 0.0).abs()))
    assert fit.probs[middle] > 50 * p[middle]  # mass where the teacher has almost none


@pytest.mark.parametrize(("init_mean", "mode"), [(0.0, -2.0), (0.5, -2.0), (1.0, 2.0)])
def test_reverse_kl_seeks_one_mode(init_mean, mode):
    p = mixture_probs(GRID, MODES, (STD, STD), (0.7, 0.3))
    fit = fit_one_mode(p, GRID, divergence="reverse", init_mean=init_mean)
    assert fit.mean == pytest.approx(mode, abs=0.01)
    assert fit.std == pytest.approx(STD, rel=0.01)
    other = (GRID - (-mode)).abs() < 2 * STD
    assert float(fit.probs[other].sum()) < 1e-6  # no mass on the other mode
    forward = fit_one_mode(p, GRID, divergence="forward", init_mean=init_mean)
    reverse_of_forward = float((forward.probs * (forward.probs / p).log()).sum())
    assert fit.loss < reverse_of_forward  # the wide student is worse under reverse KL


def test_fit_one_mode_is_deterministic_and_leaves_its_inputs_alone():
    p = mixture_probs(GRID, MODES, (STD, STD), (0.6, 0.4))
    copy = p.clone()
    a = fit_one_mode(p, GRID, divergence="reverse", steps=50)
    b = fit_one_mode(p, GRID, divergence="reverse", steps=50)
    assert (a.mean, a.std, a.loss) == (b.mean, b.std, b.loss) and torch.equal(a.probs, b.probs)
    assert torch.equal(p, copy)
    assert float(a.probs.sum()) == pytest.approx(1.0)
