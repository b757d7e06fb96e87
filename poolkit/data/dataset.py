"""A run's data as one :class:`Dataset`: its texts, label ids and folds (`load_dataset`)."""

from dataclasses import dataclass

import numpy as np

from poolkit.data.folds import cross_folds, split_indices, stratified_subset
from poolkit.data.labels import encode_labels, label_names_for, relabel
from poolkit.data.readers import DEFAULT_DATASET_NAME, load_default_examples, read_examples
from poolkit.encoding.tokenization import is_pairs
from poolkit.errors import PoolkitError


@dataclass
class Dataset:
    """Texts with integer labels and the folds they are split into.

    ``label_names[i]`` is the label with id ``i``: the ``i``-th output column of
    every head and every probability column. Each fold is a dict of
    ``"train"`` / ``"validation"`` / ``"test"`` sorted int64 index arrays; the
    folds' test parts do not overlap, and together they are the items scored
    (:attr:`scored`): all of them under cross-fitting, the test split otherwise.
    """

    #: each item's text, or with ``--text-pair-col`` its ``(text, text_pair)``
    texts: list
    labels: np.ndarray  # (N,) int64 label ids
    label_names: list
    folds: list
    source: str
    #: (N,) 1-based data row of each text in the file it came from (header not counted)
    rows: np.ndarray = None
    #: (N,) that file's name ("data" file, or the --test-data file for test texts)
    files: list = None

    @property
    def pairs(self) -> bool:
        """Whether each item is a pair of texts."""
        return is_pairs(self.texts)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def splits(self) -> dict:
        """The one fold of a single split (not cross-fitted)."""
        if len(self.folds) != 1:
            raise ValueError(f"a cross-fitted dataset has {len(self.folds)} folds, not one split")
        return self.folds[0]

    @property
    def scored(self) -> np.ndarray:
        """The items with a prediction per head, sorted: the folds' test parts together."""
        return np.sort(np.concatenate([fold["test"] for fold in self.folds]))


def load_dataset(data=None, text_col: str = "text", label_col: str = "label", test_data=None,
                 labels=None, split_seed: int = 0, validation_size: float = 0.1,
                 test_size: float = 0.1, empty_texts: str = "skip", folds: int = 1, log=None,
                 encoding: str = "utf-8", max_train_texts: int | None = None,
                 label_pattern: str | None = None, max_texts: int | None = None,
                 text_pair_col: str | None = None) -> Dataset:
    """Load ``data`` (or the embedded default) into a :class:`Dataset`.

    Label ids are the sorted unique labels (or ``labels`` in its order), so shuffling the
    file never changes which id a label gets. ``folds`` 1: one train/validation/test split
    (``test_size`` of the items tested); ``K`` > 1: ``K``-fold cross-fitting, every item
    tested once (see :func:`cross_folds`). With ``test_data`` the test split is that file
    and ``data`` is split into train/validation. ``max_train_texts`` caps each fold's train
    part with a stratified, seeded subset (validation and test parts are kept whole).
    ``label_pattern`` (a regular expression) derives each label from its cell: the first
    group of its first match (the whole match without a group); rows whose label does not
    match are left out, with a count through ``log``. ``max_texts`` keeps a stratified
    subset of ``data``'s rows (drawn with ``split_seed``) before any split.
    ``text_pair_col``: each item is a pair ``(text, text_pair)`` of the two columns.
    """
    _check_split_options(folds, test_data, validation_size, test_size, empty_texts, data,
                         text_pair_col)
    if data is None:
        texts, raw = load_default_examples()
        source = DEFAULT_DATASET_NAME
    else:
        texts, raw = read_examples(data, text_col, label_col, empty_texts, log, encoding,
                                   text_pair_col)
        source = f"data file '{data}'"
    if label_pattern is not None:
        texts, raw = relabel(texts, raw, label_pattern, f"{source}, column '{label_col}'", log)
    names = _label_names(raw, labels, source, label_col)
    ids = encode_labels(raw, names, source)
    rows = _rows(raw)
    by_name = np.asarray(names, dtype=object)[ids].astype(str)  # ids depend on --labels order
    if max_texts is not None and len(texts) > max_texts:
        kept = stratified_subset(np.arange(len(texts)), by_name, max_texts, split_seed,
                                 option="--max-texts")
        texts, ids, rows, by_name = [texts[i] for i in kept], ids[kept], rows[kept], by_name[kept]
        _say(log, f"--max-texts {max_texts}: a stratified subset of {len(kept)} of the "
                  f"{len(raw)} rows of {source}")
    files = [str(data) if data is not None else DEFAULT_DATASET_NAME] * len(texts)
    if folds > 1:
        fold_list = cross_folds(by_name, folds, split_seed, validation_size, source)
    elif test_data is None:
        fold_list = [split_indices(by_name, split_seed, validation_size, test_size, source)]
    else:
        test = _test_file(test_data, text_col, label_col, empty_texts, log, encoding,
                          text_pair_col, label_pattern, names)
        splits = split_indices(by_name, split_seed, validation_size, 0.0, source)
        splits["test"] = np.arange(len(texts), len(texts) + len(test[0]))
        texts, ids = texts + test[0], np.concatenate([ids, test[1]])
        rows = np.concatenate([rows, test[2]])
        files += [str(test_data)] * len(test[0])
        fold_list = [splits]
    if max_train_texts is not None:
        fold_list = [{**fold, "train": stratified_subset(fold["train"], by_name, max_train_texts,
                                                         split_seed)} for fold in fold_list]
    return Dataset(texts=texts, labels=ids, label_names=names, folds=fold_list, source=source,
                   rows=rows, files=files)


