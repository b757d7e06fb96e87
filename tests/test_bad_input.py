"""``poolkit run`` on bad input: one table, one case per way the input can be wrong.

Every failing case must exit non-zero with exactly one line starting with
``Error:`` that names the culprit (file, column, row, pooler, model or option),
never a traceback, and must fail before the encoder runs (no cache entry, no run
directory). A few inputs are only suspicious, not wrong: those runs succeed
(exit 0) and warn on stderr with a count.
"""

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from conftest import invoke, make_rows

USAGE = 2  # click's exit code for a bad option
FAILED = 1  # a PoolkitError shown as one line
OK = 0


@dataclass
class Case:
    """``make(tmp, models) -> args`` builds the bad input and returns the extra CLI args."""

    make: object
    exit_code: int = FAILED
    culprits: tuple = ()  # substrings of the one Error: line (failures)
    warnings: tuple = ()  # substrings of stderr (successes)
    early: bool = True  # fails before anything is written (no cache entry, no run dir)
    marks: tuple = field(default=())


def _rows(n=40, labels=("pos", "neg")):
    return [(text, labels[i % len(labels)]) for i, (text, _) in enumerate(make_rows(n))]


def _csv(path, rows=None, columns=("text", "label")):
    pd.DataFrame(_rows() if rows is None else rows, columns=list(columns)).to_csv(path, index=False)
    return path


def _gzip(path, content: bytes):
    import gzip

    path.write_bytes(gzip.compress(content))
    return path


