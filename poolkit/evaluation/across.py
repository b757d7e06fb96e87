"""Across tasks: one verdict per feature set from several tasks' runs (``poolkit suite``).

Each task is an ordinary run; this stage reads only what each run's evaluate
stage found (its summary and its paired tests) and pools it:

- **ranks**: each feature set's primary metric on every task, its rank there
  (1 = best, ties share their mean rank), its mean rank and its average;
- **Friedman's test** over the tasks, and **Nemenyi's** post-hoc with its critical
  difference (all pairs at once, single-step on the largest mean-rank gap: it holds
  the family-wise error by construction, and it is what a critical-difference
  diagram draws), both by permuting the ranks within each task, since their
  asymptotic approximations run hot with a handful of tasks. Wilcoxon's signed-rank
  test with Holm was the alternative; with five tasks its smallest two-sided p is
  0.0625, so no pair could ever be significant;
- per pair, a **pooled effect**: a random-effects meta-analysis of the per-task paired
  differences, each weighted by its own task's paired-bootstrap variance
  (DerSimonian–Laird τ²; the Hartung–Knapp–Sidik–Jonkman interval, t with k − 1
  degrees of freedom, which holds alpha with few tasks where the normal interval
  runs hot: 0.05 where the normal one gave 0.11–0.13, and its variant floored at the
  fixed-effect scale was conservative at a cost in power, by simulation), Holm-corrected
  over the pairs, with the between-task heterogeneity τ² and I².

See :data:`METHODS`; ``benchmarks/calibration.py --across`` measures the error rates.
"""

import math
from dataclasses import dataclass, field

import numpy as np

from poolkit.errors import PoolkitError
from poolkit.evaluation.decisions import flipped, prediction, rope_of, rope_words
from poolkit.evaluation.metrics import METRICS, PRIMARY
from poolkit.evaluation.stats import ALPHA, decisions, holm
from poolkit.pooling.features import feature_id

METHODS = (
    "Per task, each feature set's primary metric (its mean over seeds) is ranked among the "
    "feature sets every task finished (1 = best; ties share the mean rank). Friedman's "
    "test asks whether any feature set ranks differently from the others across tasks; "
    "Nemenyi's post-hoc compares every pair's mean ranks against the critical difference, "
    "the 1 - alpha quantile of the largest gap between two mean ranks, which holds the "
    "family-wise error over all pairs. Both take their p-values from 10,000 permutations of "
    "the ranks within each task (exact where the chi-squared and studentized-range "
    "approximations run hot with few tasks). The pooled effect of a "
    "pair is a random-effects meta-analysis of its per-task paired differences a - b, each "
    "weighted by 1 / (se^2 + tau^2), se its task's paired-bootstrap standard error: tau^2 by "
    "DerSimonian-Laird, the 95% interval and p-value by Hartung-Knapp-Sidik-Jonkman (t with "
    "k - 1 degrees of freedom), Holm-corrected over the pairs; I^2 is "
    "the share of the differences' spread that is between tasks rather than within them."
)


@dataclass
class Verdict:
    """The cross-task verdict: ``table`` (suite.csv: a row per task × feature set),
    ``ranks`` (ranks.csv: a row per feature set, best mean rank first), ``pairs``
    (across_pairs.csv: a row per pair, the pooled effect and Nemenyi's test),
    ``task_pairs`` (task_pairs.csv: each pair's difference on each task, what the
    pooled effect pools), ``friedman`` (its statistic, p, and Nemenyi's critical
    difference), the tasks it covers, those ``missing`` (``{task: reason}``) and the
    feature sets ``left_out`` (not finished on every task); ``baseline`` the feature set
    every other was compared with, if any."""

    table: object
    ranks: object
    pairs: object
    task_pairs: object
    friedman: dict
    metric: str
    tasks: list
    baseline: str | None = None
    missing: dict = field(default_factory=dict)
    left_out: list = field(default_factory=list)
    rope: float = 0.01