def _say(log, message: str) -> None:
    if log:
        log(message)


def _check_split_options(folds, test_data, validation_size, test_size, empty_texts, data,
                         text_pair_col) -> None:
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 1:
        raise PoolkitError(f"--folds {folds}: give 1 (one split) or a number of folds >= 2")
    if folds > 1 and test_data is not None:
        raise PoolkitError(f"--folds {folds} cross-fits one data file; with --test-data the "
                           "test items are that file's (leave --folds out)")
    for name, value in (("validation_size", validation_size), ("test_size", test_size)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise PoolkitError(f"{name}={value!r}: give a fraction from 0 up to 1")
    if validation_size + test_size >= 1:
        raise PoolkitError(f"validation_size + test_size = {validation_size + test_size:g} "
                           "leaves no training data; keep their sum below 1")
    if empty_texts not in ("skip", "error"):
        raise PoolkitError(f"--empty-texts {empty_texts!r}: use skip or error")
    if data is None and text_pair_col is not None:
        raise PoolkitError(f"--text-pair-col {text_pair_col}: the default data are single "
                           "texts; give --data with a pair column")


def _label_names(raw, labels, source: str, label_col: str) -> list:
    """The label names in id order: ``labels`` as given, a datasets ClassLabel's declared
    order (of the labels present), else sorted; at least two of them."""
    declared = getattr(raw, "attrs", {}).get("label_names")
    if labels is None and declared is not None:  # ClassLabel order, for the labels present
        present = set(map(str, raw))
        labels = [name for name in declared if name in present]
    names = label_names_for(raw, labels)
    if len(set(map(str, raw))) < 2:
        raise PoolkitError(
            f"{source}: column '{label_col}' has a single label ({names[0]}); "
            "a classifier needs at least two"
        )
    return names


def _test_file(test_data, text_col, label_col, empty_texts, log, encoding, text_pair_col,
               label_pattern, names) -> tuple:
    """``(texts, label ids, rows)`` of ``--test-data``, its labels in the data's ids."""
    texts, raw = read_examples(test_data, text_col, label_col, empty_texts, log, encoding,
                               text_pair_col)
    if label_pattern is not None:
        texts, raw = relabel(texts, raw, label_pattern,
                             f"test file '{test_data}', column '{label_col}'", log)
    return texts, encode_labels(raw, names, f"test file '{test_data}'"), _rows(raw)


def _rows(raw) -> np.ndarray:
    """1-based data rows: a Series keeps its file rows as its index."""
    if hasattr(raw, "iloc"):  # a Series
        return np.asarray(raw.index, dtype=np.int64) + 1
    return np.arange(1, len(raw) + 1)
