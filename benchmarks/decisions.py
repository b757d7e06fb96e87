"""Are the decisions honest? Equivalence at the ROPE's edge, its power, and the prediction
interval's coverage, simulated, one task and across tasks.

Across tasks (``k`` = 4 and 8 tasks per suite): each task's true difference a - b is drawn
around a pooled mean ``mu`` with between-task spread ``tau``, and each task reports it with
its standard error ``se`` (as a task's paired bootstrap does), so the suite sees
``d_t ~ N(theta_t, se^2)``, ``theta_t ~ N(mu, tau^2)``. The verdict is
:func:`poolkit.evaluation.across.verdict` exactly as ``poolkit suite`` computes it (one
pair: a and b; its mean-rank tests, which no decision reads, with fewer permutations).

- (a) ``mu`` exactly at +R (and -R): the rate of declaring ``equivalent`` must be at most
  alpha (0.05);
- (b) ``mu = 0``: the power to declare ``equivalent``;
- (c) ``k + 1`` tasks drawn, the verdict on the first ``k``: how often the 95% prediction
  interval covers the held-out task's true difference ``theta_{k+1}`` (nominal 0.95);
- (d) ``mu = 0`` and ``mu = 3 points``: the rates of declaring a better (what
  ``calibration.py --across`` measures with whole simulated tasks).

One task (``--items`` items, a single split): each item is right or wrong for a and for
b, drawn from a joint distribution whose accuracies differ by exactly R (or 0), and
:func:`poolkit.evaluation.stats.compare` decides the pair as a run does.

Each rate has its exact (Clopper-Pearson) 95% interval.

    python benchmarks/decisions.py [--suites 1000] [--datasets 400] [--items 10000]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROPE = 0.01
ALPHA = 0.05


def suite_tables(diffs, se: float) -> dict:
    """The per-task summary and pairs frames of a suite of one pair a - b, as runs write
    them, for :func:`poolkit.evaluation.across.verdict`."""
    import pandas as pd
    from scipy import stats

    half = float(stats.norm.ppf(1 - ALPHA / 2)) * se
    tasks = {}
    for t, d in enumerate(diffs):
        summary = pd.DataFrame({"pooler": ["a", "b"], "layer": "6", "encoder": "frozen",
                                "accuracy_mean": [0.8 + d, 0.8], "status": "ok"})
        pairs = pd.DataFrame([{"a": "a@6", "b": "b@6", "accuracy_diff": d, "accuracy_se": se,
                               "accuracy_low": d - half, "accuracy_high": d + half,
                               "decision": "inconclusive"}])
        tasks[f"t{t}"] = (summary, pairs)
    return tasks


def across(*, suites: int, k: int, mu: float, tau: float, se: float, seed: int) -> dict:
    """Counts over ``suites`` simulated suites of ``k`` tasks: each decision, and how often
    the prediction interval covered a held-out task's true difference."""
    from poolkit.evaluation import across as pooled
    from poolkit.evaluation.decisions import flipped

    rng = np.random.default_rng(seed)
    counts = {"equivalent": 0, "a better": 0, "b better": 0, "covered": 0, "observed": 0}
    for _ in range(suites):
        theta = rng.normal(mu, tau, size=k + 1)
        observed = rng.normal(theta, se)
        row = pooled.verdict(suite_tables(observed[:k], se), rope=ROPE).pairs.iloc[0]
        decision = row["decision"].replace(" (within ROPE)", "")
        if row["a"] == "b@6":  # ranked the other way round: a - b is the row's b - a
            row = row.copy()
            row["new_task_low"], row["new_task_high"] = -row["new_task_high"], -row["new_task_low"]
            decision = flipped(decision)
        counts[decision] = counts.get(decision, 0) + 1
        counts["either better"] = counts["a better"] + counts["b better"]
        counts["covered"] += bool(row["new_task_low"] <= theta[k] <= row["new_task_high"])
        counts["observed"] += bool(row["new_task_low"] <= observed[k] <= row["new_task_high"])
    return counts


def one_task(*, datasets: int, items: int, gap: float, seed: int) -> dict:
    """Counts of each decision over ``datasets`` simulated tasks whose accuracies differ by
    exactly ``gap`` (a's 0.80, b's 0.80 - gap; 11% of items discordant on average)."""
    from poolkit.evaluation.metrics import METRICS
    from poolkit.evaluation.stats import compare

    # joint (a right, b right): 11, 10, 01, 00
    discordant = 0.11
    p10, p01 = (discordant + gap) / 2, (discordant - gap) / 2
    joint = np.array([0.80 - p10, p10, p01, 1 - 0.80 - p01])
    counts = {}
    for s in range(datasets):
        rng = np.random.default_rng([seed, s])
        y = rng.integers(0, 2, size=items)
        cell = rng.choice(4, size=items, p=joint)
        probs = {}
        for name, right in (("a", np.isin(cell, (0, 1))), ("b", np.isin(cell, (0, 2)))):
            p_true = np.where(right, 0.7, 0.3) + rng.uniform(-0.05, 0.05, size=items)
            p1 = np.where(y == 1, p_true, 1 - p_true)
            probs[name] = np.stack([1 - p1, p1], axis=1)[None]
        pairs = compare(probs, y, n_boot=1000, seed=s, rope=ROPE,
                        metrics={"accuracy": METRICS["accuracy"]}).pairs
        decision = pairs["decision"].iloc[0].replace(" (within ROPE)", "")
        if pairs["a"].iloc[0] == "b":  # ranked the other way round on this sample
            decision = {"a better": "b better", "b better": "a better"}.get(decision, decision)
        counts[decision] = counts.get(decision, 0) + 1
    return counts


