"""Hugging Face ``datasets`` folders (``save_to_disk``) as --data and --test-data."""

import json

import pandas as pd
import pytest
from conftest import invoke, make_rows

from poolkit import PoolkitError
from poolkit.data.dataset import load_dataset

datasets = pytest.importorskip("datasets")


def save(frame, folder, class_names=None):
    """``frame`` as a datasets folder; the label column a ClassLabel when ``class_names``."""
    data = datasets.Dataset.from_pandas(frame, preserve_index=False)
    if class_names is not None:
        data = data.cast_column("label", datasets.ClassLabel(names=class_names))
    data.save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def default_frame():
    from poolkit.data.readers import load_default_examples

    texts, labels = load_default_examples()
    return pd.DataFrame({"text": texts, "label": labels})


@pytest.mark.slow
def test_the_default_data_as_a_datasets_folder_gives_the_csvs_results(
        default_frame, tiny_model_dir, tmp_path):
    csv = tmp_path / "rt.csv"
    default_frame.to_csv(csv, index=False)
    folder = save(default_frame, tmp_path / "rt-saved", class_names=["fresh", "rotten"])
    common = ["--model", tiny_model_dir, "--poolers", "cls,mean", "--seeds", "1"]
    from_csv = invoke(["run", "--data", csv, *common, "--out", tmp_path / "a"])
    from_folder = invoke(["run", "--data", folder, *common, "--out", tmp_path / "b"])
    assert from_csv.exit_code == 0 and from_folder.exit_code == 0, from_folder.output
    assert (tmp_path / "a" / "results.csv").read_bytes() == \
        (tmp_path / "b" / "results.csv").read_bytes()
    recipe = json.loads((tmp_path / "b" / "recipe.json").read_text())
    assert list(recipe["data_sha256"]) == [str(folder)]


def test_class_label_names_keep_their_declared_order(tmp_path):
    frame = pd.DataFrame(make_rows(60), columns=["text", "label"])
    folder = save(frame, tmp_path / "saved", class_names=["pos", "neg"])
    assert load_dataset(folder, folds=1).label_names == ["pos", "neg"]
    assert load_dataset(folder, folds=1, labels=["neg", "pos"]).label_names == ["neg", "pos"]
    plain = save(frame, tmp_path / "plain")  # string labels: sorted, as for files
    assert load_dataset(plain, folds=1).label_names == ["neg", "pos"]


def test_splits_of_a_dataset_dict(tmp_path):
    frame = pd.DataFrame(make_rows(120), columns=["text", "label"])
    both = datasets.DatasetDict({
        "train": datasets.Dataset.from_pandas(frame[:80], preserve_index=False),
        "test": datasets.Dataset.from_pandas(frame[80:], preserve_index=False)})
    both.save_to_disk(str(tmp_path / "dict"))
    dataset = load_dataset(f"{tmp_path / 'dict'}:train", test_data=f"{tmp_path / 'dict'}:test")
    assert len(dataset.splits["test"]) == 40
    assert dataset.texts[80:] == frame["text"][80:].tolist()
    with pytest.raises(PoolkitError, match="holds splits train, test; name one"):
        load_dataset(tmp_path / "dict")
    with pytest.raises(PoolkitError, match="no text column 'body'"):
        load_dataset(f"{tmp_path / 'dict'}:train", text_col="body")


def test_a_split_saved_empty_is_named_and_the_others_still_read(tmp_path):
    """datasets saves an empty split with no data file and cannot load such a folder
    back: on 711a80a even its non-empty ':train' failed ("IndexError: list index out
    of range"). Only the split asked for is read now."""
    frame = pd.DataFrame(make_rows(60), columns=["text", "label"])
    datasets.DatasetDict({
        "train": datasets.Dataset.from_pandas(frame, preserve_index=False),
        "test": datasets.Dataset.from_pandas(frame[:0], preserve_index=False),
    }).save_to_disk(str(tmp_path / "dict"))
    assert len(load_dataset(f"{tmp_path / 'dict'}:train", folds=2).texts) == 60
    with pytest.raises(PoolkitError, match="split 'test' of datasets folder .* could not be "
                                           r"read \(it holds no data file: a split saved"):
        load_dataset(f"{tmp_path / 'dict'}:train", test_data=f"{tmp_path / 'dict'}:test")
    with pytest.raises(PoolkitError, match="holds splits train, test; none is named "
                                           "'validation'; name one as"):
        load_dataset(f"{tmp_path / 'dict'}:validation")


def test_a_hub_dataset_name_out_of_reach_is_one_line(small_csv, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # as when the Hub cannot be reached
    result = invoke(["run", "--data", "some-org/some-dataset:train", "--model", tiny_model_dir])
    assert result.exit_code == 1
    assert "could not be loaded as a Hugging Face dataset (the Hugging Face Hub is out of " \
        "reach from here)" in result.output
    assert len(result.output.strip().splitlines()) == 1
