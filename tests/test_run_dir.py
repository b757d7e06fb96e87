"""Run directories and exported files: poolkit never writes over what is not its own,
and every file in a run directory belongs to the run that last wrote it.

- ``--out`` takes a new or empty folder, or one poolkit created (it holds a marker
  listing poolkit's files); anything else is refused before any work, and a file
  poolkit did not write (or that changed since) is never overwritten.
- ``export -o`` replaces a regular file atomically, writes through a symlink (the
  link stays), a FIFO or a device, and refuses a directory.
- A re-run removes what an earlier run wrote and this one does not (predictions,
  plots): ``export`` serves only the last run's files.
- A saved head that was edited fails its checksum and is trained again.
"""

import json
import os
import threading

import pytest
from conftest import invoke, one_error_line, run_command, write_rows


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data.csv"
    write_rows(path)
    return path




def test_out_holding_the_data_file_is_refused_and_the_data_kept(data, tiny_model_dir, tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    user_file = folder / "summary.csv"  # the user's data, named like poolkit's table
    user_file.write_bytes(data.read_bytes())
    before = user_file.read_bytes()
    result = run_command(user_file, tiny_model_dir, folder)
    assert result.exit_code == 1, result.output
    error = one_error_line(result)
    assert f"--out '{folder}'" in error and "did not create" in error and "summary.csv" in error
    assert user_file.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["summary.csv"]  # nothing added


def test_a_users_results_csv_in_an_existing_folder_is_kept(data, tiny_model_dir, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "results.csv").write_text("my,own\n1,2\n")
    result = run_command(data, tiny_model_dir, folder)
    assert result.exit_code == 1, result.output
    assert "did not create" in one_error_line(result)
    assert (folder / "results.csv").read_text() == "my,own\n1,2\n"


@pytest.mark.slow
def test_an_empty_folder_becomes_a_run_directory(data, tiny_model_dir, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    assert run_command(data, tiny_model_dir, folder).exit_code == 0
    assert (folder / "results.csv").is_file() and (folder / ".poolkit-run.json").is_file()
    assert run_command(data, tiny_model_dir, folder).exit_code == 0  # and is reused


@pytest.mark.slow
def test_a_file_changed_in_a_run_directory_is_not_overwritten(data, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert run_command(data, tiny_model_dir, out).exit_code == 0
    (out / "summary.csv").write_text("the user's own notes\n")
    result = run_command(data, tiny_model_dir, out)
    assert result.exit_code == 1, result.output
    error = one_error_line(result)
    assert "'summary.csv' is not a file poolkit wrote there" in error
    assert (out / "summary.csv").read_text() == "the user's own notes\n"


@pytest.fixture
def finished(data, tiny_model_dir, tmp_path):
    out = tmp_path / "finished"
    assert run_command(data, tiny_model_dir, out).exit_code == 0
    return out


def test_export_to_a_symlink_writes_its_target_and_keeps_the_link(finished, tmp_path):
    target = tmp_path / "real.md"
    target.write_text("old\n")
    link = tmp_path / "link.md"
    link.symlink_to(target)
    result = invoke(["export", finished, "--format", "md", "-o", link])
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text().startswith("| pooler")


def test_export_to_a_fifo_writes_through_it(finished, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    result = invoke(["export", finished, "--format", "csv", "-o", fifo])
    reader.join(timeout=30)
    assert result.exit_code == 0, result.output
    assert fifo.is_fifo()
    assert received and received[0].startswith("pooler,")


def test_export_to_a_directory_is_one_line(finished, tmp_path):
    result = invoke(["export", finished, "--format", "csv", "-o", tmp_path])
    assert result.exit_code == 2  # click refuses it as a usage error
    assert "is a directory" in one_error_line(result)


@pytest.mark.slow
def test_files_of_an_earlier_run_are_removed_by_the_next(data, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert run_command(data, tiny_model_dir, out, "--predictions", "--plot", "svg").exit_code == 0
    assert (out / "predictions.csv").is_file() and (out / "plots" / "accuracy.svg").is_file()
    assert invoke(["export", out, "--format", "csv", "--table", "predictions"]).exit_code == 0

    again = invoke(["run", "--data", data, "--model", tiny_model_dir, "--poolers", "mean",
                    "--seeds", 1, "--epochs", 2, "--out", out])
    assert again.exit_code == 0, again.output
    assert not (out / "predictions.csv").exists()
    assert not (out / "plots" / "accuracy.svg").exists()
    stale = invoke(["export", out, "--format", "csv", "--table", "predictions"])
    assert stale.exit_code == 1
    assert "has no predictions.csv from its last run" in one_error_line(stale)
    listed = json.loads((out / ".poolkit-run.json").read_text())["files"]
    assert sorted(listed) == ["comparison.json", "labels.json", "pairs.csv", "recipe.json",
                              "results.csv", "settings.json", "summary.csv"]


@pytest.mark.slow
def test_an_edited_head_is_trained_again_not_trusted(data, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert run_command(data, tiny_model_dir, out).exit_code == 0
    original = (out / "results.csv").read_bytes()
    head = out / "heads" / "mean@2-fold0-seed0.json"
    record = json.loads(head.read_text())
    record["head"]["best_epoch"] += 1  # shown in results.csv
    head.write_text(json.dumps(record))
    again = run_command(data, tiny_model_dir, out)
    assert again.exit_code == 0, again.output
    assert f"warning: {head} is damaged or was edited (checksum)" in again.stderr
    assert "reusing 9 finished" in again.stderr  # cls@2's 5 folds, mean@2's other 4
    assert (out / "results.csv").read_bytes() == original
