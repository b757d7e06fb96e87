"""Interrupted work is resumed, never redone and never trusted half-done.

a. ``poolkit run`` killed (SIGKILL at random points, Ctrl-C once) and re-run
   gives the same results.csv as an uninterrupted run, and re-uses the cache
   when the killed run had finished it.
b. An encoding interrupted half-way resumes from its last complete batch.
c. Re-running with more seeds trains only the new seeds; editing a plugin's
   source retrains its heads only.
"""

import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
from conftest import BUILTIN_POOLERS, PLUGINS_DIR, invoke, write_rows

import poolkit
import poolkit.encoding.encode
import poolkit.heads.linear
from poolkit.encoding.model import load_encoder
from poolkit.heads.base import HeadConfig

# A pooler that sleeps while pooling (when SLOW_POOLER_SECONDS is set), so that a
# run spends a while after its cache is complete and before its heads are saved.
SLOW_PLUGIN = '''\
"""A slow pooler: 2 x the [CLS] state, after sleeping SLOW_POOLER_SECONDS per call."""
import os
import time

from poolkit import Pooler, hookimpl


class SlowPooler(Pooler):
    name = "slow"

    def pool(self, hidden, mask):
        for _ in range(int(float(os.environ.get("SLOW_POOLER_SECONDS", "0")) / 0.05)):
            time.sleep(0.05)
        return hidden[:, 0] * 2


@hookimpl
def register_poolers(register):
    register(SlowPooler())
'''

# (signal, the stderr line that starts the clock, seconds after it). Random
# SIGKILLs are timed from "labels:" (the imports, which take several seconds,
# are done and the run's own work begins): model loading, encoding, pooling,
# training and writing all lie in the next few seconds.
KILL_SEEDS = (1, 2)  # on this machine: before and after the cache is complete
SCENARIOS = {
    **{f"SIGKILL-seed{seed}": (signal.SIGKILL, "labels:", random.Random(seed).uniform(0.3, 4.0))
       for seed in KILL_SEEDS},
    "SIGINT-while-pooling": (signal.SIGINT, "encoded ", 0.3),
}


def _command(data, model, out, plugins):
    return ["run", "--data", str(data), "--model", str(model), "--out", str(out), "--seeds", "2",
            "--epochs", "5", "--plugins-dir", str(plugins)]


def _complete_entries(cache: Path):
    if not cache.exists():
        return []
    return sorted(p for p in cache.iterdir() if (p / "meta.json").is_file())


def _interrupt(command, cache: Path, sig, trigger: str, delay: float, log: Path):
    """Run ``python -m poolkit COMMAND`` and send ``sig`` ``delay`` s after ``trigger`` appears."""
    env = dict(os.environ, POOLKIT_CACHE_DIR=str(cache), SLOW_POOLER_SECONDS="1.0")
    env.pop("PYTEST_CURRENT_TEST", None)
    with open(log.with_suffix(".stdout"), "w") as stdout:
        process = subprocess.Popen([sys.executable, "-m", "poolkit", *command], env=env,
                                   stdout=stdout, stderr=subprocess.PIPE, text=True)
        watchdog = threading.Timer(120, process.kill)  # never hang the suite
        watchdog.start()
        lines, timers = [], [watchdog]
        for line in process.stderr:
            lines.append(line)
            if trigger in line and len(timers) == 1:
                timer = threading.Timer(delay, process.send_signal, [sig])
                timer.start()
                timers.append(timer)
        process.wait(timeout=120)
        for timer in timers:
            timer.cancel()
    log.write_text("".join(lines))
    return process.returncode, "".join(lines)