def rate(k: int, n: int) -> str:
    from calibration import binomial_interval

    low, high = binomial_interval(k, n)
    return f"{k / n:.3f} [{low:.3f}, {high:.3f}]"


def across_rows(suites: int, se: float) -> list:
    rows = []
    for k in (4, 8):
        for tau in (0.0, 0.005, 0.01):
            for check, mu, what in (("(a) at +R", ROPE, "equivalent"),
                                    ("(a) at -R", -ROPE, "equivalent"),
                                    ("(b) at 0", 0.0, "equivalent"),
                                    ("(d) at 0", 0.0, "either better"),
                                    ("(d) at +3 points", 0.03, "a better")):
                found = across(suites=suites, k=k, mu=mu, tau=tau, se=se, seed=k * 1000 + len(rows))
                rows.append({"check": check, "tasks": k, "tau": tau, "mu": mu,
                             "decision": what, "suites": suites,
                             "rate [95% CI]": rate(found.get(what, 0), suites)})
            found = across(suites=suites, k=k, mu=0.02, tau=tau, se=se, seed=k * 1000 + len(rows))
            for what, said in (("covered", "its true difference"),
                               ("observed", "its measured difference")):
                rows.append({"check": f"(c) prediction covers a new task's {said.split()[1]}",
                             "tasks": k, "tau": tau, "mu": 0.02, "decision": "covered",
                             "suites": suites, "rate [95% CI]": rate(found[what], suites)})
    return rows


def task_rows(datasets: int, items: int) -> list:
    rows = []
    for check, gap, what in (("(a) at R", ROPE, "equivalent"), ("(b) at 0", 0.0, "equivalent"),
                             ("(d) at 0", 0.0, "a better")):
        found = one_task(datasets=datasets, items=items, gap=gap, seed=len(rows))
        hits = sum(v for d, v in found.items() if d == what or (what == "a better"
                                                                 and "better" in d))
        rows.append({"check": check, "items": items, "gap": gap,
                     "decision": what if what != "a better" else "either better",
                     "datasets": datasets, "rate [95% CI]": rate(hits, datasets)})
    return rows


def main():
    import pandas as pd
    from common import save

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", type=int, default=1000)
    parser.add_argument("--se", type=float, default=0.008,
                        help="each task's standard error of a - b (0.008: about 2,000 items)")
    parser.add_argument("--datasets", type=int, default=400)
    parser.add_argument("--items", type=int, default=10000)
    args = parser.parse_args()
    import poolkit.evaluation.across as pooled

    ranks = pooled.rank_tests
    pooled.rank_tests = lambda r, alpha: ranks(r, alpha, permutations=200)
    began = time.perf_counter()
    across_table = pd.DataFrame(across_rows(args.suites, args.se))
    seconds = time.perf_counter() - began
    save("decisions-across", across_table, [
        f"each suite: k tasks, theta_t ~ N(mu, tau^2), d_t ~ N(theta_t, {args.se}^2), the "
        f"verdict by poolkit.evaluation.across.verdict (one pair), ROPE {ROPE}, alpha {ALPHA}",
        "(a): rate of 'equivalent' with the true pooled difference exactly at the ROPE's edge "
        "(at most alpha); (b): the same at 0 (power); (c): share of suites whose 95% "
        "prediction interval covers a held-out task's true difference (k + 1 drawn, the "
        "verdict on k; its true difference, and the difference its own run measures, "
        "theta + N(0, se^2)); (d): at 0, rate of either 'better' (the false-positive rate), "
        "at +3 points, of 'a better' (power); within the ROPE or not",
        f"simulation took {seconds:.0f} s",
    ])
    began = time.perf_counter()
    task_table = pd.DataFrame(task_rows(args.datasets, args.items))
    seconds = time.perf_counter() - began
    save("decisions-one-task", task_table, [
        f"each dataset: {args.items} items, binary labels, a's accuracy 0.80 and b's 0.80 - "
        "gap exactly (11% of items discordant on average), poolkit.evaluation.stats.compare "
        f"(paired bootstrap, B = 1000, one split), ROPE {ROPE}, alpha {ALPHA}",
        "(a): rate of 'equivalent' at a gap of exactly R (at most alpha); (b): at 0 (power); "
        "(d): rate of either 'better' at 0 (the false-positive rate)",
        f"simulation took {seconds:.0f} s",
    ])


if __name__ == "__main__":
    main()
