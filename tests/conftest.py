"""Shared fixtures: a tiny random BERT written to disk, small labelled data files.

No network: the model is built from a ``BertConfig`` and a hand-written WordPiece
vocab, saved with ``save_pretrained`` and loaded back by path like any model.
"""

import functools
import importlib
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Never reach the Hugging Face Hub from the tests: every model is loaded by path.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Some machines (this project's among them) set PYTHONDONTWRITEBYTECODE, and then every
# test process compiled and assertion-rewrote every test module and poolkit itself from
# source: collection took 12 s, 6 s with the bytecode kept. Keep it (in the __pycache__
# folders git ignores), here and in the poolkit processes the tests start.
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None):
    sys.dont_write_bytecode = False

# Under pytest-xdist (`-n 2`) each worker gets its share of the cores, it and the
# processes its tests start: two workers at two threads each on two cores ran the
# fast loop in 100 s, one thread each in 54 s.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(
        1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

TESTS_DIR = Path(__file__).parent
PLUGINS_DIR = TESTS_DIR / "plugins"
BROKEN_PLUGINS_DIR = TESTS_DIR / "plugins_broken"
BUILTIN_POOLERS = ("cls", "bert_pooler", "mean", "max")
#: Every fixed single-layer pooler poolkit ships: the four above and the later ones.
FIXED_POOLERS = BUILTIN_POOLERS + ("mean_max", "mean_sqrt_len", "weighted_mean", "last_token")
#: Every pooler poolkit ships, in registration order (a run's default).
ALL_POOLERS = FIXED_POOLERS + ("first_last_avg", "attention")
#: Layer of each in the tiny 2-layer BERT: the last, or first_last_avg's own.
TINY_LAYER = {name: "1+2" if name == "first_last_avg" else "2" for name in ALL_POOLERS}

WORDS = (
    "good great fine bad awful poor movie film plot actor story fun dull boring "
    "loved hated the a an is was it this that and but not very really so"
).split()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder; nothing touches ~/.cache."""
    monkeypatch.setenv("POOLKIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Path to a 2-layer, hidden-32 random ``BertModel`` with its fast tokenizer."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ly", ".", ",", "!"]
    # A vocab dict, not vocab_file: under transformers 5 BertTokenizerFast(vocab_file=...)
    # saves a tokenizer holding only the special tokens (every word became [UNK]).
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    assert len(tokenizer) == len(vocab)
    tokenizer.save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")  # as BERT folders have it
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).eval().save_pretrained(path)
    return path


def make_rows(n=120, seed=0):
    """``n`` (text, label) rows where the label is learnable from the words."""
    rng = random.Random(seed)
    positive = ["good", "great", "fun", "loved", "fine"]
    negative = ["bad", "awful", "dull", "hated", "boring"]
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        cue = rng.choice(positive if label == "pos" else negative)
        filler = rng.choices(["the", "movie", "film", "plot", "story", "was", "very", "really"],
                             k=rng.randint(1, 12))
        rows.append((" ".join(filler[: len(filler) // 2] + [cue] + filler[len(filler) // 2 :]), label))
    return rows


def write_rows(path, n=120, seed=0):
    """A CSV at ``path`` of :func:`make_rows`' ``n`` rows ('text' and 'label' columns)."""
    import pandas as pd

    pd.DataFrame(make_rows(n, seed=seed), columns=["text", "label"]).to_csv(path, index=False)
    return path


@pytest.fixture
def small_csv(tmp_path):
    """A 120-row CSV with 'text' and 'label' columns, two balanced labels."""
    return write_rows(tmp_path / "small.csv")