@pytest.fixture(scope="module")
def interrupted_runs(tmp_path_factory, tiny_model_dir):
    """Every scenario's interrupted subprocess, all at once (each with its own cache and out)."""
    root = tmp_path_factory.mktemp("killed")
    data = root / "small.csv"
    write_rows(data)
    plugins = root / "slow-plugins"
    plugins.mkdir()
    (plugins / "slow.py").write_text(SLOW_PLUGIN)
    runs = {}
    threads = []
    for name, (sig, trigger, delay) in SCENARIOS.items():
        folder = root / name
        folder.mkdir()
        run = dict(cache=folder / "cache", out=folder / "run", sig=sig, delay=delay,
                   command=_command(data, tiny_model_dir, folder / "run", plugins))

        def go(run=run, folder=folder, trigger=trigger):
            try:
                run["returncode"], run["stderr"] = _interrupt(
                    run["command"], run["cache"], run["sig"], trigger, run["delay"],
                    folder / "stderr.log")
                run["cache_was_complete"] = bool(_complete_entries(run["cache"]))
                results = run["out"] / "results.csv"
                run["results_after_kill"] = pd.read_csv(results) if results.exists() else None
            except Exception as exc:  # reported by the scenario's test
                run["error"] = repr(exc)

        threads.append(threading.Thread(target=go))
        runs[name] = run
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return dict(runs=runs, data=data, plugins=plugins, root=root)


