"""The same ``poolkit run`` command gives byte-identical tables, whatever the cache state
or the process (another Python hash seed) it runs in."""

import json
import os
import subprocess
import sys

import pytest
from conftest import invoke

FILES = ("results.csv", "summary.csv", "labels.json")


def _args(data, model, out):
    return ["run", "--data", str(data), "--model", str(model), "--out", str(out),
            "--seeds", "2", "--epochs", "5"]


def _settings(out):
    return json.loads((out / "settings.json").read_text())


@pytest.mark.slow
def test_identical_runs_write_byte_identical_tables(small_csv, tiny_model_dir, tmp_path,
                                                   monkeypatch):
    # A separate process with a fresh cache and another hash seed, running meanwhile.
    env = dict(os.environ, POOLKIT_CACHE_DIR=str(tmp_path / "cache-other"), PYTHONHASHSEED="4321")
    env.pop("PYTEST_CURRENT_TEST", None)
    other = subprocess.Popen([sys.executable, "-m", "poolkit",
                              *_args(small_csv, tiny_model_dir, tmp_path / "other")],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        monkeypatch.setenv("POOLKIT_CACHE_DIR", str(tmp_path / "cache"))
        first = invoke(_args(small_csv, tiny_model_dir, tmp_path / "first"))  # a fresh cache
        assert first.exit_code == 0, first.output
        second = invoke(_args(small_csv, tiny_model_dir, tmp_path / "second"))  # the same cache
        assert second.exit_code == 0, second.output
    finally:
        output, _ = other.communicate(timeout=180)
    assert other.returncode == 0, output

    assert _settings(tmp_path / "first")["encoder_ran"] is True
    assert _settings(tmp_path / "second")["encoder_ran"] is False
    assert _settings(tmp_path / "other")["encoder_ran"] is True
    for name in FILES:
        reference = (tmp_path / "first" / name).read_bytes()
        for run in ("second", "other"):
            assert (tmp_path / run / name).read_bytes() == reference, (name, run)

    # The two fresh caches hold the same bytes: the encoder itself is deterministic.
    (entry,) = (tmp_path / "cache").iterdir()
    assert (entry / "tokens.bin").read_bytes() == (
        tmp_path / "cache-other" / entry.name / "tokens.bin").read_bytes()
