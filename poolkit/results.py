"""Results tables: per pooler × seed, the summary over seeds, display and export."""

import json
import os
from pathlib import Path

from .errors import PoolkitError
from .metrics import METRICS

EXPORT_FORMATS = ("csv", "md", "latex", "json", "html")


def summarize(results, failures: dict | None = None):
    """One row per pooler: mean and std over seeds of every metric, ranked by accuracy.

    Poolers in ``failures`` get a row with ``status`` 'failed: <reason>'.
    """
    import pandas as pd

    rows = []
    for pooler, group in results.groupby("pooler", sort=False):
        row = {"pooler": pooler, "plugin": group["plugin"].iloc[0], "dim": int(group["dim"].iloc[0]),
               "seeds": len(group)}
        for metric in METRICS:
            row[f"{metric}_mean"] = group[metric].mean()
            row[f"{metric}_std"] = group[metric].std(ddof=1) if len(group) > 1 else 0.0
        row["status"] = "ok"
        rows.append(row)
    summary = pd.DataFrame(rows)
    if len(summary):
        summary = summary.sort_values("accuracy_mean", ascending=False, kind="stable")
    failed = [{"pooler": name, "status": f"failed: {reason}"} for name, reason in (failures or {}).items()]
    if failed:
        summary = pd.concat([summary, pd.DataFrame(failed)], ignore_index=True)
        # keep counts integers (a failed row has none) in summary.csv and exports
        counts = [c for c in ("dim", "seeds") if c in summary]
        summary[counts] = summary[counts].astype("Int64")
    return summary.reset_index(drop=True)


def display_table(summary):
    """The summary as text cells: 'mean ± std', the best value per metric marked '*'."""
    import pandas as pd

    ok = summary[summary["status"] == "ok"]
    table = pd.DataFrame({"pooler": summary["pooler"]})
    if "dim" in summary:
        table["dim"] = summary["dim"].map(lambda d: "" if pd.isna(d) else str(int(d)))
    for metric, higher_better in METRICS.items():
        means = ok[f"{metric}_mean"] if len(ok) else pd.Series(dtype=float)
        best = means.max() if higher_better else means.min()
        cells = []
        for _, row in summary.iterrows():
            if row["status"] != "ok":
                cells.append("")
                continue
            mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
            mark = " *" if len(ok) > 1 and mean == best else ""
            cells.append(f"{mean:.3f} ± {std:.3f}{mark}")
        table[metric] = cells
    if (summary["status"] != "ok").any():
        table["status"] = summary["status"]
    return table


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file and rename: never half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_run_dir(out: Path, results, summary, label_names, settings: dict) -> None:
    """Write results.csv, summary.csv, labels.json and settings.json into ``out``."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "results.csv", results.to_csv(index=False))
        write_text_atomic(out / "summary.csv", summary.to_csv(index=False))
        labels = {str(i): name for i, name in enumerate(label_names)}
        write_text_atomic(out / "labels.json", json.dumps(labels, indent=2) + "\n")
        write_text_atomic(out / "settings.json", json.dumps(settings, indent=2, default=str) + "\n")
    except OSError as exc:
        raise PoolkitError(f"cannot write run directory '{out}': {exc.strerror or exc}") from None


def export_run(run_dir, fmt: str, table: str = "summary") -> str:
    """``RUN_DIR``'s summary (or per-seed results) as csv, md, latex, json or html text.

    csv and json keep the numbers; md, latex and html show 'mean ± std' cells.
    """
    import pandas as pd

    if fmt not in EXPORT_FORMATS:
        raise PoolkitError(f"unknown format '{fmt}'; use one of {', '.join(EXPORT_FORMATS)}")
    path = Path(run_dir) / f"{table}.csv"
    if not path.is_file():
        raise PoolkitError(f"'{run_dir}' is not a poolkit run directory (no {table}.csv)")
    frame = pd.read_csv(path)
    if table == "summary" and fmt in ("md", "latex", "html"):
        frame = display_table(frame)
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "json":
        return frame.to_json(orient="records", indent=2) + "\n"
    if fmt == "md":
        return frame.to_markdown(index=False) + "\n"
    if fmt == "latex":
        frame = frame.rename(columns=_latex_escape).map(
            lambda v: _latex_escape(v).replace("±", r"$\pm$") if isinstance(v, str) else v
        )
        return frame.to_latex(index=False, float_format="%.4f", escape=False)
    return frame.to_html(index=False, float_format="%.4f") + "\n"


def _latex_escape(text: str) -> str:
    text = text.replace("\\", "\x00")
    for char in "&%$#_{}":
        text = text.replace(char, "\\" + char)
    for char, command in (("\x00", "textbackslash"), ("~", "textasciitilde"), ("^", "textasciicircum")):
        text = text.replace(char, f"\\{command}{{}}")
    return text
