"""Pareto fronts, mask overlap and dead inputs."""

from __future__ import annotations

import pytest
import torch

from companion.analysis import dead_inputs, mask_jaccard, pareto_front, random_mask_jaccard


def test_pareto_front_drops_dominated_points_and_sorts_by_cost():
    costs = [5.0, 1.0, 3.0, 2.0, 4.0]
    scores = [0.99, 0.90, 0.97, 0.89, 0.96]
    assert pareto_front(costs, scores) == [1, 2, 0]


def test_pareto_front_keeps_ties_once_and_rejects_bad_input():
    assert pareto_front([1, 1], [0.5, 0.5]) == [0, 1]
    with pytest.raises(ValueError, match="equal length"):
        pareto_front([1, 2], [0.5])
    with pytest.raises(ValueError, match="NaN"):
        pareto_front([1, float("nan")], [0.5, 0.6])


def test_mask_jaccard():
    a = {"fc1": torch.tensor([[1, 1], [0, 0]]), "fc2": torch.tensor([1, 0])}
    assert mask_jaccard(a, a) == 1.0
    b = {"fc1": torch.tensor([[0, 0], [1, 1]]), "fc2": torch.tensor([0, 1])}
    assert mask_jaccard(a, b) == 0.0
    with pytest.raises(ValueError, match="different layers"):
        mask_jaccard(a, {"fc1": a["fc1"]})


def test_random_mask_jaccard_matches_simulated_random_masks():
    # layers keeping very different fractions, as global magnitude pruning does
    masks = {
        "fc1": (torch.rand(300, 100, generator=torch.Generator().manual_seed(0)) < 0.07).float(),
        "fc2": (torch.rand(100, 30, generator=torch.Generator().manual_seed(1)) < 0.3).float(),
        "fc3": (torch.rand(10, 30, generator=torch.Generator().manual_seed(2)) < 0.77).float(),
    }
    generator = torch.Generator().manual_seed(3)

    def shuffled(m):
        return {
            n: t.flatten()[torch.randperm(t.numel(), generator=generator)].view_as(t)
            for n, t in m.items()
        }

    simulated = sum(mask_jaccard(shuffled(masks), shuffled(masks)) for _ in range(200)) / 200
    expected = random_mask_jaccard(masks)
    assert abs(simulated - expected) < 0.005, (simulated, expected)
    overall = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert expected > overall / (2 - overall) + 0.02  # the single-fraction formula is too low here


def test_random_mask_jaccard_single_fraction_and_bad_input():
    assert random_mask_jaccard({"w": torch.tensor([1, 1, 0, 0])}) == pytest.approx(0.5 / 1.5)
    assert random_mask_jaccard({"w": torch.zeros(3)}) == 1.0
    with pytest.raises(ValueError, match="masks is empty"):
        random_mask_jaccard({})


def test_dead_inputs():
    w = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert dead_inputs(w).tolist() == [True, False, True]
    with pytest.raises(ValueError, match="2-D"):
        dead_inputs(torch.zeros(3))


def test_train_step_flops_counts_forward_and_backward_by_hand():
    from companion.analysis import train_step_flops
    from companion.models import MLP

    model = MLP((4, 3, 2))
    x, y = torch.rand(5, 4), torch.tensor([0, 1, 0, 1, 1])
    forward = 2 * 5 * (4 * 3 + 3 * 2)  # 180
    backward = 2 * 5 * 3 * 2 * 2 + 2 * 5 * 4 * 3  # fc2: weight and input grads; fc1: weight grad
    assert train_step_flops(model, x, y) == forward + backward
    assert all(p.grad is None for p in model.parameters())
