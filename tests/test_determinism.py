"""Reproducibility: ``seed_everything`` makes a training run repeat bit for bit.

The book's numbers must come out the same on every run of a notebook. Here
the same short run (random data, random initialisation, dropout, shuffled
batches, momentum) is done twice after the same ``seed_everything`` call and
the results are compared with ``torch.equal``, not ``allclose``.

Every test restores the global state it touches (determinism flags, cuDNN
flags, ``CUBLAS_WORKSPACE_CONFIG``, the random generators), so the order in
which tests run does not matter.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from companion.distillation import distill
from companion.models import MLP
from companion.penalties import l1_penalty
from companion.training import evaluate, train
from companion.utils import seed_everything


@pytest.fixture(autouse=True)
def restore_global_state():
    """Put back every flag, environment variable and generator state a test may change."""
    flags = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())  # noqa: NPY002
    yield
    torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[2], flags[3]
    if cublas is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas
    random.setstate(rng[0])
    np.random.set_state(rng[1])  # noqa: NPY002 - the legacy global generator is what is seeded
    torch.set_rng_state(rng[2])


def run(seed: int, device: str, deterministic: bool, **train_kwargs):
    """Seed, draw data and a model, train briefly; return the weights and the metrics."""
    seed_everything(seed, deterministic=deterministic)
    x = torch.randn(64, 6)
    y = (x[:, 0] - x[:, 1] + 0.3 * torch.randn(64) > 0).long()
    data = TensorDataset(x.to(device), y.to(device))
    net = MLP((6, 16, 8, 2), dropout=0.3).to(device)  # dropout draws from the global generator
    history = train(
        net,
        data,
        epochs=2,
        batch_size=16,
        lr=0.05,
        momentum=0.9,
        eval_set=data,
        seed=seed,
        progress=False,
        **train_kwargs,
    )
    del history["seconds"]  # wall-clock time is the one thing allowed to differ
    weights = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    return weights, history, evaluate(net, data)


def assert_identical(first, second):
    (w1, h1, e1), (w2, h2, e2) = first, second
    assert w1.keys() == w2.keys()
    for key in w1:
        assert torch.equal(w1[key], w2[key]), f"{key} differs between the two runs"
    assert h1 == h2  # float lists compared exactly
    assert e1 == e2


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("seed", [0, 2**32 - 1])
def test_same_seed_same_run_gives_bit_identical_weights_and_metrics(seed, deterministic, device):
    assert_identical(run(seed, device, deterministic), run(seed, device, deterministic))


def test_adam_with_a_penalty_repeats_too(device):
    kwargs = {"optimizer": "adam", "penalty": l1_penalty, "penalty_weight": 1e-4}
    assert_identical(run(3, device, True, **kwargs), run(3, device, True, **kwargs))


def test_another_seed_gives_another_run():
    """The seed really reaches the initialisation, data, dropout and batch order."""
    w0, _, _ = run(0, "cpu", False)
    w1, _, _ = run(1, "cpu", False)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)


def test_the_run_does_not_depend_on_what_ran_before():
    first = run(5, "cpu", False)
    torch.rand(1000)  # consume the global generators between the runs
    random.random()
    np.random.rand(10)  # noqa: NPY002
    assert_identical(first, run(5, "cpu", False))


def test_distillation_repeats_bit_for_bit():
    def once():
        seed_everything(11)
        x = torch.randn(64, 6)
        y = torch.randint(0, 3, (64,))
        teacher, student = MLP((6, 12, 3), dropout=0.5), MLP((6, 4, 3))
        history = distill(
            student, teacher, TensorDataset(x, y), epochs=2, batch_size=16, progress=False
        )
        del history["seconds"]
        return {k: v.clone() for k, v in student.state_dict().items()}, history

    (w1, h1), (w2, h2) = once(), once()
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert h1 == h2


def test_deterministic_true_sets_every_flag(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.backends.cudnn.benchmark = True  # a state seed_everything must undo
    seed_everything(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic is True
    assert torch.backends.cudnn.benchmark is False
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_deterministic_true_keeps_a_cublas_setting_the_user_chose(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    seed_everything(0, deterministic=True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_deterministic_false_resets_the_flags_to_pytorch_defaults():
    seed_everything(0, deterministic=True)
    seed_everything(0, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic is False
    assert torch.backends.cudnn.benchmark is False


def test_the_fixture_leaves_the_defaults_in_place():
    """Runs after the tests above in file order: their flags did not leak."""
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic is False
