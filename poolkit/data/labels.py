"""Label ids: label names in a deterministic order, and labels derived by a pattern."""

import re

import numpy as np

from poolkit.errors import PoolkitError

_INTEGER = re.compile(r"[+-]?[0-9]+")


def _label_order(name: str):
    """Sort key for label names: integers by value ("2" before "10"), else as text."""
    return (0, int(name), name) if _INTEGER.fullmatch(name) else (1, 0, name)


def label_names_for(values, order=None) -> list:
    """Label names in id order: the distinct values sorted (integers by value, others
    as text), or ``order`` when given. Labels are compared as text, exactly:
    ``01`` and ``1`` are two labels."""
    names = sorted(dict.fromkeys(str(v) for v in values), key=_label_order)
    if order is None:
        return names
    order = [str(v) for v in order]
    if len(set(order)) != len(order):
        raise PoolkitError(f"--labels lists a label twice: {','.join(order)}")
    unknown = [n for n in names if n not in order]
    if unknown:
        raise PoolkitError(
            f"--labels does not list label(s) found in the data: {', '.join(unknown)}"
        )
    absent = [n for n in order if n not in names]
    if absent:
        raise PoolkitError(
            f"--labels lists label(s) that the data does not have: {', '.join(absent)} "
            f"(the data's labels: {', '.join(names)})"
        )
    return order


def encode_labels(values, names, source: str) -> np.ndarray:
    """Label ids of ``values`` (a list, or a Series indexed by 0-based file row)."""
    index = {name: i for i, name in enumerate(names)}
    ids = []
    rows = values.items() if hasattr(values, "items") else enumerate(values)
    for row, value in rows:
        key = str(value)
        if key not in index:
            raise PoolkitError(
                f"{source}: label '{key}' at row {row + 1} never appears in the training data"
            )
        ids.append(index[key])
    return np.asarray(ids, dtype=np.int64)


def relabel(texts: list, raw, pattern: str, source: str, log=None) -> tuple:
    """``(texts, raw)`` with each label replaced by what ``pattern`` finds in it (its
    first group, or the whole match), the rows it finds nothing in left out."""
    import pandas as pd

    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise PoolkitError(f"--label-pattern {pattern!r} is not a regular expression: "
                           f"{exc}") from None
    if not hasattr(raw, "index"):  # the default data's labels: a list
        raw = pd.Series(list(raw), dtype=object)
    kept, labels = [], []
    for position, value in enumerate(raw.tolist()):
        found = compiled.search(str(value))
        label = (found.group(1) if compiled.groups else found.group(0)) if found else None
        if label:
            kept.append(position)
            labels.append(label)
    if not kept:
        raise PoolkitError(f"{source}: --label-pattern {pattern!r} matches no label "
                           f"(e.g. {str(raw.iloc[0])!r})")
    if len(kept) < len(raw) and log:
        log(f"note: {source}: --label-pattern {pattern!r} left out {len(raw) - len(kept)} of "
            f"{len(raw)} rows whose label it does not match")
    relabelled = pd.Series(labels, index=raw.index[kept], dtype=object)
    return [texts[i] for i in kept], relabelled