def random_effects(diffs, ses, alpha: float = ALPHA, hartung_knapp: bool = True) -> dict:
    """Pool per-task differences ``diffs`` with standard errors ``ses`` (both ``(k,)``).

    Returns ``estimate``, ``se``, ``low``, ``high``, ``p`` (two-sided), ``tau2``,
    ``i2`` and ``q`` (Cochran's Q). τ² by DerSimonian–Laird; with k ≥ 2 tasks the
    interval and p are Hartung–Knapp–Sidik–Jonkman's (t, k − 1 df, the variance
    scaled by ``q_HK``, the weighted spread of the differences); one task is its own
    test (normal, its own se).
    ``hartung_knapp=False`` gives the textbook DerSimonian–Laird z-test instead (it
    runs hot with few tasks: benchmarks/calibration.py --across measures both).
    """
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    v = np.maximum(np.asarray(ses, dtype=float) ** 2, 1e-12)  # an se of 0: a certain diff
    k = d.size
    w = 1 / v
    fixed = float(np.sum(w * d) / np.sum(w))
    q = float(np.sum(w * (d - fixed) ** 2))
    scale = float(np.sum(w) - np.sum(w ** 2) / np.sum(w))
    tau2 = max(0.0, (q - (k - 1)) / scale) if k > 1 and scale > 0 else 0.0
    ws = 1 / (v + tau2)
    estimate = float(np.sum(ws * d) / np.sum(ws))
    if k > 1 and hartung_knapp:
        spread = float(np.sum(ws * (d - estimate) ** 2) / (k - 1))
        se = math.sqrt(spread / float(np.sum(ws)))
        quantile = float(stats.t.ppf(1 - alpha / 2, k - 1))
        p = (float(2 * stats.t.sf(abs(estimate) / se, k - 1)) if se > 0
             else float(estimate == 0))  # every task the same difference: no spread
    else:
        se = math.sqrt(1 / float(np.sum(ws)))
        quantile = float(stats.norm.ppf(1 - alpha / 2))
        p = float(2 * stats.norm.sf(abs(estimate) / se)) if se > 0 else float(estimate == 0)
    i2 = max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0
    return {"estimate": estimate, "se": se, "low": estimate - quantile * se,
            "high": estimate + quantile * se, "p": min(1.0, p), "tau2": tau2, "i2": i2, "q": q}


def task_ranks(values, higher_is_better: bool = True) -> np.ndarray:
    """Ranks ``(N, k)`` of ``values`` ``(N tasks, k sets)`` within each task: 1 = best,
    ties share their mean rank."""
    from scipy import stats

    sign = -1.0 if higher_is_better else 1.0
    return np.vstack([stats.rankdata(sign * np.asarray(row, float)) for row in values])


#: Permutations of the ranks within each task behind Friedman's and Nemenyi's p-values.
PERMUTATIONS = 10_000


def rank_tests(ranks, alpha: float = ALPHA, permutations: int = PERMUTATIONS,
               seed: int = 0) -> tuple:
    """Friedman's test and Nemenyi's critical difference over ``ranks`` ``(N tasks, k
    sets)``, by permuting the ranks within each task (what the null says is
    exchangeable), so they hold alpha with few tasks, where their chi-squared and
    studentized-range approximations do not (with 4 tasks and 2 sets the
    approximations reject 4 wins of 4, which has chance 1/8).

    Returns ``(test, ranges)``: ``test`` has ``statistic`` (the tie-corrected
    chi-squared), ``p`` (by permutation), ``p_chi2`` (its chi-squared
    approximation, for reference), ``cd`` (the critical difference: the ``1 - alpha``
    quantile of the largest mean-rank gap under permutation: a pair further apart has
    Nemenyi p < alpha), ``tasks``, ``sets``,
    ``df`` and ``alpha``; ``ranges`` is that largest gap under each permutation, for
    :func:`nemenyi_p`. NaNs below 2 tasks or 2 sets.
    """
    from scipy import stats

    r = np.asarray(ranks, dtype=float)
    n, k = r.shape if r.ndim == 2 else (0, 0)
    out = {"tasks": int(n), "sets": int(k), "df": int(k - 1), "alpha": alpha}
    if n < 2 or k < 2:
        return {**out, "statistic": math.nan, "p": math.nan, "p_chi2": math.nan,
                "cd": math.nan}, np.zeros(0)
    spread = float(np.sum((r.mean(axis=0) - (k + 1) / 2) ** 2))
    ties = sum(float(np.sum(c ** 3 - c)) for c in
               (np.unique(row, return_counts=True)[1] for row in r))
    correction = 1 - ties / (n * k * (k * k - 1))
    statistic = 12 * n / (k * (k + 1)) * spread / correction if correction > 0 else math.nan
    rng = np.random.default_rng(seed)
    spreads, ranges = [], []
    for start in range(0, permutations, 1000):  # chunks bound the memory
        size = min(1000, permutations - start)
        order = np.argsort(rng.random((size, n, k)), axis=2)
        means = np.take_along_axis(np.broadcast_to(r, (size, n, k)), order, axis=2).mean(axis=1)
        spreads.append(np.sum((means - (k + 1) / 2) ** 2, axis=1))
        ranges.append(means.max(axis=1) - means.min(axis=1))
    spreads, ranges = np.concatenate(spreads), np.sort(np.concatenate(ranges))
    p = (1 + np.sum(spreads >= spread - 1e-9)) / (permutations + 1) if correction > 0 else 1.0
    # the CD: a gap above it reaches p < alpha in nemenyi_p (at most `beyond` ranges reach it)
    beyond = math.floor(alpha * (permutations + 1)) - 1
    cd = float(ranges[permutations - beyond - 1]) if beyond >= 0 else math.inf
    return {**out, "statistic": statistic, "p": float(p),
            "p_chi2": float(stats.chi2.sf(statistic, k - 1)) if correction > 0 else 1.0,
            "cd": cd}, ranges


