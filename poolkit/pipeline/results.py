"""Results tables: per pooler × seed, the summary over seeds, and their display cells."""

import json
from pathlib import Path

import numpy as np

from poolkit.encoding.tokenization import is_pairs
from poolkit.evaluation.decisions import rope_words
from poolkit.evaluation.metrics import METRICS, PRIMARY
from poolkit.evaluation.stats import rank_groups
from poolkit.pipeline.runs import RunDirectory
from poolkit.pooling.features import feature_id


def summarize(results, failures: dict | None = None, comparison=None, primary: str = PRIMARY,
              baseline: str | None = None):
    """One row per feature set (pooler × layer), ranked by the ``primary`` metric's mean.

    Per metric: the mean and std over seeds, and the 95% interval from
    ``comparison`` (a :class:`~poolkit.evaluation.stats.Comparison`: resampling the items
    and the seeds; NaN without one). ``group`` is the significance group from
    its paired tests (1 = best; see :data:`poolkit.evaluation.stats.METHODS`); with a
    ``baseline`` feature set, ``vs_baseline`` says instead whether each is
    significantly better or worse than it; ``decision`` is each one's decision against the
    best (or the baseline): better, worse (either within ROPE), equivalent, inconclusive
    (see :mod:`poolkit.evaluation.decisions`). ``failures`` maps ids to their rows'
    ``{"pooler", "layer", "encoder", ("model",) "reason"}``; those get a row with
    ``status`` 'failed: <reason>'. With a ``model`` column (several models), rows are
    per model × pooler × layer × encoder.
    """
    import pandas as pd

    rows = []
    if "encoder" not in results:
        results = results.assign(encoder="frozen")
    keys = (["model"] if "model" in results else []) + ["pooler", "layer", "encoder"]
    for values, group in results.groupby(keys, sort=False):
        named = dict(zip(keys, values))
        key = feature_id(named["pooler"], named["layer"], named["encoder"], named.get("model"))
        row = {**named, "plugin": group["plugin"].iloc[0],
               "dim": int(group["dim"].iloc[0]), "seeds": len(group)}
        for metric in METRICS:
            values = group[metric].to_numpy(dtype=float)
            low, high = (comparison.intervals.get(key, {}).get(metric, (np.nan, np.nan))
                         if comparison is not None else (np.nan, np.nan))
            row.update({f"{metric}_mean": float(np.nanmean(values)),
                        f"{metric}_std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                        f"{metric}_ci_low": low, f"{metric}_ci_high": high})
        row["status"] = "ok"
        rows.append(row)
    summary = pd.DataFrame(rows)
    if len(summary):
        summary = _ranked(summary, comparison, primary, baseline)
    failed = [{**{k: v for k, v in row.items() if k != "reason"},
               "status": f"failed: {row['reason']}"} for row in (failures or {}).values()]
    if failed:
        summary = pd.concat([summary, pd.DataFrame(failed)], ignore_index=True)
        # keep counts integers (a failed row has none) in summary.csv and exports
        counts = [c for c in ("dim", "seeds", "group") if c in summary]
        summary[counts] = summary[counts].astype("Int64")
    return summary.reset_index(drop=True)


def _ranked(summary, comparison, primary: str, baseline):
    """``summary`` sorted by the primary metric, with the significance ``group`` of each
    row (or, with a ``baseline``, ``vs_baseline``) before its ``status``."""
    import pandas as pd

    column = f"{primary}_mean"
    summary = summary.sort_values(column, ascending=not METRICS[primary].higher_is_better,
                                  kind="stable")
    ids = pd.Series([feature_id(r.pooler, r.layer, r.encoder, getattr(r, "model", None))
                     for r in summary.itertuples()], index=summary.index)
    pairs = comparison.pairs if comparison is not None else None
    at = summary.columns.get_loc("status")
    if baseline is not None:
        verdicts = {baseline: "baseline"}
        for a, significant, diff in zip(pairs["a"], pairs["significant"],
                                        pairs[f"{primary}_diff"]):
            better = diff > 0 if METRICS[primary].higher_is_better else diff < 0
            verdicts[a] = ("better" if better else "worse") if significant else "not different"
        summary.insert(at, "vs_baseline", ids.map(verdicts))
    elif pairs is not None and len(pairs):
        sign = 1 if METRICS[primary].higher_is_better else -1
        groups = rank_groups(dict(zip(ids, sign * summary[column])), pairs)
        summary.insert(at, "group", ids.map(groups))
    else:
        summary.insert(at, "group", 1)
    reference = baseline if baseline is not None else ids.iloc[0]
    summary.insert(at + 1, "decision", ids.map(_decisions(pairs, reference, baseline is None)))
    return summary


def _decisions(pairs, reference: str, best: bool) -> dict:
    """Each feature set's decision against ``reference`` (the best, or the baseline), from
    its row's side: better / worse (within ROPE) / equivalent / inconclusive."""
    said = {reference: "best" if best else "baseline"}
    if pairs is None or "decision" not in pairs:
        return said
    for a, b, decision in zip(pairs["a"], pairs["b"], pairs["decision"]):
        if reference not in (a, b) or a == b:
            continue
        other, side = (b, "b") if a == reference else (a, "a")
        if "better" in decision:  # "a better", "b better (within ROPE)": from other's side
            won = decision[0] == side
            said[other] = ("better" if won else "worse") + decision[len("a better"):]
        else:
            said[other] = decision
    return said


def mark_own_pooling(summary, own: dict):
    """``summary`` with an ``own_pooling`` column (after ``dim``) when ``own`` names a
    model's own pooler (``{model label or None: pooler}``): True on that model's rows of
    that pooler. Without one the summary is left as it was."""
    if not own or not len(summary):
        return summary
    models = summary["model"] if "model" in summary else [None] * len(summary)
    marks = [own.get(model) == pooler for model, pooler in zip(models, summary["pooler"])]
    summary = summary.copy()
    summary.insert(summary.columns.get_loc("dim") + 1, "own_pooling", marks)
    return summary


def display_table(summary, primary: str = PRIMARY):
    """The summary as text cells: the ``primary`` metric as 'mean [95% interval]',
    the others' means, the best value per metric marked '*', and the
    significance group (or the verdict against a baseline). The layer column is
    shown when layers differ."""
    import pandas as pd

    ok = summary[summary["status"] == "ok"]
    table = pd.DataFrame({"pooler": summary["pooler"]})
    if "own_pooling" in summary:  # the pooling the model was trained with
        table["pooler"] = [f"{p} (own)" if own in (True, "True") else p
                           for p, own in zip(summary["pooler"], summary["own_pooling"])]
    if "model" in summary:
        table.insert(0, "model", summary["model"])
    if "layer" in summary and summary["layer"].astype(str).nunique() > 1:
        table["layer"] = summary["layer"].astype(str)
    if "encoder" in summary and summary["encoder"].nunique() > 1:
        table["encoder"] = summary["encoder"]
    if "dim" in summary:
        table["dim"] = summary["dim"].map(lambda d: "" if pd.isna(d) else str(int(d)))
    if "group" in summary:
        table["group"] = summary["group"].map(lambda g: "" if pd.isna(g) else str(int(g)))
    if "vs_baseline" in summary:
        table["vs baseline"] = summary["vs_baseline"].fillna("")
    if "decision" in summary:
        table["decision"] = summary["decision"].fillna("")
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
            if metric == primary and low is not None and not pd.isna(low):
                cells.append(f"{mean:.3f} [{low:.3f}, {high:.3f}]{mark}")
            else:
                cells.append(f"{mean:.3f}{mark}")
        table[f"{primary} (95% CI)" if metric == primary else metric] = cells
    if (summary["status"] != "ok").any():
        table["status"] = summary["status"]
    return table


def compact_table(table, primary: str, width: int) -> tuple:
    """``(table, hidden)``: the columns of a :func:`display_table` that fit in
    ``width`` characters, and the names of those left out. The pooler, layer,
    group (or baseline verdict), decision, the ``primary`` metric and status always stay;
    the others join (F1, ROC-AUC, log-loss, MCC, dim, then the rest) while the
    table still fits, and keep their order."""
    def fits(columns):
        text = table[columns].to_string(index=False)
        return max(map(len, text.splitlines())) <= width

    always = {"model", "pooler", "layer", "encoder", "group", "vs baseline", "decision", "status",
              f"{primary} (95% CI)"}
    chosen = [c for c in table.columns if c in always]
    # the metrics that say most first: precision and recall are near F1 on balanced data
    first = ("f1_macro", "roc_auc", "log_loss", "mcc", "dim")
    for column in sorted(table.columns, key=lambda c: first.index(c) if c in first else 99):
        if column not in chosen and fits([c for c in table.columns
                                          if c in chosen or c == column]):
            chosen.append(column)
    kept = [c for c in table.columns if c in chosen]
    return table[kept], [c for c in table.columns if c not in chosen]


def frozen_vs_finetuned(summary, pairs, primary: str = PRIMARY):
    """Per pooler run both ways (``--finetune``): its ``primary`` metric with the
    encoder frozen and fine-tuned (means over seeds), the change with its 95%
    interval and Holm-corrected p from the paired tests, and its rank among the
    frozen and among the fine-tuned poolers. ``None`` without fine-tuned rows."""
    import pandas as pd

    if "encoder" not in summary:
        return None
    ok = summary[summary["status"] == "ok"]
    tuned = ok[ok["encoder"] == "finetuned"]
    if not len(tuned):
        return None
    sign = 1 if METRICS[primary].higher_is_better else -1
    def model(row):
        return getattr(row, "model", None)

    ranks = {}  # per model and encoder, among its poolers
    for _, rows in ok.groupby(["model", "encoder"] if "model" in ok else ["encoder"]):
        ordered = rows.sort_values(f"{primary}_mean", ascending=sign < 0, kind="stable")
        for rank, r in enumerate(ordered.itertuples(), start=1):
            ranks[feature_id(r.pooler, r.layer, r.encoder, model(r))] = rank
    by_pair = {(a, b): row for a, b, row in zip(pairs["a"], pairs["b"], pairs.itertuples())} \
        if pairs is not None else {}
    rows = []
    for row in tuned.itertuples():
        ft = feature_id(row.pooler, row.layer, "finetuned", model(row))
        frozen = ok[(ok["pooler"] == row.pooler) & (ok["encoder"] == "frozen")
                    & (ok["layer"].astype(str) == str(row.layer))]
        if "model" in ok:
            frozen = frozen[frozen["model"] == model(row)]
        if not len(frozen):
            continue
        fz = feature_id(row.pooler, row.layer, "frozen", model(row))
        pair, flip = by_pair.get((ft, fz)), 1
        if pair is None:
            pair, flip = by_pair.get((fz, ft)), -1
        change = getattr(row, f"{primary}_mean") - frozen[f"{primary}_mean"].iloc[0]
        interval, p = "", ""
        if pair is not None:
            low, high = sorted(flip * getattr(pair, f"{primary}_{end}") for end in ("low", "high"))
            interval, p = f"[{low:+.3f}, {high:+.3f}]", _p_value(getattr(pair, f"{primary}_p_holm"))
        rows.append({**({"model": model(row)} if "model" in ok else {}),
                     "pooler": row.pooler, "layer": row.layer,
                     "frozen": f"{frozen[f'{primary}_mean'].iloc[0]:.3f}",
                     "finetuned": f"{getattr(row, f'{primary}_mean'):.3f}",
                     "change [95% CI]": f"{change:+.3f} {interval}".strip(),
                     f"p {primary} (Holm)": p,
                     "rank frozen": ranks[fz], "rank finetuned": ranks[ft]})
    return pd.DataFrame(rows) if rows else None


def display_pairs(pairs, primary: str = PRIMARY):
    """The paired tests as text cells: each metric's difference a - b with its
    bootstrap interval, the primary metric's Holm-corrected p-values (bootstrap
    and, for accuracy, McNemar's), and whether the difference is significant."""
    import pandas as pd

    table = pd.DataFrame({"a": pairs["a"], "b": pairs["b"]})
    for metric in METRICS:
        table[f"{metric} a - b [95% CI]"] = [
            f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for d, lo, hi in
            zip(pairs[f"{metric}_diff"], pairs[f"{metric}_low"], pairs[f"{metric}_high"])]
    table[f"p {primary} (Holm)"] = pairs[f"{primary}_p_holm"].map(_p_value)
    table["p McNemar (Holm)"] = pairs["p_mcnemar_holm"].map(_p_value)
    table["significant"] = pairs["significant"].map(lambda v: "yes" if v else "no")
    return table


def _p_value(p: float) -> str:
    if p != p:  # NaN: the metric is undefined on these items
        return ""
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


def predictions_table(dataset, probabilities: dict, sets: dict, seeds):
    """Each scored item's prediction per feature set × seed, long format: the test
    items of a split, or every item out of fold under cross-fitting.

    Columns: pooler, layer, encoder, seed, fold (with several folds: the fold that held
    the item out), file, row (1-based data row in that file), text, label,
    predicted, then ``p_<label>`` per label in ``labels.json`` order (label id
    order). Pairs of texts: ``text`` and ``text_pair``.
    """
    import pandas as pd

    test = dataset.scored
    fold_of = np.empty(len(dataset.labels), dtype=np.int64)
    for number, fold in enumerate(dataset.folds):
        fold_of[fold["test"]] = number
    names = dataset.label_names
    frames = []
    for key, probs in probabilities.items():
        fs = sets[key]
        for seed, p in zip(seeds, probs):
            frame = pd.DataFrame({
                **({"model": fs.model} if fs.model is not None else {}),
                "pooler": fs.pooler_name, "layer": fs.layer, "encoder": fs.encoder, "seed": seed,
                **({"fold": fold_of[test]} if len(dataset.folds) > 1 else {}),
                "file": [dataset.files[i] for i in test], "row": dataset.rows[test],
                **texts_columns([dataset.texts[i] for i in test]),
                "label": [names[i] for i in dataset.labels[test]],
                "predicted": [names[i] for i in np.argmax(p, axis=1)],
            })
            for j, name in enumerate(names):
                frame[f"p_{name}"] = p[:, j]
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def texts_columns(texts: list) -> dict:
    """``{"text": ...}``, or for pairs of texts ``{"text": ..., "text_pair": ...}``."""
    if not is_pairs(texts):
        return {"text": texts}
    return {"text": [a for a, _ in texts], "text_pair": [b for _, b in texts]}


#: The tables and records a run writes into its run directory.
RUN_FILES = ("results.csv", "summary.csv", "pairs.csv", "labels.json", "settings.json",
             "recipe.json", "predictions.csv", "comparison.json")


def write_run_dir(out: Path, results, summary, label_names, settings: dict, *, pairs=None,
                  recipe: dict | None = None, predictions=None, comparison=None) -> None:
    """Write results.csv, summary.csv, pairs.csv, labels.json, settings.json,
    recipe.json (and predictions.csv when given) into the run directory ``out``
    (claimed by :meth:`~poolkit.pipeline.runs.RunDirectory.claim`); files an earlier
    run left there and this one does not write (an old predictions.csv, plots)
    are removed."""
    labels = {str(i): name for i, name in enumerate(label_names)}
    contents = {
        "results.csv": results.to_csv(index=False),
        "summary.csv": summary.to_csv(index=False),
        "pairs.csv": pairs.to_csv(index=False) if pairs is not None else None,
        "labels.json": json.dumps(labels, indent=2) + "\n",
        "settings.json": json.dumps(settings, indent=2, default=str) + "\n",
        "recipe.json": json.dumps(recipe, indent=2, default=str) + "\n" if recipe else None,
        "predictions.csv": predictions.to_csv(index=False) if predictions is not None else None,
        "comparison.json": comparison,
    }
    RunDirectory(out).write({k: v for k, v in contents.items() if v is not None}, replace=True)


#: The columns of each table in a run directory that hold names: read back as the
#: text written, whatever it looks like (a pooler ``001``, a label ``NA``, a model
#: ``1e3``). A layer is a name too ("6", "1+6").
SET_COLUMNS = ("model", "pooler", "layer", "encoder")
NAME_COLUMNS = {"results": (*SET_COLUMNS, "plugin", "status"),
                "summary": (*SET_COLUMNS, "plugin", "status", "vs_baseline"),
                "pairs": ("a", "b"),
                "predictions": (*SET_COLUMNS, "file", "text", "text_pair", "label",
                                "predicted")}


def read_table_back(path, names):
    """One of poolkit's own CSV tables as written: the ``names`` columns as text (an
    empty cell is ""), ``True``/``False`` columns as booleans, every other column as
    numbers (an empty cell is NaN); a column that is not all numbers stays text.
    Nothing is inferred from how a name looks."""
    import pandas as pd

    frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    for column in frame.columns:
        values = frame[column]
        if column in names:
            continue
        if len(values) and values.isin(["True", "False"]).all():
            frame[column] = values.eq("True")
            continue
        try:
            frame[column] = pd.to_numeric(values.astype(object).where(values.ne(""), np.nan))
        except (ValueError, TypeError):
            pass
    return frame


def verdict_sentences(summary, metric: str, rope: float) -> list:
    """The run's verdict in words, from its summary's ``decision`` column: the best feature
    set, what it is established to beat, what is practically equivalent to it (within
    ``±rope``) and what cannot be told apart from it yet; in a run with a baseline, each
    decision against it."""
    ok = summary[summary["status"].eq("ok")] if "status" in summary else summary
    if "decision" not in ok or not len(ok):
        return []
    ids = [feature_id(r.pooler, r.layer, r.encoder, getattr(r, "model", None))
           for r in ok.itertuples()]
    said = dict(zip(ids, ok["decision"]))
    reference = [k for k, d in said.items() if d in ("best", "baseline")]
    if not reference:
        return []
    first = reference[0]
    value = float(ok[f"{metric}_mean"].iloc[ids.index(first)])
    within = f"within {rope_words(metric, rope)}"

    def said_as(clauses) -> list:
        """Each clause ``(text with {}, decisions)`` whose decisions name any set, filled."""
        filled = []
        for text, decisions in clauses:
            chosen = [k for k, d in said.items() if d in decisions]
            if chosen:
                filled.append(text.format(_joined(chosen)))
        return filled

    if said[first] == "best":
        lines = [f"Best on this task: {first} ({metric} {value:.3f})."]
        parts = said_as([("it beats {}", ("worse",))]) or [
            "it is established to beat none of the others"]
        parts += said_as([("beats {} by less than the ROPE", ("worse (within ROPE)",)),
                          (f"is practically equivalent to {{}} ({within})", ("equivalent",)),
                          ("cannot yet be told apart from {}", ("inconclusive",))])
        sentence = _joined(parts)
        return lines + [sentence[0].upper() + sentence[1:] + "."]
    parts = said_as([("better: {}", ("better", "better (within ROPE)")),
                     ("worse: {}", ("worse", "worse (within ROPE)")),
                     (f"practically equivalent ({within}): {{}}", ("equivalent",)),
                     ("not yet told apart: {}", ("inconclusive",))])
    if not parts:  # the baseline alone finished
        return []
    return [f"Against the baseline {first} ({metric} {value:.3f}): {'; '.join(parts)}."]


def _joined(parts: list) -> str:
    return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
