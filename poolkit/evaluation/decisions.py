"""Decisions: what a paired difference says once a region of practical equivalence is set.

A pair's difference ``a - b`` on the primary metric, with its standard error, gets one of
three answers (see :data:`DECISIONS`), on one task (from the paired bootstrap) and across
tasks (from the pooled random-effects interval):

- **better**: the difference is significant (its two-sided test, Holm over the pairs), as
  before; marked *within ROPE* when it is smaller than the region, significant but too
  small to matter;
- **equivalent**: the difference lies within ``±rope`` by two one-sided tests (TOST: the
  ``1 - 2·alpha`` interval inside ``±rope``), Holm over the same pairs;
- **inconclusive**: neither.

Across tasks a pair also gets the odds on a new task: a prediction interval for the
difference a new task will show, and the probability that each side wins it by more than
``rope`` (:func:`prediction`).
"""

import math

import numpy as np

from poolkit.errors import PoolkitError

#: Each metric's default region of practical equivalence, in its own units: one point
#: (0.01) for the metrics in [0, 1]; 0.02 for the Matthews correlation, which spans
#: [-1, 1] (on a balanced binary task MCC moves about twice as far as accuracy); 0.01
#: nats of log-loss (the true label's geometric-mean probability 1% higher or lower).
ROPES = {"accuracy": 0.01, "f1_macro": 0.01, "precision_macro": 0.01, "recall_macro": 0.01,
         "mcc": 0.02, "roc_auc": 0.01, "log_loss": 0.01}

#: The decisions a pair can get, as pairs.csv, task_pairs.csv and across_pairs.csv say them.
DECISIONS = ("a better", "b better", "a better (within ROPE)", "b better (within ROPE)",
             "equivalent", "inconclusive")

#: How the decisions are reached, for the docs and exports.
METHODS = (
    "Each pair's difference on the primary metric gets a decision against a region of "
    "practical equivalence (ROPE, --rope; default one point for metrics in [0, 1], 0.02 for "
    "MCC, 0.01 for log-loss): 'better' when its two-sided test is significant after Holm "
    "over the pairs (marked 'within ROPE' when the difference is smaller than the region), "
    "'equivalent' when two one-sided tests put it inside the region (TOST: the larger of "
    "the two one-sided p-values, Holm over the same pairs, below alpha), else "
    "'inconclusive'. One task's tests use the paired bootstrap's standard error (Student's "
    "t under cross-fitting, as its interval does); across tasks, the pooled random-effects "
    "estimate with its Hartung-Knapp standard error (t, k - 1 degrees of freedom)."
)


def default_rope(metric: str) -> float:
    """The region of practical equivalence ``metric`` gets when ``--rope`` is not given."""
    return ROPES[metric]


def rope_of(rope, metric: str) -> float:
    """``rope`` checked (a finite number >= 0), or ``metric``'s default when ``None``."""
    if rope is None:
        return default_rope(metric)
    try:
        value = float(rope)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(rope, bool) or not math.isfinite(value) or value < 0:
        raise PoolkitError(f"--rope {rope}: give a number of 0 or more, in {metric}'s units "
                           f"(e.g. {default_rope(metric)})")
    return value


def rope_words(metric: str, rope: float) -> str:
    """``±1 point`` for metrics in [0, 1] (and MCC), ``±0.01`` for log-loss."""
    if metric == "log_loss":
        return f"±{rope:g}"
    amount = round(100 * rope, 2)
    return f"±{amount:g} point{'' if amount == 1 else 's'}"


def tost_p(diff, se, rope: float, df=np.inf) -> np.ndarray:
    """p of two one-sided tests that the true difference lies within ``±rope``: the larger
    of the p-values against ``diff <= -rope`` and against ``diff >= rope``, Student's t with
    ``df`` degrees of freedom (the normal where infinite). A certain difference (``se`` 0)
    is equivalent (p 0) when strictly inside the region, else not (p 1)."""
    from scipy import stats

    diff, se = np.asarray(diff, dtype=float), np.asarray(se, dtype=float)
    with np.errstate(all="ignore"):
        lower = stats.t.sf((diff + rope) / se, df)
        upper = stats.t.cdf((diff - rope) / se, df)
        p = np.maximum(lower, upper)
    certain = np.where(np.abs(diff) < rope, 0.0, 1.0)
    p = np.where(se > 0, p, certain)
    return np.where(np.isnan(diff) | np.isnan(se), np.nan, p)


def decide(diff, p_holm, p_equivalent_holm, rope: float, alpha: float,
           higher_is_better: bool = True) -> list:
    """The decision (one of :data:`DECISIONS`) of each pair, from its difference ``a - b``,
    its Holm-corrected two-sided p and its Holm-corrected TOST p."""
    decisions = []
    for d, p, p_eq in zip(np.asarray(diff, float), np.asarray(p_holm, float),
                          np.asarray(p_equivalent_holm, float)):
        if p < alpha:
            side = "a" if (d > 0) == higher_is_better else "b"
            decisions.append(f"{side} better" + (" (within ROPE)" if abs(d) < rope else ""))
        elif p_eq < alpha:
            decisions.append("equivalent")
        else:
            decisions.append("inconclusive")
    return decisions


def flipped(decision: str) -> str:
    """``decision`` with ``a`` and ``b`` swapped (a row read the other way round)."""
    swap = {"a": "b", "b": "a"}
    return swap[decision[0]] + decision[1:] if decision[:1] in swap else decision


def prediction(diffs, rope: float, alpha: float, higher_is_better: bool = True) -> dict:
    """The odds on a new task of a difference ``a - b`` measured on each of some tasks
    (``diffs``): the ``1 - alpha`` prediction interval ``low``, ``high`` of the difference a
    new task's run will show, ``mean ± t(1 - alpha/2, k - 1) · s · sqrt(1 + 1/k)`` over the
    k tasks' differences (the classic interval for a new draw; exact when the tasks'
    differences are normal with equal spread, and wider than the new task's true difference
    needs), and ``p_a``, ``p_b``: the probability that a (b) beats the other there by more
    than ``rope``, from the same predictive t. NaN below 2 tasks.

    The textbook random-effects interval (Higgins, Thompson and Spiegelhalter 2009, t with
    k - 2 degrees of freedom over ``sqrt(tau² + se²)``) covered a new task's true difference
    in only 88-94% of simulated 8-task suites with a little heterogeneity, since
    DerSimonian-Laird's tau² is often 0 with few tasks; this one covered it in at least
    96% (``benchmarks/decisions.py``)."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    k = d.size
    if k < 2 or not np.isfinite(d).all():
        return {"low": math.nan, "high": math.nan, "p_a": math.nan, "p_b": math.nan}
    center = float(d.mean())
    scale = float(d.std(ddof=1)) * math.sqrt(1 + 1 / k)
    if scale == 0:
        up, down = float(center > rope), float(center < -rope)
        return {"low": center, "high": center, "p_a": up if higher_is_better else down,
                "p_b": down if higher_is_better else up}
    half = float(stats.t.ppf(1 - alpha / 2, k - 1)) * scale
    up = float(stats.t.sf((rope - center) / scale, k - 1))  # P(new difference > rope)
    down = float(stats.t.cdf((-rope - center) / scale, k - 1))  # P(new difference < -rope)
    return {"low": center - half, "high": center + half,
            "p_a": up if higher_is_better else down, "p_b": down if higher_is_better else up}