def nemenyi_p(rank_diff, ranges) -> np.ndarray:
    """Nemenyi's family-wise p of mean-rank differences: how often the largest gap
    between any two sets' mean ranks reaches it under permutation (``ranges`` from
    :func:`rank_tests`); a pair is significant at alpha when it exceeds the CD."""
    diffs = np.abs(np.asarray(rank_diff, float))
    ranges = np.sort(np.asarray(ranges, float))
    reached = ranges.size - np.searchsorted(ranges, diffs - 1e-9, side="left")
    return (1 + reached) / (ranges.size + 1)


#: Columns of ranks.csv that are not task names (a task may not be named so).
RESERVED = ("model", "pooler", "layer", "encoder", "set", "mean_rank", "tasks")


def verdict(tasks: dict, *, metric: str = PRIMARY, baseline: str | None = None,
            alpha: float = ALPHA, missing: dict | None = None,
            rope: float | None = None) -> Verdict:
    """The cross-task verdict of ``tasks`` ``{name: (summary, pairs)}``: each finished
    task's summary frame and pairs frame (as a run writes them). ``baseline`` (a
    feature set id) compares every other set with it only; ``missing`` names tasks
    that did not finish, with why; ``rope`` is the decisions' region of practical
    equivalence (default: the metric's, :mod:`~poolkit.evaluation.decisions`). Feature
    sets not finished on every task are left out of the verdict (named in ``left_out``)."""
    import pandas as pd

    higher = METRICS[metric].higher_is_better
    names = list(tasks)
    about, values, intervals = _task_values(tasks, metric)
    sets = [key for key in about if all((task, key) in values for task in names)]
    left_out = [key for key in about if key not in sets]
    scores = np.array([[values[task, key] for key in sets] for task in names]).reshape(
        len(names), len(sets))
    ranks = task_ranks(scores, higher) if scores.size else scores
    test, ranges = rank_tests(ranks, alpha)
    mean_rank = ranks.mean(axis=0) if scores.size else np.zeros(0)

    table = pd.DataFrame([{"task": task, **about[key], metric: values[task, key],
                           f"{metric}_ci_low": intervals[task, key][0],
                           f"{metric}_ci_high": intervals[task, key][1],
                           "rank": float(ranks[t, j])}
                          for t, task in enumerate(names) for j, key in enumerate(sets)])
    order = sorted(range(len(sets)), key=lambda j: (mean_rank[j], -np.mean(scores[:, j])
                                                    if higher else np.mean(scores[:, j])))
    ranks_frame = pd.DataFrame([{**about[sets[j]], "mean_rank": float(mean_rank[j]),
                                 metric: float(np.mean(scores[:, j])), "tasks": len(names),
                                 **{task: float(scores[t, j]) for t, task in enumerate(names)}}
                                for j in order])
    ordered = [sets[j] for j in order]
    rank_of = {key: float(mean_rank[j]) for j, key in enumerate(sets)}
    rope = rope_of(rope, metric)
    across, per_task = _pooled_pairs(tasks, _pairs_of(ordered, baseline), rank_of, ranges,
                                     metric, higher, alpha, rope)
    across = _decided(across, metric, higher, rope, alpha)
    return Verdict(table, ranks_frame, across, pd.DataFrame(per_task), test, metric, names,
                   baseline if baseline in rank_of else None, dict(missing or {}), left_out,
                   rope)


