"""A broken plugin fails alone: whatever it does, the others' results are written.

Each case runs a real broken plugin file (tests/plugins_broken/) beside built-in
poolers through the CLI and checks that the run ends (exit 3), names the
culprit, and writes the other poolers' results exactly as a run without the
culprit does. The user's own Ctrl-C still stops a run, saves what finished and
says how to resume.
"""

import os
import signal
import subprocess
import sys
import threading

import pandas as pd
import pytest
import torch
from conftest import BROKEN_PLUGINS_DIR, invoke, plugins_dir_with, run_command, write_rows

PLUGINS_FAILED = 3


def _broken(*names):
    return [BROKEN_PLUGINS_DIR / f"{name}.py" for name in names]


def _run(data, model, out, poolers, *extra, plugins=None):
    plugins = ("--plugins-dir", plugins) if plugins is not None else ()
    return run_command(data, model, out, *extra, *plugins, poolers=poolers, seeds=2, epochs=3)


@pytest.fixture(scope="module")
def clean(tiny_model_dir, tmp_path_factory):
    """results.csv of mean, cls and attention with no broken plugin in sight."""
    import pandas as pd

    root = tmp_path_factory.mktemp("clean")
    data = root / "small.csv"
    write_rows(data)
    result = _run(data, tiny_model_dir, root / "run", "mean,cls,attention")
    assert result.exit_code == 0, result.output
    return data, pd.read_csv(root / "run" / "results.csv")


def _assert_others_unharmed(out, clean_results, culprit):
    results = pd.read_csv(out / "results.csv")
    others = results[results["pooler"] != culprit].reset_index(drop=True)
    expected = clean_results[clean_results["pooler"].isin(set(others["pooler"]))]
    pd.testing.assert_frame_equal(others, expected.reset_index(drop=True), check_exact=True)