def _text(path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _with(rows, **changes):
    """``rows`` with row ``rN`` (0-based N) set to ``(text, label)``; None keeps that part."""
    rows = list(rows)
    for index, (text, label) in {int(k[1:]): v for k, v in changes.items()}.items():
        old_text, old_label = rows[index]
        rows[index] = (old_text if text is None else text, old_label if label is None else label)
    return rows


def _unreadable(tmp):
    path = _csv(tmp / "locked.csv")
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything: nothing to test here
        path.chmod(0o644)
        pytest.skip("running with privileges that read a chmod 000 file")
    return ["--data", path]


def _truncation(tmp):
    """Data whose texts are partly longer than 8 tokens (the count: a test below)."""
    return ["--data", _csv(tmp / "long.csv"), "--max-length", "8"]


def _not_a_file_out(tmp):
    blocker = _text(tmp / "somefile.txt", "I am a file\n")
    return ["--data", _csv(tmp / "d.csv"), "--out", blocker / "run"]


CASES = {
    "missing file": Case(lambda tmp, m: ["--data", tmp / "nowhere.csv"],
                         culprits=("nowhere.csv", "does not exist")),
    "data is a directory": Case(lambda tmp, m: ["--data", tmp],
                                culprits=("directory", "datasets folder")),
    "unreadable file": Case(lambda tmp, m: _unreadable(tmp), exit_code=USAGE,
                            culprits=("--data", "locked.csv", "not readable")),
    "unknown format extension": Case(lambda tmp, m: ["--data", _csv(tmp / "d.xlsx")],
                                     culprits=("d.xlsx", "unknown format", ".csv")),
    "wrong text column": Case(lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--text-col", "body"],
                              culprits=("d.csv", "text column 'body'", "--text-col")),
    "wrong label column": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--label-col", "sentiment"],
        culprits=("d.csv", "label column 'sentiment'", "--label-col")),
    "a csv header naming the text column twice": Case(
        lambda tmp, m: ["--data", _text(tmp / "twice.csv", "text,label,text\n" + "".join(
            f"{t},{l},other {t}\n" for t, l in _rows()))],
        culprits=("twice.csv", "column 'text' 2 times", "columns 1, 3")),
    "a tsv header naming the label column twice": Case(
        lambda tmp, m: ["--data", _text(tmp / "twice.tsv", "label\ttext\tlabel\n" + "".join(
            f"{l}\t{t}\t{l}\n" for t, l in _rows()))],
        culprits=("twice.tsv", "column 'label' 2 times", "columns 1, 3")),
    "a gzipped csv header naming a column twice": Case(
        lambda tmp, m: ["--data", _gzip(tmp / "twice.csv.gz", ("text,label,label\n" + "".join(
            f"{t},{l},{l}\n" for t, l in _rows())).encode())],
        culprits=("twice.csv.gz", "column 'label' 2 times", "columns 2, 3")),
    "a jsonl object naming a key twice": Case(
        lambda tmp, m: ["--data", _text(tmp / "twice.jsonl", '{"text": "good", "label": "pos"}\n'
                                        '{"text": "bad", "label": "neg", "text": "fun"}\n')],
        culprits=("twice.jsonl", "line 2", "key 'text' twice")),
    "--text-col equal to --label-col": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--text-col", "label"],
        culprits=("d.csv", "--label-col and --text-col both name column 'label'")),
    "--label-col equal to --text-col": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--label-col", "text"],
        culprits=("d.csv", "--label-col and --text-col both name column 'text'")),
    "--text-pair-col equal to --label-col": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv", [(t, t, l) for t, l in _rows()],
                                       ("text", "other", "label")),
                        "--text-pair-col", "label"],
        culprits=("d.csv", "--label-col and --text-pair-col both name column 'label'")),
    "a column asked for that differs only in case": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv", columns=("Text", "label"))],
        culprits=("d.csv", "no text column 'text'", "column 'Text' differs only in case",
                  "--text-col 'Text'")),
    "a column asked for that differs only in surrounding spaces": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv", columns=("text", " label "))],
        culprits=("d.csv", "no label column 'label'", "column ' label ' differs only",
                  "--label-col ' label '")),
    "empty file (0 bytes)": Case(lambda tmp, m: ["--data", _text(tmp / "zero.csv", b"")],
                                 culprits=("zero.csv", "empty")),
    "header only": Case(lambda tmp, m: ["--data", _text(tmp / "header.csv", "text,label\n")],
                        culprits=("header.csv", "no rows")),
    "ragged csv row": Case(
        lambda tmp, m: ["--data", _text(tmp / "ragged.csv", "text,label\ngood,pos\nbad,neg,x\n")],
        culprits=("ragged.csv", "line 3")),
    "malformed jsonl": Case(
        lambda tmp, m: ["--data", _text(tmp / "d.jsonl",
                                        '{"text": "good", "label": "pos"}\n{"te\n')],
        culprits=("d.jsonl", "jsonl")),
    "whitespace-only texts, --empty-texts error": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv", _with(_rows(), r3=("   ", None),
                                                             r9=("\t ", None))),
                        "--empty-texts", "error"],
        culprits=("d.csv", "column 'text'", "2 empty", "row 4", "--empty-texts")),
    "whitespace-only texts are skipped by default": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv", _with(_rows(), r3=("   ", None),
                                                             r9=("\t ", None)))],
        exit_code=OK, warnings=("warning:", "d.csv", "skipped 2 empty or whitespace-only",
                                "row 4")),
    "missing labels": Case(
        lambda tmp, m: ["--data", _text(tmp / "d.csv", "text,label\ngood,pos\nbad,neg\n"
                                                     "fun,pos\ndull,\nawful,neg\nfine,\n")],
        culprits=("d.csv", "column 'label'", "2 missing", "row 4")),
    "single label": Case(lambda tmp, m: ["--data", _csv(tmp / "d.csv", _rows(labels=("pos",)))],
                         culprits=("d.csv", "column 'label'", "single label", "pos")),
    "test label unseen in training": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--test-data",
                        _csv(tmp / "t.csv", _with(_rows(10), r6=(None, "meh")))],
        culprits=("t.csv", "'meh'", "row 7")),
    "test label unseen in training, after a skipped empty text": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--test-data",
                        _csv(tmp / "t.csv", _with(_rows(10), r1=("  ", None), r6=(None, "meh")))],
        culprits=("t.csv", "'meh'", "row 7")),
    "too few examples for the split": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv", _rows(3)), "--folds", "1"],
        culprits=("d.csv", "too few examples", "3 rows", "2 labels")),
    **{f"--folds {value}": Case(lambda tmp, m, v=value: ["--data", _csv(tmp / "d.csv"),
                                                         "--folds", v],
                                culprits=("--folds", value, "1 (one split)"))
       for value in ("0", "-2")},
    "--folds above the smallest label's count": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv", _rows(9)), "--folds", "5"],
        culprits=("--folds 5", "label 'neg' has only 4 item(s)", "d.csv", "at most --folds 4")),
    "--folds with --test-data": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--test-data", _csv(tmp / "t.csv"),
                        "--folds", "3"],
        culprits=("--folds 3", "--test-data")),
    "--protocol senteval with --folds": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--protocol", "senteval", "--folds", "3"],
        culprits=("--protocol senteval", "10", "--folds")),
    "--baseline naming no pooler of the run": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--baseline", "nope"],
        culprits=("--baseline nope", "mean@2")),
    "not UTF-8": Case(
        lambda tmp, m: ["--data", _text(tmp / "latin.csv", "text,label\ncafé,pos\nthé,neg\n"
                                        .encode("latin-1"))],
        culprits=("latin.csv", "utf-8", "line 2", "b'\\xe9'", "--encoding")),
    "not UTF-8, gzipped": Case(
        lambda tmp, m: ["--data", _gzip(tmp / "latin.csv.gz", "text,label\ngood,pos\nthé,neg\n"
                                        .encode("latin-1"))],
        culprits=("latin.csv.gz", "utf-8", "line 3")),
    "unknown --encoding": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--encoding", "klingon-8"],
        culprits=("--encoding klingon-8", "unknown encoding")),
    "a TSV saved as .csv": Case(
        lambda tmp, m: ["--data", _text(tmp / "tabs.csv", "text\tlabel\na, b\tpos\nc\tneg\n")],
        culprits=("tabs.csv", "tab-separated", ".tsv")),
    "a TSV saved as .csv that parses as one column": Case(
        lambda tmp, m: ["--data", _text(tmp / "tabs1.csv", "text\tlabel\nab\tpos\nc\tneg\n")],
        culprits=("tabs1.csv", "tab-separated", ".tsv")),
    "texts longer than --max-length": Case(lambda tmp, m: _truncation(tmp), exit_code=OK,
                                           warnings=("warning:", "texts are longer than 8 tokens",
                                                     "truncated")),
    "unknown pooler": Case(lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--poolers", "mean,nope"],
                           culprits=("unknown pooler 'nope'", "mean", "poolkit plugins")),
    "model folder that does not exist": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--model", tmp / "no-such-model"],
        culprits=("model folder not found", "no-such-model")),
    "relative model folder that does not exist": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--model", "./models/bert-base-uncased"],
        culprits=("model folder not found", "./models/bert-base-uncased")),
    "empty model folder": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--model", _mkdir(tmp / "empty-model")],
        culprits=("could not load model", "empty-model")),
    "model folder without weights": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--model", m["no_weights"]],
        culprits=("could not load model", "no-weights"), early=False),
    "encoder-decoder model": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--model", m["bart"]],
        culprits=("tiny-bart", "is an encoder-decoder model")),
    "an attention implementation the architecture lacks": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--model", m["mpnet"],
                        "--attn-implementation", "sdpa"],
        culprits=("tiny-mpnet", "--attn-implementation sdpa", "'auto'"), early=False),
    "--max-length above the model's limit": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--max-length", "999"],
        culprits=("--max-length 999", "64")),
    "--seeds 0": Case(lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--seeds", "0"],
                      exit_code=USAGE, culprits=("--seeds", "0")),
    "--out inside a regular file": Case(lambda tmp, m: _not_a_file_out(tmp),
                                        culprits=("somefile.txt", "--out")),
    **{f"--lr {value}": Case(lambda tmp, m, v=value: ["--data", _csv(tmp / "d.csv"), "--lr", v],
                             culprits=("--lr", value, "above 0"))
       for value in ("nan", "inf", "-1", "0")},
    **{f"--encoder-lr {value}": Case(
        lambda tmp, m, v=value: ["--data", _csv(tmp / "d.csv"), "--finetune", "--encoder-lr", v],
        culprits=("--encoder-lr", value, "above 0")) for value in ("nan", "inf", "-1", "0")},
    "--dropout nan": Case(lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--dropout", "nan"],
                          culprits=("--dropout", "nan")),
    "--labels lists a label the data lacks": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--labels", "neg,pos,zzz"],
        culprits=("--labels", "zzz", "neg, pos")),
    "--split-seed -1": Case(lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--split-seed", "-1"],
                            exit_code=USAGE, culprits=("--split-seed", "-1")),
    "--seeds 1000000": Case(lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--seeds", "1000000"],
                            exit_code=USAGE, culprits=("--seeds", "1000000")),
    **{f"--pooler-timeout {value}": Case(
        lambda tmp, m, v=value: ["--data", _csv(tmp / "d.csv"), "--pooler-timeout", v],
        culprits=("--pooler-timeout", value)) for value in ("0", "nan", "-5")},
    "--device bogus": Case(lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--device", "bogus"],
                           culprits=("--device", "bogus", "cpu")),
    "--device cuda without a GPU": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--device", "cuda"],
        culprits=("--device cuda", "no CUDA GPU")),
    "--device cuda:7 beyond the GPUs": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--device", "cuda:7"],
        culprits=("--device cuda:7",)),
    "--cache-dir inside a regular file": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--cache-dir",
                        _text(tmp / "blocker", "x") / "cache"],
        culprits=("cannot write cache directory", "blocker", "--cache-dir")),
    "Parquet labels that are lists": Case(
        lambda tmp, m: ["--data", _parquet(tmp / "d.parquet", label=[["pos"], ["neg"]] * 20)],
        culprits=("d.parquet", "column 'label'", "list", "row 1")),
    "--out is a regular file": Case(
        lambda tmp, m: ["--data", _csv(tmp / "d.csv"), "--out", _text(tmp / "taken.txt", "x")],
        exit_code=USAGE, culprits=("--out", "taken.txt")),
}