def _task_values(tasks: dict, metric: str) -> tuple:
    """``(about, values, intervals)``: each finished feature set's description, and its
    value and interval on each task, ``{(task, set id): ...}``."""
    about, values, intervals = {}, {}, {}
    for task, (summary, _) in tasks.items():
        ok = summary[summary["status"].fillna("ok").astype(str).eq("ok")] \
            if "status" in summary else summary
        for row in ok.to_dict("records"):
            model = row.get("model") if isinstance(row.get("model"), str) else None
            key = feature_id(row["pooler"], row["layer"], row.get("encoder", "frozen"), model)
            about.setdefault(key, {**({"model": model} if model is not None else {}),
                                   "pooler": row["pooler"], "layer": row["layer"],
                                   "encoder": row.get("encoder", "frozen"), "set": key})
            value = float(row[f"{metric}_mean"])
            if not math.isnan(value):
                values[task, key] = value
                intervals[task, key] = (row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high"))
    return about, values, intervals


def _pairs_of(ordered: list, baseline) -> list:
    """The pairs compared: each set with ``baseline`` (when it finished), else all."""
    if baseline is not None and baseline in ordered:
        return [(key, baseline) for key in ordered if key != baseline]
    return [(ordered[i], ordered[j]) for i in range(len(ordered))
            for j in range(i + 1, len(ordered))]


def _pooled_pairs(tasks, pairs, rank_of, ranges, metric, higher, alpha, rope) -> tuple:
    """``(across_pairs frame, task_pairs rows)``: each pair's random-effects pooled
    difference over the tasks, Holm over the pairs, Nemenyi's mean-rank test, and its
    odds on a new task."""
    import pandas as pd

    rows, per_task = [], []
    for a, b in pairs:
        diffs, ses = [], []
        for task, (_, task_pairs) in tasks.items():
            diff, se, low, high, decision = _task_difference(task_pairs, a, b, metric)
            diffs.append(diff)
            ses.append(se)
            per_task.append({"a": a, "b": b, "task": task, f"{metric}_diff": diff,
                             f"{metric}_low": low, f"{metric}_high": high, f"{metric}_se": se,
                             "decision": decision})
        pooled = random_effects(diffs, ses, alpha)
        better = np.asarray(diffs) > 0 if higher else np.asarray(diffs) < 0
        rows.append({"a": a, "b": b, "tasks": len(diffs), "a_better_on": int(better.sum()),
                     f"{metric}_diff": pooled["estimate"], f"{metric}_low": pooled["low"],
                     f"{metric}_high": pooled["high"], f"{metric}_se": pooled["se"],
                     f"{metric}_p": pooled["p"], "tau2": pooled["tau2"], "i2": pooled["i2"],
                     "rank_a": rank_of[a], "rank_b": rank_of[b],
                     "equivalent_on": sum(row["decision"] == "equivalent"
                                          for row in per_task[-len(diffs):]),
                     **_new_task_columns(prediction(diffs, rope, alpha, higher))})
    across = pd.DataFrame(rows)
    if len(across):
        across[f"{metric}_p_holm"] = holm(across[f"{metric}_p"])
        across["significant"] = across[f"{metric}_p_holm"] < alpha
        across["nemenyi_p"] = (nemenyi_p(across["rank_a"] - across["rank_b"], ranges)
                               if ranges.size else np.nan)
        across["nemenyi_significant"] = across["nemenyi_p"] < alpha
    return across.reindex(columns=across_columns(metric)), per_task


def across_columns(metric: str) -> list:
    """Columns of across_pairs.csv for ``metric``, in order."""
    return ["a", "b", "tasks", "a_better_on", f"{metric}_diff", f"{metric}_low",
            f"{metric}_high", f"{metric}_se", f"{metric}_p", f"{metric}_p_holm", "tau2", "i2",
            "rank_a", "rank_b", "significant", "nemenyi_p", "nemenyi_significant",
            *DECISION_COLUMNS]


#: The decision's columns of across_pairs.csv (:func:`_decided`): the equivalence test, the
#: decision, on how many tasks the task's own test found the pair equivalent, and the odds
#: on a new task (the prediction interval; P(a wins by more than the ROPE), P(b ...)).
DECISION_COLUMNS = ("p_equivalent", "p_equivalent_holm", "decision", "equivalent_on",
                    "new_task_low", "new_task_high", "p_new_task_a", "p_new_task_b")


def _new_task_columns(odds: dict) -> dict:
    return {"new_task_low": odds["low"], "new_task_high": odds["high"],
            "p_new_task_a": odds["p_a"], "p_new_task_b": odds["p_b"]}


def _decided(across, metric: str, higher: bool, rope: float, alpha: float):
    """``across`` with each pair's equivalence test on the pooled difference (TOST within
    ``±rope``, t with k - 1 degrees of freedom as its interval; Holm over the pairs) and its
    decision."""
    if not len(across):
        return across.reindex(columns=across_columns(metric))
    k = across["tasks"].to_numpy()
    across["p_equivalent"], across["p_equivalent_holm"], across["decision"] = decisions(
        across[f"{metric}_diff"], across[f"{metric}_se"], across[f"{metric}_p_holm"],
        np.where(k > 1, k - 1, np.inf), rope, alpha, higher)
    return across


def _task_difference(pairs, a: str, b: str, metric: str) -> tuple:
    """``(diff, se, low, high, decision)`` of ``a - b`` on ``metric`` in one task's pairs
    frame (its row may name them the other way round; ``decision`` ``None`` in a pairs
    frame written before decisions)."""
    for sign, (x, y) in ((1.0, (a, b)), (-1.0, (b, a))):
        row = pairs[(pairs["a"] == x) & (pairs["b"] == y)]
        if len(row):
            row = row.iloc[0]
            low, high = float(row[f"{metric}_low"]), float(row[f"{metric}_high"])
            decision = row.get("decision")
            decision = decision if isinstance(decision, str) else None
            if sign < 0:
                low, high = -high, -low
                decision = flipped(decision) if decision else None
            return (sign * float(row[f"{metric}_diff"]), float(row[f"{metric}_se"]), low, high,
                    decision)

    raise PoolkitError(f"a task's pairs.csv has no row comparing '{a}' with '{b}' (was it "
                       "run with another --baseline?)")


def points(metric: str, value: float) -> str:
    """A difference as a researcher says it: ``+3.9 points`` for metrics in [0, 1],
    the metric's own units otherwise (log-loss)."""
    if metric == "log_loss":
        return f"{value:+.3f}"
    return f"{100 * value:+.1f} points"


def chosen_pairs(verdict: Verdict) -> list:
    """The comparisons worth a sentence (and a forest plot), as ``(prefix, row)``: each
    against the baseline when there is one; else the best feature set by mean rank
    against each other one and every pair the pooled effect decides (better or
    equivalent; never a mean-rank test alone), and with several models, so within each
    model and then each pooler across models."""
    pairs = list(verdict.pairs.itertuples(index=False))
    ranks = verdict.ranks
    if verdict.baseline is not None:
        return [("", row) for row in pairs]
    models = ranks["model"].dropna().unique().tolist() if "model" in ranks else []
    if len(models) < 2:
        best = ranks["set"].iloc[0] if len(ranks) else None
        return [("", row) for row in pairs if best in (row.a, row.b) or _decided_pair(row)]
    model_of = dict(zip(ranks["set"], ranks["model"]))
    chosen = []
    for model in models:
        best = ranks[ranks["model"] == model]["set"].iloc[0]
        chosen += [(f"{model}: ", row) for row in pairs
                   if (best in (row.a, row.b) or _decided_pair(row))
                   and model_of[row.a] == model_of[row.b] == model]
    return chosen + [("across models: ", row) for row in pairs
                     if model_of[row.a] != model_of[row.b] and _same_but_model(ranks, row.a, row.b)]


def sentences(verdict: Verdict, alpha: float = ALPHA) -> list[str]:
    """What is decided: Friedman's test (a mean-rank summary), then a line per comparison
    :func:`chosen_pairs` picks, saying its decision and its odds on a new task."""
    if not len(verdict.pairs):
        return ["nothing to compare: fewer than two feature sets finished on every task"]
    lines = []
    test = verdict.friedman
    if not math.isnan(test["statistic"]):
        lines.append(f"Friedman over {test['tasks']} tasks and {test['sets']} feature sets: "
                     f"chi2 = {test['statistic']:.1f}, {format_p(test['p'])} (by permutation); "
                     f"Nemenyi critical difference {test['cd']:.2f} ranks at {alpha} (a "
                     "mean-rank summary, drawn in the CD diagram; the decisions below rest on "
                     "each pair's own pooled effect)")
    return lines + [prefix + _sentence(row._asdict(), verdict.metric, verdict.rope)
                    for prefix, row in chosen_pairs(verdict)]


def _decided_pair(row) -> bool:
    return isinstance(row.decision, str) and row.decision != "inconclusive"


def _same_but_model(ranks, a: str, b: str) -> bool:
    rows = ranks.set_index("set")
    return all(str(rows.at[a, c]) == str(rows.at[b, c]) for c in ("pooler", "layer", "encoder"))


def _sentence(row: dict, metric: str, rope: float) -> str:
    """One pair's line: its decision, the pooled numbers behind it, its odds on a new
    task, and (as a summary) its mean ranks."""
    diff, low, high = row[f"{metric}_diff"], row[f"{metric}_low"], row[f"{metric}_high"]
    a_wins = (diff > 0) == METRICS[metric].higher_is_better
    winner, loser = (row["a"], row["b"]) if a_wins else (row["b"], row["a"])
    wins = row["a_better_on"] if a_wins else row["tasks"] - row["a_better_on"]
    within = rope_words(metric, rope)
    pooled = f"pooled {points(metric, diff)} {_bracketed(metric, low, high)}"
    numbers = f"{pooled}, Holm {format_p(row[f'{metric}_p_holm'])}, I² = {100 * row['i2']:.0f}%"
    decision = row["decision"] if isinstance(row["decision"], str) else "inconclusive"
    if "better" in decision:
        said = (f"{winner} beats {loser} on {wins} of {row['tasks']} tasks: {numbers}"
                + (f", by less than the ROPE ({within})" if "ROPE" in decision else ""))
    elif decision == "equivalent":
        said = (f"{row['a']} and {row['b']} are practically equivalent (within {within}; "
                f"equivalent on {row['equivalent_on']} of {row['tasks']} tasks by their own "
                f"tests): {pooled}, equivalence (two one-sided tests) Holm "
                f"{format_p(row['p_equivalent_holm'])}, I² = {100 * row['i2']:.0f}%")
    else:
        said = (f"{row['a']} vs {row['b']} inconclusive (neither better nor within {within}; "
                f"more tasks would tell): {winner} better on {wins} of {row['tasks']} tasks, "
                f"{numbers}")
    ranks = (f"mean ranks {row['rank_a']:.2f} vs {row['rank_b']:.2f}, Nemenyi "
             f"{format_p(row['nemenyi_p'])}")
    return f"{said}; {_new_task(row, metric, winner, loser, a_wins, within)}{ranks}"


def _new_task(row: dict, metric: str, winner: str, loser: str, a_wins: bool,
              within: str) -> str:
    """The odds on a new task, from the winner's side (empty below 3 tasks)."""
    low, high = row["new_task_low"], row["new_task_high"]
    if not isinstance(low, float) or math.isnan(low):
        return ""
    if not a_wins:
        low, high = -high, -low
    chance = row["p_new_task_a"] if a_wins else row["p_new_task_b"]
    return (f"on a new task, {winner} beats {loser} by more than {within.lstrip('±')} with "
            f"probability {chance:.2f}; 95% prediction interval "
            f"{_bracketed(metric, low, high)}; ")


def _bracketed(metric: str, low: float, high: float) -> str:
    """An interval as the sentences say it: ``[-0.4, +0.8]`` (points, the unit said once
    before it)."""
    return f"[{points(metric, low).replace(' points', '')}, " \
           f"{points(metric, high).replace(' points', '')}]"


def format_p(p: float) -> str:
    """A p-value as the verdict says it: ``p = 0.012``, ``p < 0.001``, ``p n/a``."""
    if not isinstance(p, (int, float)) or math.isnan(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
