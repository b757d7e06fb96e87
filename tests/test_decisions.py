"""Decisions: practical equivalence (TOST), better / equivalent / inconclusive, the odds on
a new task, on one task and across tasks; checked against statsmodels and by construction."""

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from poolkit.errors import PoolkitError
from poolkit.evaluation.across import random_effects, sentences, verdict
from poolkit.evaluation.decisions import (
    DECISIONS,
    decide,
    flipped,
    prediction,
    rope_of,
    rope_words,
    tost_p,
)


def test_tost_is_the_one_minus_two_alpha_interval_inside_the_rope():
    rng = np.random.default_rng(0)
    diff, se = rng.normal(0, 0.01, 500), rng.uniform(0.001, 0.01, 500)
    for df in (np.inf, 4):
        half = stats.t.ppf(0.95, df) * se
        inside = (diff - half > -0.01) & (diff + half < 0.01)
        assert ((tost_p(diff, se, 0.01, df) < 0.05) == inside).all()
    assert inside.any() and not inside.all()


def test_tost_of_a_certain_difference_and_of_a_missing_one():
    assert tost_p([0.005, 0.02, np.nan], [0.0, 0.0, 0.01], 0.01).tolist()[:2] == [0.0, 1.0]
    assert np.isnan(tost_p([np.nan], [0.01], 0.01)[0])


def test_decisions_say_better_equivalent_or_inconclusive():
    found = decide([0.03, -0.03, 0.004, 0.001, 0.001],
                   [0.001, 0.001, 0.01, 0.5, 0.5], [1.0, 1.0, 0.001, 0.001, 0.5], 0.01, 0.05)
    assert found == ["a better", "b better", "a better (within ROPE)", "equivalent",
                     "inconclusive"]
    assert decide([0.03], [0.001], [1.0], 0.01, 0.05, higher_is_better=False) == ["b better"]
    assert set(found) <= set(DECISIONS)
    assert [flipped(d) for d in found[:3]] == ["b better", "a better", "b better (within ROPE)"]


def test_the_rope_is_checked_and_said_in_the_metrics_units():
    assert rope_of(None, "accuracy") == 0.01 and rope_of(None, "mcc") == 0.02
    assert rope_of(0, "accuracy") == 0.0
    for bad in (-0.01, "x", float("nan"), True):
        with pytest.raises(PoolkitError, match="--rope"):
            rope_of(bad, "accuracy")
    assert rope_words("accuracy", 0.01) == "±1 point"
    assert rope_words("accuracy", 0.025) == "±2.5 points"
    assert rope_words("log_loss", 0.01) == "±0.01"


def test_the_prediction_interval_is_the_classic_one_for_a_new_draw():
    """statsmodels' prediction of a new observation from an intercept-only regression is
    mean ± t(k-1) · s · sqrt(1 + 1/k): the same interval."""
    import statsmodels.api as sm

    d = np.array([0.03, 0.01, 0.05, 0.02, 0.04, -0.01])
    frame = sm.OLS(d, np.ones((d.size, 1))).fit().get_prediction(np.ones((1, 1))).summary_frame(
        alpha=0.05)
    found = prediction(d, 0.01, 0.05)
    assert found["low"] == pytest.approx(frame["obs_ci_lower"].iloc[0])
    assert found["high"] == pytest.approx(frame["obs_ci_upper"].iloc[0])
    scale = d.std(ddof=1) * np.sqrt(1 + 1 / d.size)
    assert found["p_a"] == pytest.approx(stats.t.sf((0.01 - d.mean()) / scale, d.size - 1))
    assert found["p_b"] == pytest.approx(stats.t.cdf((-0.01 - d.mean()) / scale, d.size - 1))
    lower = prediction(d, 0.01, 0.05, higher_is_better=False)  # a loss: lower is better
    assert (lower["p_a"], lower["p_b"]) == (found["p_b"], found["p_a"])
    assert np.isnan(prediction([0.02], 0.01, 0.05)["low"])


def test_the_pooled_effect_agrees_with_statsmodels_combine_effects():
    """DerSimonian-Laird's tau², the random-effects estimate and the Hartung-Knapp-Sidik-
    Jonkman standard error and interval (statsmodels' 'random effect wls', t with k - 1)."""
    from statsmodels.stats.meta_analysis import combine_effects

    rng = np.random.default_rng(3)
    for k in (3, 5, 8):
        d, se = rng.normal(0.02, 0.02, k), rng.uniform(0.005, 0.02, k)
        ours = random_effects(d, se)
        with warnings.catch_warnings():  # statsmodels: no sizes for each task's own t
            warnings.simplefilter("ignore")
            theirs = combine_effects(d, se ** 2, method_re="dl", use_t=True)
            row = theirs.summary_frame().loc["random effect wls"]
        assert ours["tau2"] == pytest.approx(theirs.tau2, abs=1e-12)
        assert ours["estimate"] == pytest.approx(row["eff"])
        assert ours["se"] == pytest.approx(row["sd_eff"])
        assert (ours["low"], ours["high"]) == pytest.approx((row["ci_low"], row["ci_upp"]))


