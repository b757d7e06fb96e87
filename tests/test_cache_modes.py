"""--cache-mode: a pooled cache (only each fixed feature set's (N, D) features) gives the
features and results a token cache gives; auto picks by --cache-budget; a pooled cache
that lacks a pooler is encoded again, saying why; trainable poolers need tokens."""

import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import BROKEN_PLUGINS_DIR, FIXED_POOLERS, PLUGINS_DIR, invoke, write_rows

import poolkit
from poolkit.encoding.cache import PooledCache, parse_budget
from poolkit.errors import PoolkitError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("modes") / "reviews.csv"
    write_rows(path, 300)
    return path


def run(data, model, cache_dir, out=None, log=None, **kwargs):
    kwargs = {"poolers": FIXED_POOLERS + ("first_last_avg",), "seeds": 2, **kwargs}
    return poolkit.run(data, model=str(model), cache_dir=cache_dir, out=out, log=log, **kwargs)


def entries(root):
    return sorted(p for p in root.iterdir() if p.is_dir())


@pytest.mark.slow
def test_pooled_and_tokens_modes_give_the_same_features_and_results(data, tiny_model_dir,
                                                                    tmp_path):
    from poolkit.encoding.cache import HiddenStateCache
    from poolkit.encoding.model import load_encoder
    from poolkit.pooling.features import pool_cache, setup_poolers
    from poolkit.pooling.manager import collect_poolers, get_plugin_manager

    tokens = run(data, tiny_model_dir, tmp_path / "t", cache_mode="tokens", layers="all")
    pooled = run(data, tiny_model_dir, tmp_path / "p", cache_mode="pooled", layers="all")
    assert tokens.settings["cache_mode"] == "tokens" and pooled.settings["cache_mode"] == "pooled"
    assert len(tokens.results) == len(pooled.results) == 2 * (3 * len(FIXED_POOLERS) + 1)
    pd.testing.assert_frame_equal(tokens.results, pooled.results, check_exact=False,
                                  rtol=1e-6, atol=1e-9)

    # the entries themselves: every feature set's features, pooled from the token cache
    (token_entry,), (pooled_entry,) = entries(tmp_path / "t"), entries(tmp_path / "p")
    assert not (pooled_entry / "tokens.bin").exists()
    cache, stored = HiddenStateCache(token_entry), PooledCache(pooled_entry)
    width = sum(dim for _, dim in stored.sets)
    assert (pooled_entry / "features.bin").stat().st_size == 4 * len(stored) * width
    encoder = load_encoder(str(tiny_model_dir))
    pm = get_plugin_manager()
    registered = {n: p for n, (p, _) in collect_poolers(pm).items()}
    specs, _ = setup_poolers(registered, encoder)
    from poolkit.pooling.features import feature_sets

    sets, _ = feature_sets({n: registered[n] for n in FIXED_POOLERS + ("first_last_avg",)},
                           specs, [0, 1, 2], 2)
    expected, failures = pool_cache(cache, sets)
    assert not failures and sorted(expected) == sorted(key for key, _ in stored.sets)
    for key, array in expected.items():
        # the same fp16-rounded states, pooled in batches padded differently
        np.testing.assert_allclose(stored.features(key), array, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_auto_picks_tokens_within_the_budget_and_pooled_beyond_it(data, tiny_model_dir,
                                                                   tmp_path):
    said = []
    run(data, tiny_model_dir, tmp_path / "big", log=said.append, poolers=("mean", "attention"),
        seeds=1)
    (entry,) = entries(tmp_path / "big")
    assert (entry / "tokens.bin").exists()
    choice = [line for line in said if line.startswith("cache mode auto: tokens")]
    assert len(choice) == 1 and "token cache" in choice[0] and "pooled features" in choice[0]

    said.clear()
    small = run(data, tiny_model_dir, tmp_path / "small", log=said.append, seeds=1,
                poolers=("mean", "attention"), cache_budget="1K")
    (entry,) = entries(tmp_path / "small")
    assert (entry / "features.bin").exists() and not (entry / "tokens.bin").exists()
    choice = [line for line in said if line.startswith("cache mode auto: pooled")]
    sizes = re.search(r"token cache ([\d.]+) KiB, pooled features ([\d.]+) KiB", choice[0])
    lengths = PooledCache(entry).lengths
    assert float(sizes[1]) == pytest.approx(2 * lengths.sum() * 32 / 1024, abs=0.05)
    assert float(sizes[2]) == pytest.approx(4 * len(lengths) * 32 / 1024, abs=0.05)
    # a trainable pooler reads token states: left out, in one line that says so
    notes = [line for line in said if "trainable pooler(s) attention left out" in line]
    assert len(notes) == 1 and "--cache-mode tokens" in notes[0]
    assert list(small.results["pooler"].unique()) == ["mean"]


@pytest.mark.slow
def test_a_pooled_cache_serves_its_poolers_and_re_encodes_for_one_it_lacks(
        data, tiny_model_dir, tmp_path, forward_calls):
    cache = tmp_path / "c"
    run(data, tiny_model_dir, cache, cache_mode="pooled", poolers=("cls", "mean", "max"), seeds=1)
    encoded = len(forward_calls)
    assert encoded > 0
    said = []
    again = run(data, tiny_model_dir, cache, cache_mode="pooled", poolers=("mean", "max"),
                seeds=1, log=said.append)
    assert len(forward_calls) == encoded and not again.settings["encoder_ran"]
    said.clear()
    more = run(data, tiny_model_dir, cache, cache_mode="pooled", poolers=("mean", "first_last"),
               plugins_dir=PLUGINS_DIR, seeds=1, log=said.append)
    assert more.settings["encoder_ran"] and len(forward_calls) > encoded
    why = [line for line in said if "pooled cache of these texts lacks first_last@2" in line]
    assert len(why) == 1 and "encoding again" in why[0]
    assert len(entries(cache)) == 2
    # auto uses whichever complete entry serves the run
    encoded = len(forward_calls)
    run(data, tiny_model_dir, cache, poolers=("max",), seeds=1)
    assert len(forward_calls) == encoded


@pytest.mark.slow
def test_failing_poolers_fail_alone_in_a_pooled_cache_and_again_on_a_hit(
        data, tiny_model_dir, tmp_path, forward_calls):
    cache = tmp_path / "c"
    for attempt in range(2):
        result = run(data, tiny_model_dir, cache, cache_mode="pooled",
                     plugins_dir=BROKEN_PLUGINS_DIR,
                     poolers=("mean", "explodes", "writes_through_data"), seeds=1)
        assert list(result.results["pooler"]) == ["mean"]
        assert "kaboom" in result.failures["explodes@2"]
        assert "read-only" in result.failures["writes_through_data@2"]
        if attempt == 0:
            encoded = len(forward_calls)
    assert len(forward_calls) == encoded  # the second run: a cache hit
    (entry,) = entries(cache)
    failed = json.loads((entry / "meta.json").read_text())["failed"]
    assert sorted(failed) == ["explodes@2", "writes_through_data@2"]


@pytest.mark.slow
def test_a_damaged_pooled_entry_is_rebuilt(data, tiny_model_dir, tmp_path):
    cache = tmp_path / "c"
    first = run(data, tiny_model_dir, cache, cache_mode="pooled", poolers=("mean",), seeds=1)
    (entry,) = entries(cache)
    with open(entry / "features.bin", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff\xff")
    said = []
    again = run(data, tiny_model_dir, cache, cache_mode="pooled", poolers=("mean",), seeds=1,
                log=said.append)
    assert again.settings["encoder_ran"]
    assert any("is damaged (features.bin fails its checksum); rebuilding it" in s for s in said)
    pd.testing.assert_frame_equal(first.results, again.results)


@pytest.mark.slow
def test_an_interrupted_pooled_encoding_resumes(data, tiny_model_dir, tmp_path, monkeypatch):
    import functools

    from transformers import BertModel

    import poolkit.encoding.encode

    monkeypatch.setattr(poolkit.encoding.encode, "CHECKPOINT_EVERY", 1)
    original, calls = BertModel.forward, []

    @functools.wraps(original)
    def spy(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BertModel, "forward", spy)
    cache = tmp_path / "c"
    with pytest.raises(poolkit.errors.Interrupted):
        run(data, tiny_model_dir, cache, cache_mode="pooled", poolers=("cls", "mean"), seeds=1)
    monkeypatch.setattr(BertModel, "forward", original)
    said = []
    resumed = run(data, tiny_model_dir, cache, cache_mode="pooled", poolers=("cls", "mean"),
                  seeds=1, log=said.append)
    left = [s for s in said if s.startswith("resuming an interrupted encoding")]
    batches = int(re.search(r"of (\d+) batches", left[0])[1])
    assert left == [f"resuming an interrupted encoding: {batches - 2} of {batches} batches left"]
    fresh = run(data, tiny_model_dir, tmp_path / "fresh", cache_mode="pooled",
                poolers=("cls", "mean"), seeds=1)
    (a,), (b,) = entries(cache), entries(tmp_path / "fresh")
    assert (a / "features.bin").read_bytes() == (b / "features.bin").read_bytes()
    pd.testing.assert_frame_equal(resumed.results, fresh.results)


@pytest.mark.parametrize("spec, parsed", [("0.25", (0.25, None)), ("50%", (0.5, None)),
                                          ("20G", (None, 20 << 30)), ("500MiB", (None, 500 << 20)),
                                          ("1.5TB", (None, int(1.5 * 2**40))),
                                          ("4096", (None, 4096))])
def test_cache_budget_takes_a_share_of_the_free_disk_or_a_size(spec, parsed):
    assert parse_budget(spec) == parsed


@pytest.mark.parametrize("options, message", [
    (["--cache-budget", "lots"], "--cache-budget lots: give a share of the free disk"),
    (["--cache-budget", "150%"], "--cache-budget 150%: a share of the free disk is above 0"),
    (["--cache-mode", "disk"], "'disk' is not one of 'auto', 'tokens', 'pooled'"),
    # on 421099a: 1.5 was a budget of 1 byte, 1e999 and inf an OverflowError, nan a
    # message about converting NaN
    *[(["--cache-budget", spec], f"--cache-budget {spec}: give a share of the free disk "
       "(at most 1, or 100%) or a size with its unit") for spec in ("1.5", "1e999", "inf", "nan")],
    *[(["--cache-budget", spec], f"--cache-budget {spec}: a share of the free disk is above 0")
      for spec in ("0", "-1", "0.0")],
    (["--cache-budget", "10XB"], "--cache-budget 10XB: give a share of the free disk"),
])
def test_bad_cache_options_are_one_line_errors(small_csv, tiny_model_dir, options, message):
    result = invoke(["run", "--data", small_csv, "--model", tiny_model_dir, *options])
    assert result.exit_code != 0 and message in result.output
    assert "Traceback" not in result.output


def test_the_api_refuses_an_unknown_cache_mode(small_csv, tiny_model_dir):
    with pytest.raises(PoolkitError, match="--cache-mode disk: use one of auto, tokens, pooled"):
        poolkit.run(small_csv, model=str(tiny_model_dir), cache_mode="disk")
