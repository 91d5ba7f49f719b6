r"""Seed intervals: how the book turns repeated runs into claims.

One training run is one draw from a distribution: the seed fixes the
initialisation, the data order and any random mask, and a different CPU gives
a slightly different draw even for the same seed. So the book never compares
two single runs. It repeats an experiment over seeds (:func:`over_seeds`,
seeds from :func:`companion.utils.book_seeds`), summarises the results with a
Student-t confidence interval (:func:`summarize`), and, when both arms of a
comparison share each seed, summarises the per-seed differences
(:func:`paired_difference`). A claim is then read off the interval:

* "A is better than B": the paired interval of ``A - B`` excludes 0
  (:func:`check_better`);
* "A matches B within x", "costs under x": the whole interval lies inside
  ``[-x, x]`` or below ``x`` (:func:`check_within`, :func:`check_below`);
* an interval that straddles 0: no difference was detected at this ``n``.

For ``n`` values with mean :math:`\bar x` and sample standard deviation
:math:`s` (``ddof=1``) the interval is

.. math::

    \bar x \pm t_{1-(1-c)/2,\; n-1}\, \frac{s}{\sqrt n},

with :math:`t_{q,\nu}` the ``q`` quantile of Student's t distribution with
:math:`\nu` degrees of freedom (from SciPy).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .utils import check_in_range, seed_everything

__all__ = [
    "Summary",
    "summarize",
    "paired_difference",
    "over_seeds",
    "accuracy_se",
    "check",
    "check_better",
    "check_within",
    "check_below",
]


@dataclass(frozen=True)
class Summary:
    """Mean and Student-t confidence interval of repeated measurements.

    Attributes:
        mean: Sample mean.
        std: Sample standard deviation (``ddof=1``).
        sem: Standard error of the mean, ``std / sqrt(n)``.
        low: Lower end of the interval.
        high: Upper end of the interval.
        n: Number of values.
        confidence: Confidence level of the interval, e.g. ``0.95``.

    ``format(summary, ".2%")`` gives ``"97.71 ± 0.06% (n=5)"`` (mean ± the
    interval's half-width); ``format(summary, "+.3f")`` gives
    ``"+0.012 ± 0.004 (n=5)"``. ``str(summary)`` uses ``".4g"``.
    """

    mean: float
    std: float
    sem: float
    low: float
    high: float
    n: int
    confidence: float

    @property
    def half_width(self) -> float:
        """Half the interval's width, ``high - mean``."""
        return self.high - self.mean

    def excludes(self, value: float = 0.0) -> bool:
        """Whether ``value`` lies outside ``[low, high]``."""
        return value < self.low or value > self.high

    def within(self, tolerance: float) -> bool:
        """Whether the whole interval lies inside ``[-tolerance, tolerance]``."""
        return -tolerance <= self.low and self.high <= tolerance

    def __format__(self, spec: str) -> str:
        spec = spec or ".4g"
        if spec.endswith("%"):  # percent: "97.71 ± 0.06% (n=5)"
            number = spec[:-1] + "f"
            mean = format(100 * self.mean, number)
            half = format(100 * self.half_width, number.lstrip("+ "))
            return f"{mean} ± {half}% (n={self.n})"
        mean = format(self.mean, spec)
        half = format(self.half_width, spec.lstrip("+ "))
        return f"{mean} ± {half} (n={self.n})"

    def __str__(self) -> str:
        return format(self, ".4g")


def _as_values(values: Any, name: str) -> np.ndarray:
    """A 1-D float64 array of finite values, at least two of them."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        if not isinstance(values, Iterable) or isinstance(values, (str, bytes)):
            raise TypeError(
                f"{name} must be a list, NumPy array or 1-D tensor of numbers, "
                f"got {type(values).__name__}"
            )
        values = list(values)
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must hold real numbers only ({error})") from None
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {tuple(array.shape)}")
    if array.size < 2:
        raise ValueError(
            f"{name} must hold at least 2 values for an interval, got {array.size}; "
            "run the experiment over more seeds"
        )
    if not np.isfinite(array).all():
        bad = [float(v) for v in array[~np.isfinite(array)]]
        raise ValueError(f"{name} must be finite, got {bad} (a diverged run?)")
    return array


def _t_quantile(q: float, dof: int) -> float:
    from scipy.stats import t as student_t  # imported here: scipy is only needed for intervals

    return float(student_t.ppf(q, dof))


def summarize(values: Any, confidence: float = 0.95) -> Summary:
    r"""Mean, standard deviation and Student-t interval of repeated measurements.

    Args:
        values: At least two finite numbers: a list, a NumPy array or a 1-D
            tensor (one value per seed).
        confidence: Confidence level of the interval, in ``(0, 1)``.

    Returns:
        A :class:`Summary` with ``mean``, ``std`` (``ddof=1``), ``sem``,
        ``low``, ``high``, ``n`` and ``confidence``, where
        ``low, high = mean -/+ t_{1-(1-confidence)/2, n-1} * sem``.

    Raises:
        TypeError: If ``values`` is not a sequence of real numbers.
        ValueError: If it has fewer than 2 values, is not 1-D, holds NaN or
            infinity, or ``confidence`` is outside ``(0, 1)``.

    Example:
        >>> s = summarize([0.97, 0.98, 0.99])
        >>> round(s.mean, 4), round(s.std, 4), s.n
        (0.98, 0.01, 3)
        >>> format(s, ".2%")
        '98.00 ± 2.48% (n=3)'
    """
    check_in_range("confidence", confidence, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    array = _as_values(values, "values")
    n = int(array.size)
    mean = float(array.mean())
    std = float(array.std(ddof=1))
    sem = std / math.sqrt(n)
    half = _t_quantile(1 - (1 - confidence) / 2, n - 1) * sem
    return Summary(mean, std, sem, mean - half, mean + half, n, float(confidence))


def paired_difference(a: Any, b: Any, confidence: float = 0.95) -> Summary:
    """Summarise ``a[i] - b[i]`` over pairs that share a seed.

    Pairing removes what both arms of a comparison share (the seed's
    initialisation, data order and luck), so the interval of the differences
    is usually much narrower than the two separate intervals suggest.

    Args:
        a: Values of the first arm, one per seed.
        b: Values of the second arm for the same seeds, in the same order.
        confidence: Confidence level, in ``(0, 1)``.

    Returns:
        The :class:`Summary` of the differences; "A is better" is
        ``summary.low > 0``.

    Raises:
        TypeError, ValueError: As :func:`summarize`, and ValueError if ``a``
            and ``b`` have different lengths.

    Example:
        >>> d = paired_difference([0.95, 0.96, 0.97], [0.94, 0.955, 0.96])
        >>> round(d.mean, 4), d.low > 0
        (0.0083, True)
    """
    first, second = _as_values(a, "a"), _as_values(b, "b")
    if first.size != second.size:
        raise ValueError(
            f"a and b must have the same length (one value per shared seed), "
            f"got {first.size} and {second.size}"
        )
    return summarize(first - second, confidence)


def over_seeds(
    fn: Callable[[int], Any],
    seeds: Iterable[int],
    *,
    progress: bool = True,
    desc: str = "seeds",
) -> list[Any]:
    """Run ``fn(seed)`` once per seed, each after ``seed_everything(seed)``.

    Args:
        fn: The experiment for one seed; it receives the seed (pass it on to
            ``train(seed=...)`` and mask generators) and returns its result.
        seeds: The seeds, usually ``companion.utils.book_seeds(n)``.
        progress: Show a progress bar (tqdm) over the seeds.
        desc: The progress bar's label.

    Returns:
        ``[fn(s) for s in seeds]``, in order.

    Raises:
        TypeError: If ``fn`` is not callable or a seed is not an int.
        ValueError: If ``seeds`` is empty or a seed is out of range.

    Example:
        >>> over_seeds(lambda s: float(torch.rand(1)), [0, 0], progress=False)[0] == \\
        ...     over_seeds(lambda s: float(torch.rand(1)), [0], progress=False)[0]
        True
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    seed_list = list(seeds)
    if not seed_list:
        raise ValueError("seeds must hold at least one seed, got none")
    iterator: Iterable[int] = seed_list
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(seed_list, desc=desc, leave=False)
    results = []
    for seed in iterator:
        seed_everything(seed)
        results.append(fn(seed))
    return results


def accuracy_se(accuracy: float, n_test: int) -> float:
    r"""Binomial standard error of one model's accuracy on ``n_test`` examples.

    For a single trained model the test set is the only source of noise:
    :math:`\sqrt{p(1-p)/n}`. This says how precisely *one* model was
    measured, not how much another seed would differ (use :func:`summarize`
    over seeds for that).

    Args:
        accuracy: The measured accuracy, in ``[0, 1]``.
        n_test: The number of test examples, >= 1.

    Returns:
        The standard error, in the units of ``accuracy``.

    Raises:
        ValueError, TypeError: For an accuracy outside ``[0, 1]`` or a
            non-positive ``n_test``.

    Example:
        >>> round(accuracy_se(0.984, 10_000), 5)
        0.00125
    """
    from .utils import check_positive_int

    accuracy = check_in_range("accuracy", accuracy, 0.0, 1.0)
    n_test = check_positive_int("n_test", n_test)
    return math.sqrt(accuracy * (1 - accuracy) / n_test)


def check(condition: bool, claim: str, detail: object = "") -> None:
    """Assert a claim the prose makes and print ``"check passed: <claim>"``.

    Nothing is returned, so a check as a cell's last line shows its line once.

    Args:
        condition: Whether the evidence supports the claim.
        claim: The claim in words, as the prose states it.
        detail: What to show when it fails (the numbers).

    Raises:
        AssertionError: If ``condition`` is false, naming the claim and ``detail``.
    """
    if not condition:
        raise AssertionError(f"claim not supported: {claim}. Evidence: {detail}")
    print(f"check passed: {claim}")


def check_better(difference: Summary, claim: str) -> None:
    """Assert that a paired difference is positive: its whole interval above 0."""
    check(difference.low > 0, claim, f"paired difference {difference}")


def check_within(summary: Summary, tolerance: float, claim: str) -> None:
    """Assert that the whole interval lies inside ``[-tolerance, tolerance]``."""
    check(summary.within(tolerance), claim, f"{summary}, tolerance ±{tolerance}")


def check_below(summary: Summary, limit: float, claim: str) -> None:
    """Assert that the whole interval lies below ``limit`` ("costs under x")."""
    check(summary.high < limit, claim, f"{summary}, limit {limit}")
