"""kd_loss against its formula and gradient; distill leaves the teacher untouched and takes any
data set (a Subset, a DataLoader) and teachers that return tuples (``teacher_output``)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset, TensorDataset

from companion.distillation import KDLoss, distill, kd_loss, soft_targets
from companion.models import MLP
from companion.training import predict, train


def _logits(seed, batch=8, classes=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, classes, generator=g) * 3


def _by_hand(zs, zt, y, T, alpha):
    ps = torch.softmax(zs / T, dim=1)
    pt = torch.softmax(zt / T, dim=1)
    kl = (pt * (pt.log() - ps.log())).sum(1).mean()
    ce = -torch.log_softmax(zs, dim=1)[torch.arange(len(y)), y].mean()
    return (1 - alpha) * ce + alpha * T**2 * kl


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 20.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9, 1.0])
def test_kd_loss_equals_formula(T, alpha):
    zs, zt = _logits(0), _logits(1)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    torch.testing.assert_close(
        kd_loss(zs, zt, y, temperature=T, alpha=alpha), _by_hand(zs, zt, y, T, alpha)
    )


def test_alpha_zero_is_cross_entropy_and_no_targets_is_soft_term():
    zs, zt = _logits(2), _logits(3)
    y = torch.randint(0, 5, (8,), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(kd_loss(zs, zt, y, alpha=0.0), F.cross_entropy(zs, y))
    soft = kd_loss(zs, zt, temperature=3.0)
    torch.testing.assert_close(soft, _by_hand(zs, zt, y, 3.0, 1.0))


def test_identical_logits_give_zero_soft_term_and_soft_term_is_nonnegative():
    z = _logits(4)
    assert kd_loss(z, z, temperature=5.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(_logits(5), z, temperature=5.0).item() > 0


@pytest.mark.parametrize("T", [1.0, 4.0, 10.0])
def test_gradient_of_soft_term(T):
    zs = _logits(6).requires_grad_()
    zt = _logits(7)
    # Without the T^2 factor the gradient is (softmax(zs/T) - softmax(zt/T)) / (T * batch).
    (kd_loss(zs, zt, temperature=T) / T**2).backward()
    expected = (torch.softmax(zs.detach() / T, 1) - torch.softmax(zt / T, 1)) / T / len(zs)
    torch.testing.assert_close(zs.grad, expected)
    # And with it, (softmax(zs/T) - softmax(zt/T)) * T / batch.
    zs.grad = None
    kd_loss(zs, zt, temperature=T).backward()
    torch.testing.assert_close(zs.grad, expected * T**2)


@pytest.mark.filterwarnings("ignore:reduction. .mean. divides:UserWarning")
def test_batchmean_not_elementwise_mean():
    zs, zt = _logits(8), _logits(9)
    wrong = F.kl_div(F.log_softmax(zs, 1), F.softmax(zt, 1), reduction="mean")
    right = kd_loss(zs, zt, temperature=1.0)
    torch.testing.assert_close(right, wrong * zs.shape[1])


def test_soft_targets_and_module():
    probs = soft_targets(_logits(10), temperature=3.0)
    torch.testing.assert_close(probs.sum(1), torch.ones(8))
    hot, warm = soft_targets(_logits(10), 1.0), soft_targets(_logits(10), 10.0)
    assert bool((warm.max(1).values < hot.max(1).values).all())  # higher T, softer
    zeros = torch.zeros(4, 10)
    assert KDLoss(2.0, 0.5)(zeros, zeros, torch.zeros(4, dtype=torch.long)).item() == pytest.approx(
        math.log(10) / 2
    )


@pytest.fixture
def kd_setup(toy_data):
    torch.manual_seed(0)
    teacher = MLP((8, 32, 2), dropout=0.3)
    train(teacher, toy_data, epochs=3, lr=0.1, batch_size=32, progress=False)
    return teacher, toy_data


def test_teacher_is_never_updated_and_keeps_its_mode(kd_setup):
    teacher, data = kd_setup
    teacher.train()
    teacher.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    for cache in (True, False):
        distill(
            MLP((8, 4, 2)), teacher, data, epochs=2, lr=0.1, cache_teacher=cache, progress=False
        )
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert teacher.training
    assert all(p.grad is None for p in teacher.parameters())


def test_cached_and_uncached_teacher_give_the_same_training(kd_setup):
    teacher, data = kd_setup
    students = []
    for cache in (True, False):
        torch.manual_seed(1)
        student = MLP((8, 4, 2))
        history = distill(
            student, teacher, data, epochs=2, lr=0.1, cache_teacher=cache, seed=3, progress=False
        )
        students.append((student, history))
    (a, ha), (b, hb) = students
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)
    assert ha["loss"] == pytest.approx(hb["loss"])


def test_distill_uses_the_teacher(kd_setup):
    teacher, data = kd_setup
    torch.manual_seed(2)
    s1 = MLP((8, 4, 2))
    s2 = MLP((8, 4, 2))
    s2.load_state_dict(s1.state_dict())
    distill(s1, teacher, data, epochs=1, alpha=1.0, progress=False)
    noise = MLP((8, 4, 2))
    distill(s2, noise, data, epochs=1, alpha=1.0, progress=False)
    assert not torch.allclose(s1.fc1.weight, s2.fc1.weight)


# --------------------------------------------------------------------------- any data set


def test_a_subset_distills_like_the_uncached_tensor_path(kd_setup):
    """Any other data set runs the teacher on every batch, with the order of the fast path."""
    teacher, data = kd_setup
    runs = []
    for dataset, cache in ((data, False), (Subset(data, range(len(data))), True)):
        torch.manual_seed(1)
        student = MLP((8, 4, 2))
        history = distill(
            student,
            teacher,
            dataset,
            epochs=2,
            lr=0.1,
            cache_teacher=cache,
            seed=3,
            batch_size=48,
            eval_set=dataset,
            progress=False,
        )
        runs.append((student, history))
    (a, ha), (b, hb) = runs
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert ha["loss"] == hb["loss"] and ha["train_accuracy"] == hb["train_accuracy"]


def test_distill_from_a_dataloader_of_inputs_only(kd_setup):
    """Unlabelled batches (inputs only); train_accuracy is agreement with the teacher."""
    teacher, data = kd_setup
    loader = DataLoader(TensorDataset(data.tensors[0]), batch_size=32, shuffle=True)
    torch.manual_seed(2)
    student = MLP((8, 16, 2))
    history = distill(
        student,
        teacher,
        loader,
        epochs=20,
        lr=0.1,
        labels=False,
        temperature=2.0,
        progress=False,
    )
    assert history["train_accuracy"][-1] > 0.9
    agreement = predict(student, data.tensors[0]).argmax(1) == predict(
        teacher, data.tensors[0]
    ).argmax(1)
    assert agreement.float().mean() > 0.9


class _PairTeacher(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x), x


@pytest.mark.parametrize("cache", [True, False])
def test_teacher_output_picks_the_teachers_logits(kd_setup, cache):
    teacher, data = kd_setup
    pair = _PairTeacher(teacher)
    with pytest.raises(TypeError, match=r"teacher returned a tuple.*pass teacher_output="):
        distill(MLP((8, 4, 2)), pair, data, epochs=1, cache_teacher=cache, progress=False)
    results = []
    for net, extra in ((teacher, {}), (pair, {"teacher_output": lambda out: out[0]})):
        torch.manual_seed(4)
        student = MLP((8, 4, 2))
        distill(student, net, data, epochs=1, cache_teacher=cache, progress=False, **extra)
        results.append(student)
    assert all(torch.equal(p, q) for p, q in zip(*(r.parameters() for r in results), strict=True))


def test_the_subset_path_with_a_teacher_returning_a_tuple(kd_setup):
    teacher, data = kd_setup
    subset = Subset(data, range(100))
    with pytest.raises(TypeError, match=r"teacher returned a tuple"):
        distill(MLP((8, 4, 2)), _PairTeacher(teacher), subset, epochs=1, progress=False)
    history = distill(
        MLP((8, 4, 2)),
        _PairTeacher(teacher),
        subset,
        epochs=1,
        progress=False,
        teacher_output=lambda out: out[0],
    )
    assert len(history["loss"]) == 1


@pytest.mark.parametrize("features", [None, []])
def test_logit_distillation_is_the_cached_kd_loss_through_train(kd_setup, features):
    """Without feature terms distill is train with kd_loss on the cached teacher logits, bit for bit."""
    teacher, data = kd_setup
    args = dict(epochs=2, batch_size=32, lr=0.05, seed=1, progress=False)
    torch.manual_seed(5)
    student = MLP((8, 4, 2))
    reference = MLP((8, 4, 2))
    reference.load_state_dict(student.state_dict())
    h = distill(student, teacher, data, temperature=3.0, alpha=0.7, features=features, **args)
    cached = TensorDataset(*data.tensors, predict(teacher, data.tensors[0]))

    def loss_fn(logits, batch):
        return kd_loss(logits, batch[2], batch[1], temperature=3.0, alpha=0.7)

    r = train(reference, cached, loss_fn=loss_fn, **args)
    assert h["loss"] == r["loss"] and h["train_accuracy"] == r["train_accuracy"]
    pairs = zip(student.parameters(), reference.parameters(), strict=True)
    assert all(torch.equal(p, q) for p, q in pairs)