def _parquet(path, label):
    texts = [text for text, _ in _rows()]
    pd.DataFrame({"text": texts, "label": label}).to_parquet(path)
    return path


def _mkdir(path):
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_model_dir):
    """Model folders that must be refused: an encoder-decoder BART, a BERT without weights,
    and an MPNet (no SDPA kernel) to be asked for SDPA."""
    import torch
    from transformers import BartConfig, BartModel, MPNetConfig, MPNetModel

    root = tmp_path_factory.mktemp("bad-models")
    tokenizer_files = [p for p in tiny_model_dir.iterdir()
                       if p.name.startswith(("tokenizer", "vocab"))]
    vocab = len((tiny_model_dir / "vocab.txt").read_text().split())
    folders = {}
    for key, name, model in (
            ("bart", "tiny-bart", lambda: BartModel(BartConfig(
                vocab_size=vocab, d_model=32, encoder_layers=1, decoder_layers=1,
                encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=37,
                decoder_ffn_dim=37, max_position_embeddings=64))),
            ("mpnet", "tiny-mpnet", lambda: MPNetModel(MPNetConfig(
                vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=37, max_position_embeddings=80)))):
        folder = root / name
        folder.mkdir()
        for file in tokenizer_files:
            shutil.copy(file, folder / file.name)
        torch.manual_seed(0)
        model().eval().save_pretrained(folder)
        folders[key] = folder
    no_weights = root / "no-weights"
    shutil.copytree(tiny_model_dir, no_weights)
    for file in no_weights.glob("*.safetensors"):
        file.unlink()
    folders["no_weights"] = no_weights
    return folders