# (plugin file, pooler name, what the one-line reason says)
IN_RUN = {
    "sys.exit() in pool()": ("exits_in_pool", "exits_in_pool", "called sys.exit(0)"),
    "KeyboardInterrupt raised by the plugin": ("interrupts_in_pool", "interrupts_in_pool",
                                               "raised KeyboardInterrupt"),
    "output_dim() of 10**10": ("huge_output_dim", "huge_output_dim", "output_dim() returned "
                                                                     "10000000000"),
    "layers (1, 99)": ("missing_layer", "missing_layer", "layers (1, 99)"),
    "output_dim() raising on its second call": ("flaky_output_dim", "flaky_output_dim", None),
    "float64 default dtype set in pool()": ("float64_in_pool", "float64_in_pool",
                                            "changed torch's default dtype to torch.float64"),
    "pool() hangs (--pooler-timeout 1)": ("hangs", "hangs", "--pooler-timeout 1 s"),
    "a trainable forward hangs (--pooler-timeout 1)": ("hangs_trainable", "hangs_trainable",
                                                       "--pooler-timeout 1 s"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(IN_RUN))
def test_a_broken_pooler_fails_alone(case, clean, tiny_model_dir, tmp_path):
    plugin, name, reason = IN_RUN[case]
    data, clean_results = clean
    out = tmp_path / "run"
    # The culprit runs first, so anything it breaks would reach the others.
    timeout = ["--pooler-timeout", 1] if "--pooler-timeout" in case else []
    result = _run(data, tiny_model_dir, out, f"{name},mean,cls,attention", *timeout,
                  plugins=plugins_dir_with(tmp_path, *_broken(plugin)))
    output = result.output
    assert "Traceback" not in output
    if reason is None:  # a pooler that works as long as it is asked once
        assert result.exit_code == 0, output
        assert set(pd.read_csv(out / "results.csv")["pooler"]) == {name, "mean", "cls",
                                                                    "attention"}
    else:
        assert result.exit_code == PLUGINS_FAILED, output
        (error,) = [line for line in result.stderr.splitlines()
                    if line.startswith("error:") and f"'{name}'" in line]
        assert reason in error, error
        assert name in output.strip().splitlines()[-1]  # the closing Error: line
        summary = pd.read_csv(out / "summary.csv").set_index("pooler")
        assert summary.loc[name, "status"].startswith("failed:")
        assert (summary.loc[["mean", "cls", "attention"], "status"] == "ok").all()
    _assert_others_unharmed(out, clean_results, name)


@pytest.mark.slow
@pytest.mark.parametrize("plugin", ["writes_through_data", "writes_through_numpy"])
def test_writes_into_the_inputs_do_not_reach_the_other_poolers(plugin, clean, tiny_model_dir,
                                                               tmp_path):
    """``.data`` and ``.numpy()`` writes pass the version counter; the batch's checksum
    catches them, the writer fails and the others pool fresh states."""
    data, clean_results = clean
    out = tmp_path / "run"
    result = _run(data, tiny_model_dir, out, f"{plugin},mean,cls",
                  plugins=plugins_dir_with(tmp_path, *_broken(plugin)))
    assert result.exit_code == PLUGINS_FAILED, result.output
    (error,) = [line for line in result.stderr.splitlines() if f"'{plugin}'" in line]
    assert "wrote into its input tensors" in error and ".numpy()" in error, error
    _assert_others_unharmed(out, clean_results, plugin)


@pytest.mark.slow
def test_a_plugin_that_exits_at_import_is_named(clean, tiny_model_dir, tmp_path):
    data, clean_results = clean
    out = tmp_path / "run"
    result = _run(data, tiny_model_dir, out, "mean,cls",
                  plugins=plugins_dir_with(tmp_path, *_broken("exits_at_import")))
    assert result.exit_code == PLUGINS_FAILED, result.output
    assert "exits_at_import.py' failed to import: called sys.exit(0)" in result.stderr
    _assert_others_unharmed(out, clean_results, None)

    listed = invoke(["plugins", "--plugins-dir", out.parent / "user-plugins"])
    assert listed.exit_code == PLUGINS_FAILED
    assert "mean" in listed.stdout and "exits_at_import" in listed.stderr


@pytest.mark.slow
def test_torch_default_dtype_changed_at_import_is_restored(clean, tiny_model_dir, tmp_path):
    """float64 at import would break every pooler, selected or not; poolkit puts float32
    back and names the plugin."""
    data, clean_results = clean
    out = tmp_path / "run"
    try:
        result = _run(data, tiny_model_dir, out, "mean,cls,attention",
                      plugins=plugins_dir_with(tmp_path, *_broken("float64_at_import")))
        assert torch.get_default_dtype() == torch.float32
    finally:
        torch.set_default_dtype(torch.float32)
    assert result.exit_code == PLUGINS_FAILED, result.output
    assert "changed torch's default dtype to torch.float64 (poolkit restored it)" in result.stderr
    _assert_others_unharmed(out, clean_results, None)


def test_plugin_code_turns_every_failure_into_one_line_and_restores_torch():
    from poolkit.errors import PluginFailure
    from poolkit.pooling.isolation import plugin_code, torch_state

    other_threads = 1 if torch.get_num_threads() != 1 else 2
    cases = {
        "called sys.exit(2)": lambda: sys.exit(2),
        "raised KeyboardInterrupt": _raise(KeyboardInterrupt),
        "MemoryError: too big": _raise(MemoryError("too big")),
        "changed torch's grad mode to False": lambda: torch.set_grad_enabled(False),
        f"changed torch's threads to {other_threads}": lambda: torch.set_num_threads(other_threads),
        "did not return within --pooler-timeout 0.2 s": _swallowing_sleep,
    }
    before = torch_state()
    for reason, call in cases.items():
        with pytest.raises(PluginFailure) as failure:
            with plugin_code(0.2):
                call()
        assert failure.value.reason.startswith(reason), failure.value.reason
        assert torch_state() == before


def _raise(exc):
    def call():
        raise exc
    return call


def _swallowing_sleep():
    """A plugin that catches everything, the alarm too, and sleeps on."""
    for _ in range(3):
        try:
            import time

            time.sleep(0.5)
        except BaseException:
            pass


@pytest.mark.slow
def test_users_ctrl_c_stops_the_run_saves_finished_heads_and_says_how_to_resume(
        clean, tiny_model_dir, tmp_path):
    """SIGINT while a trainable pooler hangs: exit 130 and one line; the fixed heads
    that finished are in heads/ and a re-run reuses them."""
    data, _ = clean
    out = tmp_path / "run"
    plugins = plugins_dir_with(tmp_path, *_broken("hangs_trainable"))
    command = ["run", "--data", str(data), "--model", str(tiny_model_dir), "--poolers",
               "mean,hangs_trainable", "--seeds", "2", "--epochs", "3", "--folds", "1",
               "--out", str(out),
               "--plugins-dir", str(plugins)]
    env = dict(os.environ)
    env.pop("PYTEST_CURRENT_TEST", None)
    process = subprocess.Popen([sys.executable, "-m", "poolkit", *command], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "training pooler 'hangs_trainable'" in line:
            threading.Timer(1.0, process.send_signal, [signal.SIGINT]).start()
    process.wait()
    watchdog.cancel()
    stderr = "".join(lines)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("Error: interrupted:") and "run the same command again" in last, last
    assert sorted(p.name for p in (out / "heads").glob("*.json")) == [
        "mean@2-seed0.json", "mean@2-seed1.json"]

    again = invoke([*command, "--pooler-timeout", "1"])
    assert again.exit_code == PLUGINS_FAILED, again.output
    assert "reusing 2 finished heads" in again.stderr
    assert "did not return within --pooler-timeout 1 s" in again.stderr