@pytest.fixture(scope="module")
def reference(interrupted_runs, tiny_model_dir):
    """An uninterrupted run of the same command: a fresh run directory and a fresh cache."""
    root = interrupted_runs["root"] / "reference"
    out = root / "run"
    command = _command(interrupted_runs["data"], tiny_model_dir, out, interrupted_runs["plugins"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POOLKIT_CACHE_DIR", str(root / "cache"))
        result = invoke(command)
    assert result.exit_code == 0, result.output
    (entry,) = _complete_entries(root / "cache")
    return dict(results=pd.read_csv(out / "results.csv"), entry=entry, command=command)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_killed_run_resumes_to_the_uninterrupted_result(interrupted_runs, reference, scenario,
                                                        tmp_path, monkeypatch):
    run = interrupted_runs["runs"][scenario]
    assert "error" not in run, run["error"]
    finished_anyway = run["returncode"] == 0  # the signal came after the run ended
    if run["sig"] == signal.SIGKILL:
        assert run["returncode"] in (0, -signal.SIGKILL), run["stderr"]
    else:  # Ctrl-C: one line that says how to resume, exit 130, no traceback
        assert run["returncode"] in (0, 130), run["stderr"]
        assert "Traceback" not in run["stderr"], run["stderr"]
        if not finished_anyway:
            last = run["stderr"].rstrip().splitlines()[-1]
            assert last.startswith("Error: interrupted:"), run["stderr"]
            assert "run the same command again to resume" in last, last
            assert run["cache_was_complete"], "SIGINT was meant to land after encoding"
    if run["results_after_kill"] is not None:  # written atomically: whole or absent
        pd.testing.assert_frame_equal(run["results_after_kill"], reference["results"])

    monkeypatch.setenv("POOLKIT_CACHE_DIR", str(run["cache"]))
    again = invoke(run["command"])  # the same command, to completion
    assert again.exit_code == 0, again.output
    settings = json.loads((run["out"] / "settings.json").read_text())
    assert settings["encoder_ran"] is (not run["cache_was_complete"]), (
        scenario, run["delay"], run["stderr"])
    results = pd.read_csv(run["out"] / "results.csv")
    pd.testing.assert_frame_equal(results, reference["results"], check_exact=True)

    # The cache holds one complete entry (no partial left), equal to a fresh one.
    assert sorted(p.name for p in run["cache"].iterdir()) == [reference["entry"].name]
    assert (run["cache"] / reference["entry"].name / "tokens.bin").read_bytes() == (
        reference["entry"] / "tokens.bin").read_bytes()

    # An uninterrupted run of the same command in that same cache: a fresh run
    # directory, a cache hit, the same table.
    fresh_out = tmp_path / "fresh-out"
    command = [*run["command"]]
    command[command.index("--out") + 1] = str(fresh_out)
    uninterrupted = invoke(command)
    assert uninterrupted.exit_code == 0, uninterrupted.output
    assert json.loads((fresh_out / "settings.json").read_text())["encoder_ran"] is False
    pd.testing.assert_frame_equal(pd.read_csv(fresh_out / "results.csv"), results,
                                  check_exact=True)


# -- b. encoding interrupted half-way ------------------------------------------------------

WORDS = "the movie was really very good but the plot was dull and the actor awful".split()
RESUME_TEXTS = [" ".join(WORDS[: 1 + (i * 7) % len(WORDS)]) for i in range(20)]


@pytest.mark.parametrize("every, interrupt_at", [(1, 6), (4, 7)])
def test_interrupted_encoding_resumes_from_the_last_complete_batch(
        tiny_model_dir, tmp_path, monkeypatch, every, interrupt_at):
    """KeyboardInterrupt in encoder batch ``interrupt_at``: the batches before it are kept
    (at every checkpoint and by the interrupt handler) and never encoded again."""
    from transformers import BertModel

    monkeypatch.setattr(poolkit.encoding.encode, "CHECKPOINT_EVERY", every)
    encoder = load_encoder(str(tiny_model_dir))
    batches = -(-len(RESUME_TEXTS) // 2)
    original = BertModel.forward
    calls = []

    @functools.wraps(original)
    def spy(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BertModel, "forward", spy)
    root = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        poolkit.encoding.encode.encode_to_cache(encoder, RESUME_TEXTS, root, max_texts=2)
    assert [p.name.endswith(".partial") for p in root.iterdir()] == [True]

    done = interrupt_at - 1  # batches finished before the interrupt
    calls.clear()
    interrupt_at = None  # the spy only counts from here on
    messages = []
    resumed, ran = poolkit.encoding.encode.encode_to_cache(encoder, RESUME_TEXTS, root, max_texts=2,
                                                   log=messages.append)
    assert ran
    assert len(calls) == batches - done, "finished batches were encoded again"
    assert (f"resuming an interrupted encoding: {batches - done} of {batches} batches left"
            in messages)
    assert [p.name for p in root.iterdir()] == [resumed.path.name]

    fresh, _ = poolkit.encoding.encode.encode_to_cache(encoder, RESUME_TEXTS, tmp_path / "fresh",
                                               max_texts=2)
    assert resumed.path.name == fresh.path.name
    assert (resumed.path / "tokens.bin").read_bytes() == (fresh.path / "tokens.bin").read_bytes()
    assert resumed.starts.tolist() == fresh.starts.tolist()
    assert resumed.lengths.tolist() == fresh.lengths.tolist()


def test_a_second_encoding_of_the_same_texts_meanwhile_does_not_break_the_first(
        tiny_model_dir, tmp_path, monkeypatch):
    """Two runs over the same data and model started together (e.g. with different
    poolers) share a cache key. Simulated in one process: while the first encoding is
    at its third batch, a second one runs to the end."""
    from transformers import BertModel

    encoder = load_encoder(str(tiny_model_dir))
    root = tmp_path / "cache"
    original = BertModel.forward
    calls = []
    second = []

    @functools.wraps(original)
    def spy(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            monkeypatch.setattr(BertModel, "forward", original)
            second.append(poolkit.encoding.encode.encode_to_cache(encoder, RESUME_TEXTS, root,
                                                          max_texts=2))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BertModel, "forward", spy)
    first, _ = poolkit.encoding.encode.encode_to_cache(encoder, RESUME_TEXTS, root, max_texts=2)
    (other, ran), = second
    assert ran
    fresh, _ = poolkit.encoding.encode.encode_to_cache(encoder, RESUME_TEXTS, tmp_path / "fresh",
                                               max_texts=2)
    for entry in (first, other):
        assert (entry.path / "tokens.bin").read_bytes() == (
            fresh.path / "tokens.bin").read_bytes()
    assert [p.name for p in root.iterdir()] == [fresh.path.name]


# -- c. finished heads are reused ----------------------------------------------------------

@pytest.fixture
def trained(monkeypatch):
    """Records ``(sorted pooler names, seeds)`` of every real ``train_heads`` call."""
    calls = []
    real = poolkit.heads.linear.train_heads

    @functools.wraps(real)
    def spy(features, task, seeds, *args, **kwargs):
        # feature sets are "pooler@layer"; these runs use the last layer only
        calls.append((sorted(key.rpartition("@")[0] for key in features), list(seeds)))
        return real(features, task, seeds, *args, **kwargs)

    # LinearHeads looks train_heads up in its module when it trains.
    monkeypatch.setattr(poolkit.heads.linear, "train_heads", spy)
    return calls


def _api_run(data, model, out, **kwargs):
    kwargs.setdefault("head", HeadConfig(max_epochs=5))
    kwargs.setdefault("poolers", list(BUILTIN_POOLERS))  # fixed poolers: train_heads trains them
    kwargs.setdefault("folds", 1)  # one split: one train_heads call per group of seeds
    return poolkit.run(data, model=str(model), out=out, **kwargs).results


@pytest.mark.slow
def test_more_seeds_trains_only_the_new_seed(small_csv, tiny_model_dir, tmp_path, trained):
    out = tmp_path / "run"
    first = _api_run(small_csv, tiny_model_dir, out, seeds=2)
    everyone = sorted(first["pooler"].unique())
    assert trained == [(everyone, [0, 1])]

    trained.clear()
    more = _api_run(small_csv, tiny_model_dir, out, seeds=3)
    assert trained == [(everyone, [2])], "finished heads were trained again"
    old = more[more["seed"] < 2].reset_index(drop=True)
    pd.testing.assert_frame_equal(old, first.reset_index(drop=True), check_exact=True)

    trained.clear()
    same = _api_run(small_csv, tiny_model_dir, out, seeds=3)
    assert trained == []
    pd.testing.assert_frame_equal(same, more, check_exact=True)

    # The resumed table equals one trained in a single go.
    trained.clear()
    scratch = _api_run(small_csv, tiny_model_dir, tmp_path / "scratch", seeds=3)
    assert trained == [(everyone, [0, 1, 2])]
    pd.testing.assert_frame_equal(more, scratch, check_exact=True)
    assert (out / "results.csv").read_bytes() == (tmp_path / "scratch" / "results.csv").read_bytes()


@pytest.mark.slow
def test_editing_a_plugin_retrains_only_its_heads(small_csv, tiny_model_dir, tmp_path, trained):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    shutil.copy(PLUGINS_DIR / "first_last.py", plugins / "first_last.py")
    out = tmp_path / "run"
    kwargs = dict(poolers=["first_last", "mean"], seeds=2, plugins_dir=plugins)
    before = _api_run(small_csv, tiny_model_dir, out, **kwargs)
    assert trained == [(["first_last", "mean"], [0, 1])]

    trained.clear()
    _api_run(small_csv, tiny_model_dir, out, **kwargs)
    assert trained == []  # nothing changed: everything reused

    source = plugins / "first_last.py"
    source.write_text(source.read_text() + "\n# edited: the heads of this plugin are stale\n")
    trained.clear()
    after = _api_run(small_csv, tiny_model_dir, out, **kwargs)
    assert trained == [(["first_last"], [0, 1])]
    # Only a comment changed, so the retrained heads give the same numbers.
    pd.testing.assert_frame_equal(after, before, check_exact=True)

    # A real change of behaviour is picked up too (the saved rows are not served).
    source.write_text(source.read_text().replace(
        "torch.cat([hidden[:, 0], hidden[rows, last]], dim=-1)",
        "torch.cat([hidden[rows, last], hidden[rows, last]], dim=-1)"))
    trained.clear()
    changed = _api_run(small_csv, tiny_model_dir, out, **kwargs)
    assert trained == [(["first_last"], [0, 1])]
    mean = lambda frame: frame[frame["pooler"] == "mean"].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(mean(changed), mean(before), check_exact=True)


@pytest.mark.slow
def test_resuming_with_more_seeds_is_byte_identical_to_a_fresh_run(small_csv, tiny_model_dir,
                                                                   tmp_path):
    """``--seeds 1`` then ``--seeds 2`` into one run directory gives the results.csv of a
    fresh ``--seeds 2`` run: a head's result depends on its features and seed alone,
    not on which seeds trained beside it."""
    def command(out, seeds):
        return ["run", "--data", small_csv, "--model", tiny_model_dir, "--seeds", seeds,
                "--epochs", 8, "--out", out, "--poolers", "mean,max,mean_max,cls,last_token"]

    resumed = tmp_path / "resumed"
    assert invoke(command(resumed, 1)).exit_code == 0
    second = invoke(command(resumed, 2))
    assert second.exit_code == 0, second.output
    assert "reusing 25 finished heads" in second.stderr  # 5 poolers x 5 folds x seed 0
    fresh = tmp_path / "fresh"
    assert invoke(command(fresh, 2)).exit_code == 0
    assert (resumed / "results.csv").read_bytes() == (fresh / "results.csv").read_bytes()