def _cache_entries(root: Path):
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def _has_gpu():
    import torch

    return torch.cuda.is_available()


_GPU = pytest.mark.skipif(_has_gpu(), reason="this machine has a GPU")
CASES["--device cuda without a GPU"].marks = (_GPU,)


@pytest.mark.parametrize("name", [pytest.param(n, marks=c.marks) for n, c in CASES.items()])
def test_run_bad_input(name, tiny_model_dir, models, tmp_path):
    case = CASES[name]
    work = tmp_path / "work"
    work.mkdir()
    out = tmp_path / "run"
    extra = [str(a) for a in case.make(work, models)]
    result = invoke(["run", "--model", tiny_model_dir, "--seeds", 1, "--epochs", 1,
                     "--poolers", "mean", "--out", out, *extra])
    output = result.output
    assert "Traceback" not in output, output
    assert result.exit_code == case.exit_code, output
    cache = Path(os.environ["POOLKIT_CACHE_DIR"])
    if case.exit_code == OK:
        for text in case.warnings:
            assert text in result.stderr, (text, result.stderr)
        assert not [line for line in output.splitlines() if line.startswith("Error:")]
        assert (out / "results.csv").is_file()
        return
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    for culprit in case.culprits:
        assert culprit in errors[0], (culprit, errors[0])
    # The message is one line: nothing (not even a blank line) follows it.
    assert output.endswith(errors[0] + "\n"), repr(output)
    if case.early:
        assert _cache_entries(cache) == [], "failed after the encoder had started"
        assert not out.exists()
    else:
        assert not [p for p in cache.glob("*") if (p / "meta.json").exists()]


