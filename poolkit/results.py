"""Results tables: per pooler × seed, the summary over seeds, and their display cells."""

import json
from pathlib import Path

from .metrics import METRICS, PRIMARY


def summarize(results, failures: dict | None = None, pairs=None):
    """One row per feature set (pooler × layer), ranked by the primary metric's mean.

    Per metric: mean, std and a 95% Student-t interval over seeds
    (:func:`poolkit.stats.seed_interval`). ``group`` is the significance group
    from the paired tests in ``pairs`` (1 = best; see :data:`poolkit.stats.METHODS`).
    ``failures`` maps ids to ``(pooler, layer, reason)``; those get a row with
    ``status`` 'failed: <reason>'.
    """
    import pandas as pd

    from .stats import rank_groups, seed_interval

    rows = []
    for (pooler, layer), group in results.groupby(["pooler", "layer"], sort=False):
        row = {"pooler": pooler, "layer": layer, "plugin": group["plugin"].iloc[0],
               "dim": int(group["dim"].iloc[0]), "seeds": len(group)}
        for metric in METRICS:
            mean, std, low, high = seed_interval(group[metric].to_numpy(dtype=float))
            row.update({f"{metric}_mean": mean, f"{metric}_std": std,
                        f"{metric}_ci_low": low, f"{metric}_ci_high": high})
        row["status"] = "ok"
        rows.append(row)
    summary = pd.DataFrame(rows)
    if len(summary):
        primary = f"{PRIMARY}_mean"
        summary = summary.sort_values(primary, ascending=not METRICS[PRIMARY].higher_is_better,
                                      kind="stable")
        ids = summary["pooler"] + "@" + summary["layer"].astype(str)
        if pairs is not None and len(pairs):
            groups = rank_groups(dict(zip(ids, summary[primary])), pairs)
            summary.insert(summary.columns.get_loc("status"), "group", ids.map(groups))
        else:
            summary.insert(summary.columns.get_loc("status"), "group", 1)
    failed = [{"pooler": pooler, "layer": layer, "status": f"failed: {reason}"}
              for pooler, layer, reason in (failures or {}).values()]
    if failed:
        summary = pd.concat([summary, pd.DataFrame(failed)], ignore_index=True)
        # keep counts integers (a failed row has none) in summary.csv and exports
        counts = [c for c in ("dim", "seeds", "group") if c in summary]
        summary[counts] = summary[counts].astype("Int64")
    return summary.reset_index(drop=True)


def display_table(summary):
    """The summary as text cells: the primary metric as 'mean [95% interval]', the
    others as 'mean ± std', the best value per metric marked '*', and the
    significance group. The layer column is shown when layers differ."""
    import pandas as pd

    ok = summary[summary["status"] == "ok"]
    table = pd.DataFrame({"pooler": summary["pooler"]})
    if "layer" in summary and summary["layer"].astype(str).nunique() > 1:
        table["layer"] = summary["layer"].astype(str)
    if "dim" in summary:
        table["dim"] = summary["dim"].map(lambda d: "" if pd.isna(d) else str(int(d)))
    if "group" in summary:
        table["group"] = summary["group"].map(lambda g: "" if pd.isna(g) else str(int(g)))
    for metric, declared in METRICS.items():
        means = ok[f"{metric}_mean"] if len(ok) else pd.Series(dtype=float)
        best = means.max() if declared.higher_is_better else means.min()
        cells = []
        for _, row in summary.iterrows():
            if row["status"] != "ok":
                cells.append("")
                continue
            mean = row[f"{metric}_mean"]
            mark = " *" if len(ok) > 1 and mean == best else ""
            low, high = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
            if metric == PRIMARY and low is not None and not pd.isna(low):
                cells.append(f"{mean:.3f} [{low:.3f}, {high:.3f}]{mark}")
            else:
                cells.append(f"{mean:.3f} ± {row[f'{metric}_std']:.3f}{mark}")
        table[f"{PRIMARY} (95% CI)" if metric == PRIMARY else metric] = cells
    if (summary["status"] != "ok").any():
        table["status"] = summary["status"]
    return table


def display_pairs(pairs):
    """The paired tests as text cells: difference with its bootstrap interval,
    Holm-corrected p-values."""
    import pandas as pd

    return pd.DataFrame({
        "a": pairs["a"], "b": pairs["b"],
        "accuracy a - b [95% CI]": [f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for d, lo, hi in
                                    zip(pairs["diff"], pairs["diff_low"], pairs["diff_high"])],
        "p bootstrap (Holm)": pairs["p_bootstrap_holm"].map(_p_value),
        "p McNemar (Holm)": pairs["p_mcnemar_holm"].map(_p_value),
        "significant": pairs["significant"].map(lambda v: "yes" if v else "no"),
    })


def _p_value(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def predictions_table(dataset, probabilities: dict, sets: dict, seeds):
    """Each test item's prediction per feature set × seed, long format.

    Columns: pooler, layer, seed, file, row (1-based data row in that file),
    text, label, predicted, then ``p_<label>`` per label in ``labels.json``
    order (label id order).
    """
    import numpy as np
    import pandas as pd

    test = dataset.splits["test"]
    names = dataset.label_names
    frames = []
    for key, probs in probabilities.items():
        fs = sets[key]
        for seed, p in zip(seeds, probs):
            frame = pd.DataFrame({
                "pooler": fs.pooler_name, "layer": fs.layer, "seed": seed,
                "file": [dataset.files[i] for i in test], "row": dataset.rows[test],
                "text": [dataset.texts[i] for i in test],
                "label": [names[i] for i in dataset.labels[test]],
                "predicted": [names[i] for i in np.argmax(p, axis=1)],
            })
            for j, name in enumerate(names):
                frame[f"p_{name}"] = p[:, j]
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


#: The tables and records a run writes into its run directory.
RUN_FILES = ("results.csv", "summary.csv", "pairs.csv", "labels.json", "settings.json",
             "recipe.json", "predictions.csv")


def write_run_dir(out: Path, results, summary, label_names, settings: dict, *, pairs=None,
                  recipe: dict | None = None, predictions=None) -> None:
    """Write results.csv, summary.csv, pairs.csv, labels.json, settings.json,
    recipe.json (and predictions.csv when given) into the run directory ``out``
    (claimed by :meth:`~poolkit.runs.RunDirectory.claim`); files an earlier
    run left there and this one does not write (an old predictions.csv, plots)
    are removed."""
    from .runs import RunDirectory

    labels = {str(i): name for i, name in enumerate(label_names)}
    contents = {
        "results.csv": results.to_csv(index=False),
        "summary.csv": summary.to_csv(index=False),
        "pairs.csv": pairs.to_csv(index=False) if pairs is not None else None,
        "labels.json": json.dumps(labels, indent=2) + "\n",
        "settings.json": json.dumps(settings, indent=2, default=str) + "\n",
        "recipe.json": json.dumps(recipe, indent=2, default=str) + "\n" if recipe else None,
        "predictions.csv": predictions.to_csv(index=False) if predictions is not None else None,
    }
    RunDirectory(out).write({k: v for k, v in contents.items() if v is not None}, replace=True)
