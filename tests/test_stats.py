"""companion.stats: intervals against SciPy and a published t table, pairing, seeds, checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

import companion as cp
from companion.stats import (
    Summary,
    accuracy_se,
    check,
    check_below,
    check_better,
    check_within,
    over_seeds,
    paired_difference,
    summarize,
)


@pytest.mark.parametrize("n", [2, 3, 5, 10, 31])
@pytest.mark.parametrize("confidence", [0.5, 0.9, 0.95, 0.99])
def test_summarize_matches_scipy_t_interval(n, confidence):
    values = np.random.default_rng(n).normal(0.97, 0.01, size=n)
    s = summarize(values, confidence)
    sem = scipy_stats.sem(values)
    low, high = scipy_stats.t.interval(confidence, n - 1, loc=values.mean(), scale=sem)
    assert s.low == pytest.approx(low, abs=1e-6)
    assert s.high == pytest.approx(high, abs=1e-6)
    assert s.mean == pytest.approx(values.mean(), abs=1e-12)
    assert s.std == pytest.approx(values.std(ddof=1), abs=1e-12)
    assert s.sem == pytest.approx(sem, abs=1e-12)
    assert s.n == n and s.confidence == confidence


# Two-sided 95% critical values of Student's t from a printed table (e.g. NIST/SEMATECH e-Handbook).
@pytest.mark.parametrize(
    "dof, t_crit", [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045)]
)
def test_quantile_matches_published_table(dof, t_crit):
    values = np.array([0.0, 1.0] + [0.5] * (dof - 1))
    s = summarize(values)
    assert s.half_width / s.sem == pytest.approx(t_crit, abs=5e-4)


def test_accepts_list_array_tensor_and_generator_alike():
    data = [0.1, 0.4, 0.35, 0.2]
    reference = summarize(data)
    as_tensor = torch.tensor(data, dtype=torch.float64)
    for form in (np.array(data), as_tensor, tuple(data), (v for v in data)):
        assert summarize(form) == reference


def test_known_small_example():
    s = summarize([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and s.std == 1.0
    assert s.half_width == pytest.approx(4.302653 / np.sqrt(3), abs=1e-6)


def test_identical_values_have_zero_width():
    s = summarize([0.5, 0.5, 0.5])
    assert s.low == s.high == 0.5 and s.std == 0.0


@pytest.mark.parametrize(
    "values, error, match",
    [
        ([1.0], ValueError, "at least 2 values"),
        ([], ValueError, "at least 2 values"),
        ([1.0, float("nan")], ValueError, "finite"),
        ([1.0, float("inf")], ValueError, "finite"),
        ([[1.0, 2.0], [3.0, 4.0]], ValueError, "one-dimensional"),
        (["a", "b"], TypeError, "real numbers"),
        ("12", TypeError, "list, NumPy array"),
        (3.0, TypeError, "list, NumPy array"),
    ],
)
def test_summarize_refuses_bad_values(values, error, match):
    with pytest.raises(error, match=match):
        summarize(values)


@pytest.mark.parametrize("confidence", [0.0, 1.0, -0.5, 1.5, float("nan")])
def test_summarize_refuses_bad_confidence(confidence):
    with pytest.raises(ValueError, match=r"confidence must be in \(0.0, 1.0\)"):
        summarize([1.0, 2.0], confidence)


def test_paired_difference_is_summary_of_differences_and_narrower():
    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0.97, 0.01, size=8)  # shared by both arms
    a = seed_effect + 0.003 + rng.normal(0, 0.0005, size=8)
    b = seed_effect
    d = paired_difference(a, b)
    assert d == summarize(a - b)
    assert d.low > 0  # pairing detects the 0.3-point gain ...
    unpaired = summarize(a).low - summarize(b).high
    assert unpaired < 0  # ... that overlapping separate intervals would miss


def test_paired_difference_refuses_unequal_lengths():
    with pytest.raises(ValueError, match="same length"):
        paired_difference([1.0, 2.0, 3.0], [1.0, 2.0])


def test_format_shows_mean_half_width_and_n():
    s = Summary(mean=0.9771, std=0.0005, sem=0.0002, low=0.9765, high=0.9777, n=5, confidence=0.95)
    assert format(s, ".2%") == "97.71 ± 0.06% (n=5)"
    assert format(s, ".3f") == "0.977 ± 0.001 (n=5)"
    d = Summary(0.0132, 0.003, 0.001, 0.0092, 0.0172, 5, 0.95)
    assert format(d, "+.2%") == "+1.32 ± 0.40% (n=5)"
    assert str(s).endswith("(n=5)")


def test_excludes_and_within():
    s = summarize([0.01, 0.02, 0.015, 0.012])
    assert s.excludes(0.0) and not s.excludes(s.mean)
    assert s.within(0.05) and not s.within(0.015)


def test_table_prints_summaries_with_formats():
    s = summarize([0.97, 0.98, 0.975])
    table = cp.table.Table([{"arm": "a", "acc": s}], {"acc": ".2%"})
    assert format(s, ".2%") in str(table)
    assert format(s, ".2%") in table._repr_html_()


def test_over_seeds_seeds_each_call_and_keeps_order():
    draws = over_seeds(lambda s: (s, float(torch.rand(1))), [3, 1, 3], progress=False)
    assert [s for s, _ in draws] == [3, 1, 3]
    assert draws[0][1] == draws[2][1] != draws[1][1]


def test_over_seeds_refuses_bad_arguments():
    with pytest.raises(TypeError, match="fn must be callable"):
        over_seeds(3, [0])
    with pytest.raises(ValueError, match="at least one seed"):
        over_seeds(lambda s: s, [])
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        over_seeds(lambda s: s, [-1], progress=False)


def test_accuracy_se_is_binomial():
    assert accuracy_se(0.98, 10_000) == pytest.approx(np.sqrt(0.98 * 0.02 / 10_000))
    assert accuracy_se(1.0, 10) == 0.0
    with pytest.raises(ValueError, match="accuracy must be in"):
        accuracy_se(1.2, 100)
    with pytest.raises(ValueError, match="n_test must be an integer >= 1"):
        accuracy_se(0.5, 0)


def test_checks_pass_print_and_fail_with_evidence(capsys):
    assert check(True, "A holds") is None  # prints; a returned value would be shown twice
    assert capsys.readouterr().out == "check passed: A holds\n"
    with pytest.raises(AssertionError, match="claim not supported: B holds. Evidence: 3"):
        check(False, "B holds", 3)
    better = summarize([0.01, 0.02, 0.015])
    straddles = summarize([-0.01, 0.02, 0.0])
    check_better(better, "A beats B")
    with pytest.raises(AssertionError, match="paired difference"):
        check_better(straddles, "A beats B")
    check_within(straddles, 0.05, "A matches B within 5 points")
    with pytest.raises(AssertionError, match="tolerance"):
        check_within(straddles, 0.01, "A matches B within 1 point")
    check_below(better, 0.1, "costs under 10 points")
    with pytest.raises(AssertionError, match="limit"):
        check_below(better, 0.02, "costs under 2 points")


class TestSeedBase:
    def test_default_is_zero_and_seeds_are_logical(self):
        assert cp.utils.seed_base() == 0
        assert cp.book_seeds(4) == [0, 1, 2, 3]
        assert cp.utils.actual_seed(5) == 5

    def test_base_shifts_every_consumer(self, monkeypatch):
        cp.seed_everything(1007)
        expected_global = torch.rand(3)
        expected_gen = torch.rand(3, generator=torch.Generator().manual_seed(1002))
        monkeypatch.setenv("COMPANION_SEED_BASE", "1000")
        assert cp.utils.actual_seed(7) == 1007
        assert cp.book_seeds(2) == [0, 1]  # logical: shifted where they are used
        cp.seed_everything(7)
        assert torch.equal(torch.rand(3), expected_global)
        assert torch.equal(torch.rand(3, generator=cp.utils.make_generator(2)), expected_gen)

    def test_base_changes_training_order_and_split(self, monkeypatch, toy_data):
        def run():
            cp.seed_everything(0)
            model = torch.nn.Linear(8, 2)
            cp.train(model, toy_data, epochs=1, batch_size=16, progress=False)
            train_part, _ = cp.train_val_split(toy_data, 0.25)
            return model.weight.detach().clone(), train_part.tensors[0]

        w0, part0 = run()
        assert torch.equal(run()[0], w0)
        monkeypatch.setenv("COMPANION_SEED_BASE", "1000")
        w1, part1 = run()
        assert not torch.equal(w1, w0)
        assert not torch.equal(part1, part0)

    @pytest.mark.parametrize("raw", ["abc", "-1", "1.5", str(2**31 + 1)])
    def test_bad_base_is_a_clear_error(self, monkeypatch, raw):
        monkeypatch.setenv("COMPANION_SEED_BASE", raw)
        with pytest.raises(
            ValueError, match=r"COMPANION_SEED_BASE must be an integer in \[0, 2\*\*31\]"
        ):
            cp.seed_everything(0)

    def test_shift_past_the_range_names_the_base(self, monkeypatch):
        monkeypatch.setenv("COMPANION_SEED_BASE", "10")
        with pytest.raises(ValueError, match=r"after adding COMPANION_SEED_BASE=10"):
            cp.seed_everything(2**32 - 5)