def test_skipped_texts_are_left_out_of_the_split(tiny_model_dir, tmp_path):
    """The skip warning's count matches what the run used: 40 rows minus 2 skipped."""
    import json

    data = _csv(tmp_path / "d.csv", _with(_rows(), r3=("   ", None), r9=("", None)))
    out = tmp_path / "run"
    result = invoke(["run", "--data", data, "--model", tiny_model_dir, "--seeds", 1,
                     "--epochs", 1, "--poolers", "cls", "--out", out])
    assert result.exit_code == 0, result.output
    assert "skipped 2 empty or whitespace-only text(s) in column 'text', first at row 4" \
        in result.stderr
    sizes = json.loads((out / "settings.json").read_text())["split_sizes"]
    assert sum(sizes.values()) == 38


def test_truncation_warning_counts_the_long_texts(tiny_model_dir, hf_tokenizer, tmp_path):
    """'N of M texts ... truncated' with N counted independently by the HF tokenizer."""
    data = _csv(tmp_path / "long.csv")
    texts = pd.read_csv(data)["text"].tolist()
    longer = sum(len(hf_tokenizer(t)["input_ids"]) > 8 for t in texts)
    assert 0 < longer < len(texts)  # the data has both kinds
    result = invoke(["run", "--data", data, "--model", tiny_model_dir, "--seeds", 1,
                     "--epochs", 1, "--poolers", "cls", "--max-length", 8,
                     "--out", tmp_path / "run"])
    assert result.exit_code == 0, result.output
    assert (f"warning: {longer} of {len(texts)} texts are longer than 8 tokens and were "
            "truncated") in result.stderr


@pytest.mark.parametrize("name, path", [
    ("bert-base-uncased", False), ("sentence-transformers/all-MiniLM-L6-v2", False),
    ("./models/bert", True), ("../bert", True), ("/models/bert", True), ("~/bert", True),
    ("models/bert/base", True), ("models/", True), (".", True)])
def test_a_model_name_that_can_only_be_a_folder_is_checked_before_transformers(name, path):
    from poolkit.encoding.model import _looks_like_path

    assert _looks_like_path(name) is path


def test_counting_long_texts_leaves_transformers_quiet(tiny_model_dir):
    """transformers' own "Token indices sequence length is longer than the specified
    maximum" is not printed: poolkit truncates, counts and warns itself."""
    import logging

    from poolkit.encoding.model import load_encoder
    from poolkit.encoding.tokenization import tokenize

    class Recorder(logging.Handler):
        messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    encoder = load_encoder(str(tiny_model_dir), max_length=8)
    encoder.tokenizer.model_max_length = 8  # the limit transformers warns about
    recorder, logger = Recorder(), logging.getLogger("transformers")
    logger.addHandler(recorder)
    try:
        _, truncated = tokenize(encoder, ["good fun " * 20, "fun"])
    finally:
        logger.removeHandler(recorder)
    assert truncated == 1
    assert not [m for m in recorder.messages if "Token indices sequence length" in m]


