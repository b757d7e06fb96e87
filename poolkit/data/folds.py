"""Splits of the items: train/validation/test, cross-fitted folds, stratified subsets."""

import numpy as np

from poolkit.errors import PoolkitError


def split_indices(labels: np.ndarray, seed: int, validation: float, test: float, source: str):
    """Stratified, seeded split of ``range(len(labels))`` into train/validation/test.

    ``labels`` should be the label values (names), not ids: the split must not
    depend on the order ``--labels`` gives the ids.
    """
    from sklearn.model_selection import train_test_split

    everything = np.arange(len(labels))
    parts = {}
    rest = everything
    for name, fraction in (("test", test), ("validation", validation)):
        if fraction <= 0:
            parts[name] = np.empty(0, dtype=np.int64)
            continue
        size = fraction * len(labels) / len(rest)
        try:
            rest, held = train_test_split(
                rest, test_size=size, random_state=seed, stratify=labels[rest]
            )
        except ValueError as exc:
            raise PoolkitError(
                f"{source}: too few examples for a stratified {name} split "
                f"({len(labels)} rows, {len(np.unique(labels))} labels): {exc}"
            ) from None
        parts[name] = np.sort(held)
    parts["train"] = np.sort(rest)
    return parts


def cross_folds(labels: np.ndarray, k: int, seed: int, validation: float, source: str) -> list:
    """``k`` stratified, seeded folds over ``range(len(labels))``: fold ``f`` tests on
    its ``1/k`` of the items and trains on the rest, of which ``validation`` (a
    fraction of all items) is held out for early stopping.

    ``labels`` are label values (names), as for :func:`split_indices`.
    """
    from sklearn.model_selection import StratifiedKFold, train_test_split

    names, counts = np.unique(labels, return_counts=True)
    if counts.min() < k:
        raise PoolkitError(f"--folds {k}: label '{names[counts.argmin()]}' has only "
                           f"{counts.min()} item(s) in {source}; use at most --folds "
                           f"{max(counts.min(), 1)}")
    folds = []
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for rest, test in splitter.split(np.zeros(len(labels)), labels):
        fold = {"test": np.sort(test)}
        if validation > 0:
            try:
                rest, held = train_test_split(rest, test_size=validation * len(labels) / len(rest),
                                              random_state=seed, stratify=labels[rest])
            except ValueError as exc:
                raise PoolkitError(f"{source}: too few examples for a stratified validation "
                                   f"part in {k} folds: {exc}") from None
        else:
            held = np.empty(0, dtype=np.int64)
        fold["validation"], fold["train"] = np.sort(held), np.sort(rest)
        folds.append({name: fold[name] for name in ("train", "validation", "test")})
    return folds


def stratified_subset(rows: np.ndarray, labels: np.ndarray, size: int, seed: int,
                      option: str = "--max-train-texts") -> np.ndarray:
    """At most ``size`` of ``rows``, sorted, with the label proportions of ``rows``
    (``labels`` the label names of all items), drawn with ``seed``."""
    from sklearn.model_selection import train_test_split

    if len(rows) <= size:
        return rows
    try:
        kept, _ = train_test_split(rows, train_size=size, random_state=seed,
                                   stratify=labels[rows])
    except ValueError as exc:
        raise PoolkitError(f"{option} {size}: too few for a stratified subset of "
                           f"{len(np.unique(labels[rows]))} labels: {exc}") from None
    return np.sort(kept)
