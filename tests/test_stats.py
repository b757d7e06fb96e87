"""Seed intervals, Holm correction, paired comparisons and rank groups (poolkit.evaluation.stats).

Each result is checked against an independent computation: scipy's t interval and
binomial test, a hand-worked Holm example, hand-counted McNemar cells, a
per-resample loop over item indices, and the analytic standard error of a paired
difference.
"""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from poolkit.evaluation import stats
from poolkit.evaluation.metrics import METRICS, compute_metrics
from poolkit.evaluation.stats import (
    METHODS,
    PAIR_COLUMNS,
    compare,
    holm,
    rank_groups,
    seed_interval,
)


def paired_comparisons(probabilities, y_true, **kwargs):
    """The pairs frame of :func:`compare`."""
    return compare(probabilities, y_true, **kwargs).pairs

# --- helpers ---------------------------------------------------------------------------------


def probs_from_predictions(pred, num_labels=2, confidence=0.9):
    """``(seeds, n, C)`` probabilities whose argmax is ``pred`` ``(seeds, n)``."""
    pred = np.atleast_2d(pred)
    other = (1 - confidence) / (num_labels - 1)
    probs = np.full((*pred.shape, num_labels), other)
    np.put_along_axis(probs, pred[..., None], confidence, axis=2)
    return probs


def predictor(y, right, num_labels=2):
    """Predictions ``(n,)`` that are right where ``right`` is true, wrong (label + 1) elsewhere."""
    return np.where(right, y, (y + 1) % num_labels)


# --- seed_interval ---------------------------------------------------------------------------


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
@pytest.mark.parametrize("values", [[0.81, 0.84, 0.79], [0.5, 0.7], [0.9, 0.91, 0.88, 0.93, 0.9, 0.87]])
def test_seed_interval_matches_scipy_t_interval(values, confidence):
    mean, std, low, high = seed_interval(values, confidence)
    x = np.array(values)
    expected = sps.t.interval(confidence, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    assert mean == pytest.approx(x.mean())
    assert std == pytest.approx(np.std(x, ddof=1))
    assert (low, high) == pytest.approx(expected, rel=1e-12)


def test_seed_interval_one_value_has_no_interval():
    mean, std, low, high = seed_interval([0.8])
    assert (mean, std) == (0.8, 0.0)
    assert math.isnan(low) and math.isnan(high)


def test_seed_interval_ignores_nans():
    with_nans = seed_interval([0.8, float("nan"), 0.9, 0.85, float("nan")])
    assert with_nans == pytest.approx(seed_interval([0.8, 0.9, 0.85]))
    mean, std, low, high = seed_interval([0.7, float("nan")])
    assert (mean, std) == (0.7, 0.0) and math.isnan(low) and math.isnan(high)


@pytest.mark.parametrize("values", [[float("nan"), float("nan")], []])
def test_seed_interval_no_values_is_all_nan(values):
    assert all(math.isnan(v) for v in seed_interval(values))


def test_seed_interval_identical_values_collapse():
    assert seed_interval([0.75, 0.75, 0.75]) == (0.75, 0.0, 0.75, 0.75)


# --- holm ------------------------------------------------------------------------------------


def test_holm_hand_worked_example():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> running max 0.06
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])


def test_holm_clips_at_one_and_keeps_single_values():
    np.testing.assert_allclose(holm([0.3, 0.6, 0.9]), [0.9, 1.0, 1.0])
    np.testing.assert_allclose(holm([0.02]), [0.02])
    assert holm([]).shape == (0,)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=30))
def test_holm_is_monotone_and_bounded(p):
    p = np.array(p)
    adjusted = holm(p)
    assert np.all(adjusted >= p) and np.all(adjusted <= 1)
    assert np.all(adjusted <= np.minimum(p * len(p), 1) + 1e-15)  # never worse than Bonferroni
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(adjusted[order]) >= 0)  # a smaller p never gets a larger adjusted p


# --- paired_comparisons ----------------------------------------------------------------------


@pytest.fixture
def labels():
    return np.random.default_rng(1).integers(0, 3, size=400)


