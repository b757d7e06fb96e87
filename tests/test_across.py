"""The cross-task statistics: ranks, Friedman, Nemenyi, and the random-effects pooled
effect, against scipy, published tables and hand-worked examples."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from poolkit.evaluation.across import (
    nemenyi_p,
    random_effects,
    rank_tests,
    sentences,
    task_ranks,
    verdict,
)


def test_friedmans_statistic_matches_scipy_with_and_without_ties():
    rng = np.random.default_rng(0)
    for scores in (rng.random((6, 4)), np.round(rng.random((5, 5)), 1)):
        found, _ = rank_tests(task_ranks(scores))
        expected = stats.friedmanchisquare(*scores.T)
        assert found["statistic"] == pytest.approx(expected.statistic)
        assert found["p_chi2"] == pytest.approx(expected.pvalue)


def test_many_tasks_bring_the_permutation_p_to_the_chi_squared_one():
    rng = np.random.default_rng(1)
    scores = rng.random((40, 4)) + np.array([0.0, 0.05, 0.1, 0.12])
    found, _ = rank_tests(task_ranks(scores))
    assert found["p"] == pytest.approx(found["p_chi2"], abs=0.03)


def test_four_wins_of_four_is_no_evidence_for_two_sets():
    """A sign test's 4 of 4 has chance 2/16 under the null: no test at 0.05 may reject it
    (the chi-squared approximation does: p 0.046)."""
    found, ranges = rank_tests(task_ranks([[0.9, 0.8]] * 4))
    assert found["p_chi2"] < 0.05
    assert found["p"] == pytest.approx(0.125, abs=0.01)
    assert nemenyi_p([1.0], ranges)[0] == pytest.approx(0.125, abs=0.01)


def test_ranks_put_the_best_first_and_share_ties():
    assert task_ranks([[0.9, 0.7, 0.7]]).tolist() == [[1.0, 2.5, 2.5]]
    assert task_ranks([[0.9, 0.7, 0.8]], higher_is_better=False).tolist() == [[3.0, 1.0, 2.0]]


@pytest.mark.parametrize("k, q", [(3, 2.343), (5, 2.728), (8, 3.031)])
def test_the_critical_difference_with_many_tasks_is_demsars(k, q):
    """Demšar (2006), Table 5(a): q_0.05 for k classifiers; CD = q sqrt(k(k+1)/6N), the
    asymptotic value that the permutation CD approaches as the tasks grow."""
    n = 60
    ranks = task_ranks(np.random.default_rng(k).random((n, k)))
    found, ranges = rank_tests(ranks)
    assert found["cd"] == pytest.approx(q * math.sqrt(k * (k + 1) / (6 * n)), rel=0.05)
    # a gap just above the CD is significant, one just below is not
    assert nemenyi_p([found["cd"] + 1e-6], ranges)[0] < 0.05 <= nemenyi_p(
        [found["cd"] - 0.05], ranges)[0]


def test_random_effects_two_tasks_worked_by_hand():
    # w = [1, 1]; fixed 0.5; Q = 0.5 < k - 1, so tau2 = 0; q_HK = 0.5: se = sqrt(0.5 / 2)
    found = random_effects([0.0, 1.0], [1.0, 1.0])
    assert found["estimate"] == pytest.approx(0.5) and found["tau2"] == 0.0
    assert found["se"] == pytest.approx(0.5)
    assert found["p"] == pytest.approx(2 * stats.t.sf(0.5 / 0.5, 1))
    assert found["high"] == pytest.approx(0.5 + stats.t.ppf(0.975, 1) * 0.5)
    assert found["i2"] == 0.0
    # the textbook DerSimonian-Laird z-test: the fixed-effect se, the normal quantile
    plain = random_effects([0.0, 1.0], [1.0, 1.0], hartung_knapp=False)
    assert plain["se"] == pytest.approx(math.sqrt(0.5))
    assert plain["p"] == pytest.approx(2 * stats.norm.sf(0.5 / math.sqrt(0.5)))


def test_random_effects_heterogeneous_tasks_worked_by_hand():
    # w = 4 each; Q = 32; C = 12 - 48/12 = 8; tau2 = (32 - 2)/8 = 3.75; w* = 0.25 each
    found = random_effects([0.0, 2.0, 4.0], [0.5, 0.5, 0.5])
    assert found["tau2"] == pytest.approx(3.75)
    assert found["i2"] == pytest.approx(30 / 32)
    assert found["estimate"] == pytest.approx(2.0)
    # q_HK = sum w*(d - mu)^2 / (k - 1) = 0.25 * 8 / 2 = 1: se = sqrt(1 / 0.75)
    assert found["se"] == pytest.approx(math.sqrt(1 / 0.75))
    assert found["p"] == pytest.approx(2 * stats.t.sf(2.0 / math.sqrt(1 / 0.75), 2))


def test_random_effects_is_symmetric_and_order_free():
    d, se = np.array([0.03, 0.01, 0.05, 0.02]), np.array([0.01, 0.02, 0.015, 0.01])
    one, flipped, shuffled = (random_effects(d, se), random_effects(-d, se),
                              random_effects(d[::-1], se[::-1]))
    assert flipped["estimate"] == pytest.approx(-one["estimate"])
    assert flipped["p"] == pytest.approx(one["p"]) and shuffled["p"] == pytest.approx(one["p"])
    same = random_effects([0.02] * 4, [0.01] * 4)
    assert same["estimate"] == pytest.approx(0.02) and same["tau2"] == 0 and same["i2"] == 0
    assert random_effects([0.0, 0.0], [0.0, 0.0])["p"] == 1.0
    assert random_effects([0.02, 0.02], [0.01, 0.01])["p"] == 0.0  # no spread at all


def _task(values: dict, diffs: dict, se=0.01):
    """A task's summary and pairs frames: ``values`` {pooler: accuracy}, ``diffs``
    {(a, b): a - b} written as the task ranks them (a above b)."""
    summary = pd.DataFrame({"pooler": list(values), "layer": "6", "encoder": "frozen",
                            "accuracy_mean": list(values.values()), "status": "ok"})
    pairs = pd.DataFrame([{"a": f"{a}@6", "b": f"{b}@6", "accuracy_diff": d,
                           "accuracy_low": d - 2 * se, "accuracy_high": d + 2 * se,
                           "accuracy_se": se} for (a, b), d in diffs.items()])
    return summary, pairs


def test_a_consistent_gap_is_established_and_a_mixed_one_is_not():
    tasks = {}
    for t, gap in enumerate((0.04, 0.05, 0.03, 0.045, 0.035)):
        wobble = (-1) ** t * 0.04  # max is better on some tasks, worse on the others
        tasks[f"t{t}"] = _task({"mean": 0.8, "cls": 0.8 - gap, "max": 0.8 - gap + wobble},
                               {("mean", "cls"): gap, ("max", "cls"): wobble,
                                ("mean", "max"): gap - wobble})
    found = verdict(tasks)
    assert found.ranks["set"].iloc[0] == "mean@6"
    row = found.pairs[(found.pairs["a"] == "mean@6") & (found.pairs["b"] == "cls@6")].iloc[0]
    assert row["significant"] and row["a_better_on"] == 5
    assert row["accuracy_diff"] == pytest.approx(0.04, abs=0.002)
    both = found.pairs["a"].isin(["max@6", "cls@6"]) & found.pairs["b"].isin(["max@6", "cls@6"])
    mixed = found.pairs[both].iloc[0]
    assert not mixed["significant"] and mixed["i2"] > 0.9
    said = sentences(found)
    assert said[0].startswith("Friedman over 5 tasks and 3 feature sets")
    assert any(line.startswith("mean@6 beats cls@6 on 5 of 5 tasks: pooled +4.0 points")
               for line in said), said


def test_a_pair_the_task_ranked_the_other_way_round_is_read_with_its_sign_flipped():
    tasks = {"t0": _task({"a": 0.7, "b": 0.8}, {("b", "a"): 0.1}),
             "t1": _task({"a": 0.9, "b": 0.8}, {("a", "b"): 0.1}),
             "t2": _task({"a": 0.9, "b": 0.85}, {("a", "b"): 0.05})}
    found = verdict(tasks)
    per_task = found.task_pairs.set_index("task")
    assert found.pairs.iloc[0][["a", "b"]].tolist() == ["a@6", "b@6"]
    assert per_task.loc["t0", "accuracy_diff"] == pytest.approx(-0.1)
    assert per_task.loc["t0", "accuracy_low"] == pytest.approx(-0.12)
    assert per_task.loc["t1", "accuracy_diff"] == pytest.approx(0.1)


def test_with_a_baseline_only_its_pairs_are_pooled_and_said():
    tasks = {f"t{t}": _task({"mean": 0.8, "cls": 0.75, "max": 0.7},
                            {("mean", "cls"): 0.05, ("max", "cls"): -0.05})
             for t in range(3)}
    found = verdict(tasks, baseline="cls@6")
    assert found.baseline == "cls@6"
    assert set(found.pairs["b"]) == {"cls@6"} and len(found.pairs) == 2
    assert len([s for s in sentences(found) if "cls@6" in s]) == 2


def test_a_feature_set_missing_from_a_task_is_left_out_and_named():
    tasks = {"t0": _task({"a": 0.7, "b": 0.8, "c": 0.6},
                         {("b", "a"): 0.1, ("b", "c"): 0.2, ("a", "c"): 0.1}),
             "t1": _task({"a": 0.9, "b": 0.8}, {("a", "b"): 0.1})}
    found = verdict(tasks)
    assert found.left_out == ["c@6"] and sorted(found.ranks["set"]) == ["a@6", "b@6"]