def test_unwritable_out_fails_before_encoding(tiny_model_dir, tmp_path):
    blocker = _text(tmp_path / "somefile.txt", "I am a file\n")
    cache = tmp_path / "explicit-cache"
    result = invoke(["run", "--data", _csv(tmp_path / "d.csv"), "--model", tiny_model_dir,
                     "--seeds", 1, "--epochs", 1, "--out", blocker / "run", "--cache-dir", cache])
    assert result.exit_code == FAILED, result.output
    assert "cannot write run directory" in result.output and "somefile.txt" in result.output
    assert not cache.exists() or not any(cache.iterdir())
    assert blocker.read_text() == "I am a file\n"


def _poolkit(*args, cwd):
    env = dict(os.environ)
    env.pop("PYTEST_CURRENT_TEST", None)  # the CLI as a user runs it
    return subprocess.run([sys.executable, "-m", "poolkit", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_debug_shows_the_traceback(tmp_path):
    done = _poolkit("--debug", "run", "--data", "missing.csv", cwd=tmp_path)
    assert done.returncode != 0
    assert "Traceback (most recent call last)" in done.stderr
    assert "PoolkitError" in done.stderr and "missing.csv" in done.stderr

    plain = _poolkit("run", "--data", "missing.csv", cwd=tmp_path)
    assert plain.returncode == FAILED
    assert "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines() == [
        "Error: data file 'missing.csv' does not exist"]


def _no_space(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_under_out_is_one_line_and_leaves_no_temp_files(tiny_model_dir, tmp_path,
                                                                    monkeypatch):
    """The disk fills while a head is saved: one line naming the run directory, and
    no half-written temp file stays behind."""
    import builtins

    real_open = builtins.open

    class FillingFile:
        """A real file whose writes fail once a few bytes are in, as on a full disk."""

        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            self.handle.write(data[:10])
            _no_space()

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def filling_open(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        name = os.path.basename(str(path))
        temporary = ".npy" in name and ".tmp" in name  # a head's probabilities, being saved
        return FillingFile(handle) if temporary and "w" in mode else handle

    monkeypatch.setattr(builtins, "open", filling_open)
    out = tmp_path / "run"
    result = invoke(["run", "--data", _csv(tmp_path / "d.csv"), "--model", tiny_model_dir,
                     "--poolers", "mean", "--seeds", 1, "--epochs", 1, "--out", out])
    assert result.exit_code == FAILED, result.output
    (error,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert f"cannot write run directory '{out}': No space left on device" in error
    assert not [p for p in out.rglob("*") if ".tmp" in p.name], sorted(out.rglob("*"))


def test_a_full_disk_under_the_cache_is_one_line_and_frees_the_partial_entry(
        tiny_model_dir, tmp_path, monkeypatch):
    import poolkit.encoding.cache

    real_write = poolkit.encoding.cache.CacheWriter.write
    calls = []

    def write_until_full(self, batch, states):
        calls.append(1)
        if len(calls) == 2:
            _no_space()
        return real_write(self, batch, states)

    monkeypatch.setattr(poolkit.encoding.cache.CacheWriter, "write", write_until_full)
    cache = tmp_path / "cache"
    data = _csv(tmp_path / "d.csv", _rows(400))  # several encoder batches
    result = invoke(["run", "--data", data, "--model", tiny_model_dir,
                     "--poolers", "mean", "--seeds", 1, "--epochs", 1, "--out", tmp_path / "run",
                     "--cache-dir", cache])
    assert result.exit_code == FAILED, result.output
    (error,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert f"cannot write cache directory '{cache}': No space left on device" in error
    assert len(calls) == 2
    assert list(cache.iterdir()) == []  # the partial entry is gone


def test_a_hub_model_name_out_of_reach_is_one_line_naming_the_cause(small_csv, monkeypatch):
    """No network (offline mode, as poolkit sets it when the Hub does not answer): one line
    that says the Hub is out of reach and the model not cached, not a minute of retries."""
    from poolkit.encoding.model import offline_unless_hub_reachable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert offline_unless_hub_reachable("some-org/no-such-model")
    assert not offline_unless_hub_reachable(str(small_csv))  # a local path is never the Hub
    result = invoke(["run", "--data", small_csv, "--model", "some-org/no-such-model"])
    assert result.exit_code == 1
    assert "the Hugging Face Hub is out of reach from here and it is not in the local " \
        "Hugging Face cache" in result.output
    assert "Retry" not in result.output