def _suite(diffs: dict, se: float = 0.004) -> dict:
    """Tasks' summary and pairs frames from ``diffs`` {pooler: [its accuracy on each task]}:
    every pair's difference is the difference of accuracies, with standard error ``se``."""
    names = list(diffs)
    tasks = {}
    for t in range(len(next(iter(diffs.values())))):
        values = {n: diffs[n][t] for n in names}
        order = sorted(names, key=lambda n: -values[n])
        rows = [{"a": f"{a}@6", "b": f"{b}@6", "accuracy_diff": values[a] - values[b],
                 "accuracy_se": se, "accuracy_low": values[a] - values[b] - 2 * se,
                 "accuracy_high": values[a] - values[b] + 2 * se,
                 "decision": "inconclusive"}
                for i, a in enumerate(order) for b in order[i + 1:]]
        summary = pd.DataFrame({"pooler": names, "layer": "6", "encoder": "frozen",
                                "accuracy_mean": [values[n] for n in names], "status": "ok"})
        tasks[f"t{t}"] = (summary, pd.DataFrame(rows))
    return tasks


ACCURACY = {"mean": [0.80, 0.71, 0.90, 0.62, 0.75, 0.84, 0.69, 0.77],
            "mean_sqrt_len": [0.801, 0.708, 0.902, 0.618, 0.751, 0.842, 0.688, 0.771],
            "cls": [0.76, 0.68, 0.88, 0.57, 0.73, 0.80, 0.66, 0.74]}


def test_across_tasks_a_pair_is_better_equivalent_or_inconclusive_and_said_so():
    found = verdict(_suite(ACCURACY))
    rows = found.pairs.set_index(["a", "b"])
    assert rows.loc[("mean@6", "cls@6"), "decision"] == "a better"
    same = rows.loc[("mean_sqrt_len@6", "mean@6")] if ("mean_sqrt_len@6", "mean@6") in rows.index \
        else rows.loc[("mean@6", "mean_sqrt_len@6")]
    assert same["decision"] == "equivalent"
    assert found.pairs["new_task_low"].notna().all()
    said = "\n".join(sentences(found))
    assert "are practically equivalent (within ±1 point" in said
    assert "beats cls@6 on 8 of 8 tasks" in said and "on a new task, mean" in said
    wide = verdict(_suite(ACCURACY), rope=0.0).pairs  # no region: nothing is equivalent
    assert "equivalent" not in set(wide["decision"])


def test_a_pairs_decision_does_not_depend_on_which_other_poolers_ran():
    """mean vs cls: the same pooled numbers, equivalence test, prediction and decision
    whether or not two more poolers are in the suite; Nemenyi's mean-rank p, which reads
    the others' ranks, changes."""
    more = {**ACCURACY, "max": [0.78, 0.73, 0.86, 0.64, 0.70, 0.83, 0.70, 0.72],
            "first_last_avg": [0.79, 0.69, 0.91, 0.60, 0.76, 0.82, 0.71, 0.78]}
    two = {k: ACCURACY[k] for k in ("mean", "cls")}
    pair = ["accuracy_diff", "accuracy_low", "accuracy_high", "accuracy_se", "accuracy_p",
            "tau2", "i2", "p_equivalent", "new_task_low", "new_task_high", "p_new_task_a",
            "p_new_task_b", "decision", "a_better_on", "equivalent_on"]
    rows = [verdict(_suite(s)).pairs.set_index(["a", "b"]).loc[("mean@6", "cls@6")]
            for s in (two, ACCURACY, more)]
    for row in rows[1:]:
        assert row[pair].tolist() == rows[0][pair].tolist()
    assert rows[0]["decision"] == "a better"
    assert len({round(r["nemenyi_p"], 6) for r in rows}) > 1


def test_the_forest_plot_draws_the_rope_band_decisions_and_predictions():
    from poolkit.winner.plot import BEST_GROUP_COLOR, EQUIVALENT_COLOR, forest_plot

    found = verdict(_suite(ACCURACY), rope=0.015)
    ax = forest_plot(found).axes[0]
    (band,) = [p for p in ax.patches if p.get_gid() == "rope"]
    xs = band.get_patch_transform().transform(band.get_path().vertices)[:, 0]
    assert (min(xs), max(xs)) == pytest.approx((-1.5, 1.5))
    colors = {p.get_facecolor()[:3] for p in ax.patches if p.get_gid() == "pooled"}
    import matplotlib.colors as mcolors

    assert {mcolors.to_rgb(BEST_GROUP_COLOR), mcolors.to_rgb(EQUIVALENT_COLOR)} <= colors
    bars = [c for c in ax.collections if c.get_gid() == "prediction"]
    assert len(bars) == len([p for p in ax.patches if p.get_gid() == "pooled"])
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert any("pooled: equivalent" in t for t in labels), labels


def test_a_runs_verdict_in_words_against_its_best_and_against_a_baseline():
    from poolkit.pipeline.results import verdict_sentences

    summary = pd.DataFrame({"pooler": ["mean", "max", "cls", "first"], "layer": "6",
                            "encoder": "frozen", "status": "ok",
                            "accuracy_mean": [0.80, 0.799, 0.75, 0.78],
                            "decision": ["best", "equivalent", "worse", "inconclusive"]})
    first, second = verdict_sentences(summary, "accuracy", 0.01)
    assert first == "Best on this task: mean@6 (accuracy 0.800)."
    assert second == ("It beats cls@6, is practically equivalent to max@6 (within ±1 point) "
                      "and cannot yet be told apart from first@6.")
    baseline = summary.assign(decision=["better", "better (within ROPE)", "baseline", "worse"])
    (said,) = verdict_sentences(baseline, "accuracy", 0.02)
    assert said == ("Against the baseline cls@6 (accuracy 0.750): better: mean@6 and max@6; "
                    "worse: first@6.")
    alone = summary.iloc[[2]].assign(decision="baseline")
    assert verdict_sentences(alone, "accuracy", 0.01) == []