@pytest.fixture(scope="session")
def hf_model(tiny_model_dir):
    """The tiny model loaded by Hugging Face itself: the independent reference."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(tiny_model_dir).eval()


@pytest.fixture(scope="session")
def tiny_encoder(tiny_model_dir):
    """The tiny model as poolkit loads it: what ``Pooler.setup`` receives."""
    from poolkit.encoding.model import load_encoder

    return load_encoder(str(tiny_model_dir))


def plugin_pooler(module_name):
    """The pooler that ``poolkit.plugins.<module_name>`` registers."""
    registered = []
    importlib.import_module(f"poolkit.plugins.{module_name}").register_poolers(
        register=registered.append)
    (pooler,) = registered
    return pooler


def count_forward(patcher):
    """A list growing by one input shape per real ``BertModel.forward`` call
    (``patcher``: pytest's ``monkeypatch`` or a ``MonkeyPatch.context()``)."""
    from transformers import BertModel

    calls = []
    original = BertModel.forward

    @functools.wraps(original)
    def counting_forward(self, *args, **kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        calls.append(tuple(input_ids.shape))
        return original(self, *args, **kwargs)

    patcher.setattr(BertModel, "forward", counting_forward)
    return calls


@pytest.fixture
def forward_calls(monkeypatch):
    """A list that grows by one input shape per real ``BertModel.forward`` call."""
    return count_forward(monkeypatch)


@pytest.fixture(scope="session")
def builtin_poolers(tiny_encoder):
    """``{name: pooler}`` for the built-ins as users get them, set up with the tiny model."""
    from poolkit.pooling.manager import collect_poolers, get_plugin_manager

    pm = get_plugin_manager()
    found = collect_poolers(pm)
    assert pm.load_errors == []
    out = {}
    for name in BUILTIN_POOLERS:
        pooler, plugin = found[name]
        assert plugin == f"poolkit.plugins.{name}"
        pooler.setup(tiny_encoder)
        out[name] = pooler
    return out


@pytest.fixture(scope="session")
def poolers(builtin_poolers):
    """``{name: pooler}`` for every fixed single-layer pooler (``FIXED_POOLERS``)."""
    return {**builtin_poolers,
            **{name: plugin_pooler(name) for name in FIXED_POOLERS if name not in builtin_poolers}}


@pytest.fixture(scope="session")
def hf_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def hf_forward(model, tokenizer, texts, max_length=None):
    """Hugging Face's own padded-batch forward pass: ``(output, attention_mask)``."""
    import torch

    batch = tokenizer(list(texts), padding=True, truncation=max_length is not None,
                      max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        output = model(**batch)
    return output, batch["attention_mask"]


def plugins_dir_with(tmp_path, *files, name="user-plugins"):
    """A fresh plugins folder holding copies of the given real plugin files."""
    folder = tmp_path / name
    folder.mkdir()
    for file in files:
        shutil.copy(file, folder / Path(file).name)
    return folder


def invoke(args):
    """``poolkit ARGS`` through click's CliRunner (``result.output`` has stdout and stderr)."""
    from click.testing import CliRunner

    from poolkit.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args])
    # A ClickException or sys.exit, never an unhandled exception.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def assert_clean_failure(result, *culprits, code=None):
    """The command failed cleanly: a non-zero exit (``code``, if given), no traceback, an
    error line (``Error: ...``, or a plugin's ``error: ...``), and each of ``culprits``
    named in what it printed."""
    assert result.exit_code != 0 if code is None else result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    assert re.search(r"^(Error|error): ", result.output, re.M), result.output
    for culprit in culprits:
        assert culprit in result.output, (culprit, result.output)


def one_error_line(result, *culprits) -> str:
    """The command failed with exactly one line, ``Error: ...``, and nothing else printed
    that is an error (naming each of ``culprits``); that line."""
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for culprit in culprits:
        assert culprit in errors[0], (culprit, errors[0])
    return errors[0]


def write_owned(folder, contents: dict, kind: str = "run"):
    """Write ``contents`` ({name: text}) into ``folder`` as poolkit writes a run's files
    (recorded in its marker), so a test can hand poolkit a folder of its own; returns it."""
    from poolkit.pipeline.runs import RunDirectory

    run = RunDirectory(folder)
    run.claim(subfolders=(), kind=kind)
    run.write(contents, replace=False)
    return Path(folder)


def run_command(data, model, out, *extra, poolers="mean,cls", seeds=1, epochs=2):
    """``poolkit run`` on ``data`` with ``model`` into ``out`` (quick heads), ``extra``
    options after."""
    return invoke(["run", "--data", data, "--model", model, "--poolers", poolers,
                   "--seeds", seeds, "--epochs", epochs, "--out", out, *extra])


def modules_after_help(args, modules, words):
    """Which of ``modules`` a fresh interpreter has imported after ``poolkit ARGS --help``
    (as the printed sorted list); the help must succeed and mention every one of ``words``."""
    code = ("import sys; from poolkit.cli import cli; from click.testing import CliRunner; "
            f"r = CliRunner().invoke(cli, {[*args, '--help']!r}); assert r.exit_code == 0, r.output; "
            f"assert all(w in r.output for w in {list(words)!r}), r.output; "
            f"print(sorted(m for m in {tuple(modules)!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()