def test_identical_predictors_are_not_different(labels):
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(3), size=(3, labels.size))
    frame = paired_comparisons({"x": probs, "y": probs.copy()}, labels, n_boot=500)
    row = frame.iloc[0]
    assert (row["a"], row["b"]) == ("x", "y")  # a tie keeps the order given
    assert row["accuracy_diff"] == 0 and row["accuracy_low"] == 0 and row["accuracy_high"] == 0
    assert row["accuracy_p"] == 1.0 and row["p_mcnemar"] == 1.0
    assert (row["mcnemar_b"], row["mcnemar_c"]) == (0, 0)
    assert not row["significant"]


def test_perfect_versus_half_right_is_significant(labels):
    n = labels.size
    half = np.arange(n) % 2 == 0
    perfect = probs_from_predictions(np.tile(labels, (3, 1)), num_labels=3)
    halfway = probs_from_predictions(np.tile(predictor(labels, half, 3), (2, 1)), num_labels=3)
    frame = paired_comparisons({"half": halfway, "perfect": perfect}, labels, n_boot=2000)
    row = frame.iloc[0]
    assert (row["a"], row["b"]) == ("perfect", "half")
    assert (row["accuracy_a"], row["accuracy_b"], row["accuracy_diff"]) == (1.0, 0.5, 0.5)
    assert row["accuracy_p"] < 1e-12  # not floored at 1 / (B + 1)
    assert (row["mcnemar_b"], row["mcnemar_c"]) == (n // 2, 0)
    assert row["p_mcnemar"] == pytest.approx(2 * 0.5 ** (n // 2))
    assert row["significant"]
    assert row["accuracy_low"] <= 0.5 <= row["accuracy_high"]


def test_mcnemar_counts_and_p_match_a_hand_count():
    rng = np.random.default_rng(3)
    n = 120
    y = rng.integers(0, 2, size=n)
    # three seeds each; the ensemble prediction is the majority of the seeds' argmax
    right_a = rng.random((3, n)) < 0.8
    right_b = rng.random((3, n)) < 0.6
    probs_a = probs_from_predictions(predictor(y, right_a), confidence=0.7)
    probs_b = probs_from_predictions(predictor(y, right_b), confidence=0.7)
    frame = paired_comparisons({"a": probs_a, "b": probs_b}, y, n_boot=200)
    row = frame.iloc[0]
    ens_a = right_a.sum(axis=0) >= 2
    ens_b = right_b.sum(axis=0) >= 2
    b, c = sum(ens_a & ~ens_b), sum(~ens_a & ens_b)
    if row["a"] == "b":
        b, c = c, b
    assert (row["mcnemar_b"], row["mcnemar_c"]) == (b, c)
    assert row["p_mcnemar"] == sps.binomtest(b, b + c, 0.5).pvalue
    assert row["p_mcnemar_holm"] == row["p_mcnemar"]  # one pair: nothing to correct
    assert row["accuracy_a"] == pytest.approx((right_a if row["a"] == "a" else right_b).mean())


def test_bootstrap_matches_a_loop_over_resampled_items():
    """Same resamples, computed the slow way: expand counts to item indices, score each."""
    rng = np.random.default_rng(4)
    n, n_boot, seed = 60, 300, 7
    y = rng.integers(0, 2, size=n)
    preds = {name: predictor(y, rng.random((s, n)) < acc)
             for name, s, acc in (("p", 2, 0.8), ("q", 3, 0.7), ("r", 1, 0.75))}
    frame = paired_comparisons({k: probs_from_predictions(v) for k, v in preds.items()}, y,
                               n_boot=n_boot, seed=seed)
    draws = np.random.default_rng(seed)
    boot = {name: [] for name in preds}
    for _ in range(n_boot):
        items = draws.integers(0, n, size=n)  # n items drawn with replacement
        for name, pred in preds.items():
            boot[name].append(np.mean([np.mean(seed_pred[items] == y[items]) for seed_pred in pred]))
    for row in frame.itertuples():
        d = np.array(boot[row.a]) - np.array(boot[row.b])
        observed = np.mean(preds[row.a] == y) - np.mean(preds[row.b] == y)
        assert row.accuracy_diff == pytest.approx(observed)
        assert (row.accuracy_low, row.accuracy_high) == pytest.approx(tuple(np.quantile(d, [0.025, 0.975])))
        p = 2 * scipy.stats.norm.sf(abs(observed) / d.std(ddof=1))
        assert row.accuracy_p == pytest.approx(p)
        assert row.accuracy_se == pytest.approx(d.std(ddof=1))  # what a suite pools by
    np.testing.assert_allclose(frame["accuracy_p_holm"], holm(frame["accuracy_p"]))
    np.testing.assert_allclose(frame["p_mcnemar_holm"], holm(frame["p_mcnemar"]))


def test_bootstrap_interval_width_matches_the_analytic_standard_error():
    rng = np.random.default_rng(5)
    n = 500
    y = rng.integers(0, 2, size=n)
    right_a, right_b = rng.random(n) < 0.85, rng.random(n) < 0.8
    frame = paired_comparisons({"a": probs_from_predictions(predictor(y, right_a)),
                                "b": probs_from_predictions(predictor(y, right_b))}, y, n_boot=4000)
    row = frame.iloc[0]
    per_item = right_a.astype(float) - right_b
    se = per_item.std(ddof=0) / math.sqrt(n)  # plug-in SE, what the bootstrap estimates
    assert row["accuracy_high"] - row["accuracy_low"] == pytest.approx(2 * 1.96 * se, rel=0.08)
    assert row["accuracy_low"] < abs(row["accuracy_diff"]) < row["accuracy_high"]


@pytest.mark.slow
def test_bootstrap_p_under_the_null_is_rarely_significant():
    n = 200
    p_values = []
    for rep in range(20):
        rng = np.random.default_rng(100 + rep)
        y = rng.integers(0, 2, size=n)
        probs = {name: probs_from_predictions(predictor(y, rng.random((2, n)) < 0.7)) for name in "ab"}
        p_values.append(paired_comparisons(probs, y, n_boot=500, seed=rep)["accuracy_p"].iloc[0])
    p_values = np.array(p_values)
    assert np.sum(p_values < 0.05) <= 3  # expected 1 in 20
    assert 0.2 <= np.mean(p_values < 0.5) <= 0.8  # roughly uniform, not piled up at 0 or 1


def test_rows_follow_the_accuracy_ranking():
    rng = np.random.default_rng(6)
    n = 100
    y = rng.integers(0, 2, size=n)
    order = rng.permutation(n)
    accuracies = {"low": 0.6, "top": 0.9, "mid": 0.75, "mid_twin": 0.75}
    probs = {}
    for name, acc in accuracies.items():
        right = np.zeros(n, dtype=bool)
        right[order[: int(acc * n)]] = True
        probs[name] = probs_from_predictions(predictor(y, right))
    frame = paired_comparisons(probs, y, n_boot=100)
    ranked = ["top", "mid", "mid_twin", "low"]  # the tie keeps the order given
    expected = [(ranked[i], ranked[j]) for i in range(4) for j in range(i + 1, 4)]
    assert list(zip(frame["a"], frame["b"])) == expected
    assert list(frame.columns) == list(PAIR_COLUMNS)
    assert (frame["accuracy_a"] >= frame["accuracy_b"]).all()
    assert frame["significant"].dtype == bool
    assert frame["mcnemar_b"].dtype.kind == "i"


def test_seed_counts_may_differ_between_names():
    rng = np.random.default_rng(7)
    n = 80
    y = rng.integers(0, 4, size=n)
    one = rng.dirichlet(np.ones(4), size=(1, n))
    five = rng.dirichlet(np.ones(4), size=(5, n))
    frame = paired_comparisons({"one": one, "five": five}, y, n_boot=100)
    accuracy = dict(zip(frame[["a", "b"]].iloc[0], frame[["accuracy_a", "accuracy_b"]].iloc[0]))
    assert accuracy["one"] == pytest.approx(np.mean(one[0].argmax(1) == y))
    per_seed = [np.mean(s.argmax(1) == y) for s in five]
    assert accuracy["five"] == pytest.approx(np.mean(per_seed))


def test_fewer_than_two_names_give_an_empty_frame():
    y = np.array([0, 1, 1])
    for probs in ({}, {"only": np.full((2, 3, 2), 0.5)}):
        frame = paired_comparisons(probs, y)
        assert frame.empty and list(frame.columns) == list(PAIR_COLUMNS)


@pytest.mark.parametrize("bad_shape, message", [
    ((2, 9, 3), r"probabilities\['mean@6'\] has 9 test items but y_true has 10"),
    ((2, 10, 4), r"probabilities\['mean@6'\] has 4 labels"),
    ((10, 3), r"probabilities\['mean@6'\] must be \(seeds, n, C\)"),
])
def test_a_shape_mismatch_names_the_feature_set(bad_shape, message):
    y = np.arange(10) % 3
    probs = {"mean": np.full((3, 10, 3), 1 / 3), "mean@6": np.full(bad_shape, 0.25)}
    with pytest.raises(ValueError, match=message):
        paired_comparisons(probs, y)


@pytest.mark.slow
def test_same_seed_same_frame_other_seed_other_frame():
    rng = np.random.default_rng(8)
    y = rng.integers(0, 3, size=150)
    probs = {name: rng.dirichlet(np.ones(3), size=(3, 150)) for name in ("cls", "mean", "max")}
    first = paired_comparisons(probs, y, n_boot=300, seed=11)
    pd.testing.assert_frame_equal(first, paired_comparisons(probs, y, n_boot=300, seed=11))
    other = paired_comparisons(probs, y, n_boot=300, seed=12)
    assert not np.array_equal(first["accuracy_low"], other["accuracy_low"])
    np.testing.assert_array_equal(first["accuracy_diff"], other["accuracy_diff"])


def test_chunking_does_not_change_the_result(monkeypatch):
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, size=50)
    probs = {name: rng.dirichlet(np.ones(2), size=(2, 50)) for name in "abcd"}
    whole = paired_comparisons(probs, y, n_boot=200)
    monkeypatch.setattr(stats, "_CHUNK_ENTRIES", 50 * 7)  # 7 resamples per chunk
    pd.testing.assert_frame_equal(whole, paired_comparisons(probs, y, n_boot=200))


# --- rank_groups -----------------------------------------------------------------------------


def pairs_frame(significant_pairs, names):
    rows = [{"a": a, "b": b, "significant": frozenset((a, b)) in significant_pairs}
            for i, a in enumerate(names) for b in names[i + 1:]]
    return pd.DataFrame(rows)


def test_rank_groups_start_a_group_at_each_significant_drop_from_the_leader():
    accuracy = {"E": 0.79, "B": 0.88, "A": 0.90, "D": 0.80, "C": 0.85, "F": 0.70}
    significant = {frozenset(p) for p in [
        ("A", "D"), ("A", "E"), ("A", "F"),
        ("B", "C"),  # members may differ; only the leader A counts for C
        ("D", "F"),
    ]}
    pairs = pairs_frame(significant, ["A", "B", "C", "D", "E", "F"])
    assert rank_groups(accuracy, pairs) == {"A": 1, "B": 1, "C": 1, "D": 2, "E": 2, "F": 3}


def test_rank_groups_nothing_significant_is_one_group_and_all_significant_is_a_ladder():
    accuracy = {"x": 0.5, "y": 0.6, "z": 0.7}
    names = ["z", "y", "x"]
    assert rank_groups(accuracy, pairs_frame(set(), names)) == {"z": 1, "y": 1, "x": 1}
    everything = {frozenset(p) for p in [("z", "y"), ("z", "x"), ("y", "x")]}
    assert rank_groups(accuracy, pairs_frame(everything, names)) == {"z": 1, "y": 2, "x": 3}


def test_rank_groups_from_paired_comparisons():
    n = 400
    y = np.arange(n) % 2
    preds = {"perfect": y, "also_perfect": y, "half": predictor(y, np.arange(n) % 4 < 2)}
    probs = {k: probs_from_predictions(v) for k, v in preds.items()}
    frame = paired_comparisons(probs, y, n_boot=1000)
    accuracy = {**dict(zip(frame["a"], frame["accuracy_a"])), **dict(zip(frame["b"], frame["accuracy_b"]))}
    assert rank_groups(accuracy, frame) == {"perfect": 1, "also_perfect": 1, "half": 2}


def test_rank_groups_missing_pair_is_an_error():
    pairs = pd.DataFrame({"a": ["x"], "b": ["y"], "significant": [False]})
    with pytest.raises(ValueError, match="'x' with 'z'"):
        rank_groups({"x": 0.9, "y": 0.8, "z": 0.7}, pairs)


def test_methods_text_states_the_methods():
    for phrase in ("paired bootstrap", "B = 10,000", "standard error", "McNemar",
                   "seed-ensemble", "Holm", "leader", "resamples of the items and of its seeds",
                   "confusion counts"):
        assert phrase in METHODS


@pytest.mark.slow
def test_a_large_gap_survives_holm_over_thousands_of_pairs():
    """With 64 feature sets (2,016 pairs) a 25-point gap on 487 items must stay
    significant: a p-value floored at 1/(B + 1) would be ~0.2 after Holm."""
    rng = np.random.default_rng(9)
    n = 487
    y = rng.integers(0, 2, size=n)
    probs = {f"chance{i}": probs_from_predictions(predictor(y, rng.random((3, n)) < 0.5))
             for i in range(62)}
    probs["good"] = probs_from_predictions(predictor(y, rng.random((3, n)) < 0.75))
    probs["also_good"] = probs_from_predictions(predictor(y, rng.random((3, n)) < 0.75))
    frame = paired_comparisons(probs, y, n_boot=2000)
    assert len(frame) == 64 * 63 // 2
    versus_chance = frame[(frame["a"] == "good") & frame["b"].str.startswith("chance")]
    assert versus_chance["significant"].all()
    accuracy = {**dict(zip(frame["a"], frame["accuracy_a"])),
                **dict(zip(frame["b"], frame["accuracy_b"]))}
    groups = rank_groups(accuracy, frame)
    assert groups["good"] == groups["also_good"] == 1
    assert all(groups[f"chance{i}"] > 1 for i in range(62))


# --- every metric, intervals, baselines ------------------------------------------------------


@pytest.mark.slow
def test_every_metrics_bootstrap_matches_sklearn_on_the_drawn_items():
    """The weighted resample metrics equal sklearn's on the expanded items, for each metric:
    the pairs' intervals and p-values come from exactly those."""
    rng = np.random.default_rng(12)
    n, n_boot, seed = 70, 60, 3
    y = rng.integers(0, 3, size=n)
    probs = {name: rng.dirichlet(np.ones(3) * 0.5, size=(2, n)) + 0.2 * np.eye(3)[y]
             for name in ("p", "q")}
    probs = {k: v / v.sum(axis=2, keepdims=True) for k, v in probs.items()}
    frame = paired_comparisons(probs, y, n_boot=n_boot, seed=seed)
    draws = np.random.default_rng(seed)
    boot = {name: [] for name in probs}
    for _ in range(n_boot):
        items = draws.integers(0, n, size=n)
        for name, p in probs.items():
            scores = [compute_metrics(y[items], seed_p[items]) for seed_p in p]
            boot[name].append({m: np.mean([s[m] for s in scores]) for m in METRICS})
    row = frame.iloc[0]
    for metric in METRICS:
        d = np.array([a[metric] - b[metric] for a, b in zip(boot[row["a"]], boot[row["b"]])])
        keep = ~np.isnan(d)
        assert (row[f"{metric}_low"], row[f"{metric}_high"]) == pytest.approx(
            tuple(np.quantile(d[keep], [0.025, 0.975]))), metric
        observed = (np.mean([compute_metrics(y, p)[metric] for p in probs[row["a"]]])
                    - np.mean([compute_metrics(y, p)[metric] for p in probs[row["b"]]]))
        assert row[f"{metric}_diff"] == pytest.approx(observed), metric
        p = 2 * scipy.stats.norm.sf(abs(observed) / d[keep].std(ddof=1))
        assert row[f"{metric}_p"] == pytest.approx(min(p, 1.0)), metric


def test_intervals_cover_items_and_seeds_and_stay_in_range():
    """A feature set's interval is wider than its seeds' spread alone, holds the mean,
    and never leaves [0, 1] (the old seed-only t-interval gave [-0.119, 1.152] from two
    seeds)."""
    rng = np.random.default_rng(13)
    n = 300
    y = rng.integers(0, 2, size=n)
    two_seeds = probs_from_predictions(predictor(y, rng.random((2, n)) < np.array([[0.3], [0.9]])))
    steady = probs_from_predictions(predictor(y, rng.random((3, n)) < 0.98))
    result = compare({"two": two_seeds, "steady": steady}, y, n_boot=2000)
    for name, probs in (("two", two_seeds), ("steady", steady)):
        low, high = result.intervals[name]["accuracy"]
        assert 0 <= low <= result.values[name]["accuracy"] <= high <= 1
        per_seed = [np.mean(p.argmax(1) == y) for p in probs]
        assert high - low > (max(per_seed) - min(per_seed)) / 2
    correct = (steady.argmax(2) == y).mean(axis=0)  # each item's correctness over seeds
    item_se = correct.std() / math.sqrt(n)  # the items' sampling alone
    low, high = result.intervals["steady"]["accuracy"]
    assert high - low > 2 * 1.96 * item_se * 0.8


def test_a_baseline_compares_each_other_name_with_it_only():
    rng = np.random.default_rng(14)
    n = 200
    y = rng.integers(0, 2, size=n)
    probs = {name: probs_from_predictions(predictor(y, rng.random((1, n)) < acc))
             for name, acc in (("cls", 0.7), ("mean", 0.9), ("max", 0.72), ("worse", 0.5))}
    everything = compare(probs, y, n_boot=1000).pairs
    against = compare(probs, y, n_boot=1000, baseline="cls").pairs
    assert len(everything) == 6 and len(against) == 3
    assert sorted(against["a"]) == ["max", "mean", "worse"] and set(against["b"]) == {"cls"}
    # Holm over the 3 comparisons, not 6
    np.testing.assert_allclose(against["accuracy_p_holm"], holm(against["accuracy_p"]))
    sig = dict(zip(against["a"], against["significant"]))
    assert sig["mean"] and sig["worse"] and not sig["max"]


def test_the_primary_metric_ranks_and_decides_significance():
    rng = np.random.default_rng(15)
    n = 300
    y = rng.integers(0, 2, size=n)
    probs = {name: probs_from_predictions(predictor(y, rng.random((1, n)) < acc), confidence=conf)
             for name, acc, conf in (("sure", 0.8, 0.99), ("calibrated", 0.78, 0.8))}
    by_loss = compare(probs, y, n_boot=500, primary="log_loss").pairs
    assert by_loss["a"].iloc[0] == "calibrated"  # lower log-loss ranks first
    assert by_loss["significant"].iloc[0] == (by_loss["log_loss_p_holm"].iloc[0] < 0.05)


def test_refit_variance_is_the_folds_spread_beyond_the_items_scaled_for_overlap():
    from poolkit.evaluation.stats import refit_variance

    by_fold = np.array([[0.1], [-0.1], [0.1], [-0.1], [0.0]])  # variance 0.01 (ddof 1)
    sizes = np.full(5, 100)
    # the items explain se^2 * n * mean(1 / n_f) = 1e-4 * 500 / 100 = 5e-4 of it
    expected = (1 / 5 + 1 / 4) * (0.01 - 5e-4)
    refit = refit_variance(by_fold, [0.01], sizes)
    assert refit.variance[0] == pytest.approx(expected)
    # Welch-Satterthwaite: (F - 1) * ((se^2 + c * fits) / (c * fits))^2
    assert refit.df[0] == pytest.approx(4 * ((1e-4 + expected) / expected) ** 2)
    assert 3 < refit.df[0] < 5  # the fits dominate: about F - 1
    assert refit_variance(by_fold, [0.01], sizes, test_train_ratio=0.5).variance[0] == \
        pytest.approx((1 / 5 + 0.5) * (0.01 - 5e-4))
    # a spread the items explain adds nothing, and the normal reference stays
    explained = refit_variance(by_fold, [0.1], sizes)
    assert explained.variance[0] == 0.0 and explained.df[0] == np.inf
    # items dominating the spread: many degrees of freedom
    assert refit_variance(by_fold, [0.04], sizes).df[0] > 20


@pytest.mark.slow
def test_cross_fitted_pairs_widen_by_the_fits_variance_and_only_then():
    rng = np.random.default_rng(3)
    n, folds = 600, np.repeat(np.arange(5), 120)
    y = rng.integers(0, 2, size=n)
    base = np.clip(0.5 + 0.3 * (2 * y - 1) + 0.2 * rng.standard_normal(n), 0.01, 0.99)
    # b better than a on some folds and worse on others: what refitting the heads does
    shift = np.where(folds % 2 == 0, 0.15, -0.15) * (2 * y - 1)
    other = np.clip(base + shift, 0.01, 0.99)
    probs = {name: np.stack([1 - p, p], axis=1)[None] for name, p in
             (("a", base), ("b", other), ("c", np.clip(base + 0.01, 0.01, 0.99)))}
    plain = compare(probs, y, n_boot=500).pairs.set_index(["a", "b"])
    fitted = compare(probs, y, n_boot=500, folds=folds).pairs.set_index(["a", "b"])
    for metric in ("accuracy", "roc_auc", "log_loss"):
        assert (fitted[f"{metric}_se"] >= plain[f"{metric}_se"] - 1e-12).all()
        if metric != "roc_auc":  # (cross-fitted, ROC-AUC is the mean over folds)
            pd.testing.assert_series_equal(fitted[f"{metric}_diff"], plain[f"{metric}_diff"])
    swinging = [key for key in fitted.index if set(key) == {"a", "b"}][0]
    assert fitted.loc[swinging, "log_loss_se"] > 2 * plain.loc[swinging, "log_loss_se"]
    widened = fitted.loc[swinging]
    # the interval widens with the standard error, around the same difference
    ratio = widened["log_loss_se"] / plain.loc[swinging, "log_loss_se"]
    # the fits' variance is estimated from 5 folds: t with Satterthwaite's df, not normal
    from sklearn.metrics import log_loss

    from poolkit.evaluation.stats import refit_variance

    by_fold = [log_loss(y[folds == f], probs["a"][0][folds == f], labels=[0, 1])
               - log_loss(y[folds == f], probs["b"][0][folds == f], labels=[0, 1])
               for f in range(5)]
    sign = 1 if swinging == ("a", "b") else -1
    df = refit_variance(sign * np.array(by_fold)[:, None], [plain.loc[swinging, "log_loss_se"]],
                        np.full(5, 120)).df[0]
    assert 1 < df < 20
    tails = scipy.stats.t.ppf(0.975, df) / scipy.stats.norm.ppf(0.975)
    assert widened["log_loss_high"] - widened["log_loss_diff"] == pytest.approx(
        tails * ratio * (plain.loc[swinging, "log_loss_high"] - plain.loc[swinging, "log_loss_diff"]))
    z = abs(widened["log_loss_diff"]) / widened["log_loss_se"]
    assert widened["log_loss_p"] == pytest.approx(2 * scipy.stats.t.sf(z, df))
    assert widened["log_loss_p"] > 2 * scipy.stats.norm.sf(z)


def test_cross_fitted_roc_auc_is_the_mean_of_the_folds_and_the_others_pool_the_items():
    from sklearn.metrics import accuracy_score, roc_auc_score

    rng = np.random.default_rng(5)
    folds = np.repeat(np.arange(4), 150)
    y = rng.integers(0, 2, size=folds.size)
    # each fold's head ranks its items well, but their offsets differ: pooling the folds'
    # scores ranks one head's items against another's
    p1 = 1 / (1 + np.exp(-(2 * (2 * y - 1) + rng.standard_normal(y.size) + 3 * (folds - 1.5))))
    probs = np.stack([1 - p1, p1], axis=1)
    by_fold = [roc_auc_score(y[folds == f], p1[folds == f]) for f in range(4)]
    pooled = roc_auc_score(y, p1)
    scored = compute_metrics(y, probs, folds)
    assert scored["roc_auc"] == pytest.approx(np.mean(by_fold))
    assert abs(scored["roc_auc"] - pooled) > 0.02  # the offsets cost the pooled AUC
    assert scored["accuracy"] == accuracy_score(y, p1 > 0.5)  # counts pool over the folds
    assert compute_metrics(y, probs)["roc_auc"] == pytest.approx(pooled)  # one split: all items
    # compare reports the same value, and its bootstrap resamples within the folds
    result = compare({"a": probs[None]}, y, n_boot=300, folds=folds)
    assert result.values["a"]["roc_auc"] == pytest.approx(np.mean(by_fold))
    low, high = result.intervals["a"]["roc_auc"]
    assert low < np.mean(by_fold) < high and not low < pooled < high


@pytest.mark.parametrize("gaps", [True, False])
@pytest.mark.parametrize("shape", [(10_000, 7), (7, 30), (1, 5), (2, 4), (1001, 3)])
def test_quantiles_are_nanquantiles_bits_with_nan_and_all_nan_columns(shape, gaps):
    rng = np.random.default_rng(shape[0])
    samples = rng.normal(size=shape)
    samples[:, -1] = np.round(samples[:, -1], 1)  # ties
    if gaps:  # sorted; without NaNs, partitioned
        samples[rng.random(shape) < 0.2] = np.nan  # gaps in some resamples
        samples[:, 0] = np.nan  # a metric undefined on every resample
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanquantile(samples, [0.025, 0.975], axis=0)
    low, high = stats._quantiles(samples, 0.05)
    np.testing.assert_array_equal(low, expected[0])
    np.testing.assert_array_equal(high, expected[1])


@pytest.mark.parametrize("n, ties", [(487, False), (487, True), (40, True), (3, False)])
def test_the_pairwise_auc_gives_the_cumulative_sums_bits(n, ties, monkeypatch):
    from poolkit.evaluation import metrics
    from poolkit.evaluation.metrics import Resamples, Weighted

    rng = np.random.default_rng(n)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    score = rng.random(n)
    if ties:
        score = np.round(score * 10) / 10
    counts = rng.multinomial(n, np.full(n, 1 / n), size=500).astype(float)
    counts[0] = 0
    counts[0, y == 0] = 1  # a resample with no positives: NaN on both paths
    weighted = Weighted(Resamples(y, counts), np.column_stack([1 - score, score]))
    pairwise = weighted._auc(score, 1)
    monkeypatch.setattr(metrics, "_PAIRWISE_AUC", -1)
    cumulative = weighted._auc(score, 1)
    assert np.isnan(pairwise[0])
    np.testing.assert_array_equal(pairwise, cumulative)


def test_binomial_p_is_scipys_binomtest_to_the_bit():
    b, c = np.array([(b, n - b) for n in range(1, 120) for b in range(n + 1)]
                    + [(1200, 1350), (4000, 3900), (0, 5000), (17, 2)]).T
    expected = [sps.binomtest(int(bk), int(bk + ck), 0.5).pvalue for bk, ck in zip(b, c)]
    np.testing.assert_array_equal(stats.binomial_p(b, c), expected)
    assert stats.binomial_p(0, 0) == 1.0  # no discordant items: nothing against the null


def test_blocks_of_pairs_and_groups_of_heads_do_not_change_the_result(monkeypatch):
    from poolkit.evaluation import metrics

    rng = np.random.default_rng(11)
    y = rng.integers(0, 3, size=60)
    probs = {name: rng.dirichlet(np.ones(3), size=(2, 60)) for name in "abcdefg"}
    whole = paired_comparisons(probs, y, n_boot=300)
    monkeypatch.setattr(stats, "_PAIR_BLOCK", 4)  # 21 pairs: 6 blocks over the threads
    monkeypatch.setattr(metrics, "_CONFUSION_ENTRIES", 300 * 9 * 3)  # 3 heads per matmul
    pd.testing.assert_frame_equal(whole, paired_comparisons(probs, y, n_boot=300))
