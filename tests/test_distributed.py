"""Encoding sharded over processes with torchrun (gloo, on this CPU).

A 2-process run writes the same cache entry bytes and results as a 1-process
run; a rank killed mid-encoding leaves an entry a 1-process re-run completes,
encoding only the missing batches; a cache dir the ranks do not share is one
line of error.
"""

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TESTS_DIR, write_rows

FAULT = TESTS_DIR / "helpers" / "rank_fault.py"


def torchrun(*args, env):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env)


def poolkit(*args, env):
    return subprocess.run([sys.executable, "-m", "poolkit", *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def entry(cache: Path) -> Path:
    (found,) = [p for p in cache.iterdir() if p.is_dir() and not p.name.endswith(".partial")]
    return found


@pytest.fixture(scope="module")
def setting(tmp_path_factory, tiny_model_dir):
    """1,000 texts (11 encoder batches) and the 1-process run every other is held to."""
    root = tmp_path_factory.mktemp("distributed")
    data = root / "reviews.csv"
    write_rows(data, 1000)
    # one thread per process, in every run: the same kernels, so the same bytes
    env = {**os.environ, "OMP_NUM_THREADS": "1", "POOLKIT_CACHE_DIR": str(root / "unused")}
    args = ["run", "--data", data, "--model", tiny_model_dir, "--poolers", "cls,mean",
            "--seeds", "1", "--cache-mode", "tokens"]
    single = poolkit(*args, "--out", root / "one", "--cache-dir", root / "cache-one", env=env)
    assert single.returncode == 0, single.stderr
    return {"root": root, "args": args, "env": env,
            "tokens": sha256(entry(root / "cache-one") / "tokens.bin"),
            "results": (root / "one" / "results.csv").read_bytes()}


@pytest.mark.slow
def test_two_processes_write_the_entry_and_results_one_process_does(setting):
    root = setting["root"]
    done = torchrun("-m", "poolkit", *setting["args"], "--out", root / "two", "--cache-dir",
                    root / "cache-two", env=setting["env"])
    assert done.returncode == 0, done.stderr
    assert "rank 1 of 2" in done.stderr and "encoding on 2 ranks" in done.stderr
    # rank 0's progress counts its own share of the tokens, not the others' as done
    share = int(re.search(r"encoding: 100% of ([\d,]+) tokens", done.stderr)[1].replace(",", ""))
    total = int(re.search(r"encoded 1000 texts, (\d+) tokens", done.stderr)[1])
    assert 0 < share < total
    assert sha256(entry(root / "cache-two") / "tokens.bin") == setting["tokens"]
    assert (root / "two" / "results.csv").read_bytes() == setting["results"]
    assert done.stdout.count("Run directory") == 1  # rank 0 alone reports


@pytest.mark.slow
@pytest.mark.parametrize("after", [2, 5], ids=["mid-encoding", "after-its-share"])
def test_a_rank_killed_mid_encoding_resumes_with_one_process(setting, after):
    """Rank 1 dies after its 2nd batch, or after the last of its 5 (its whole share, before
    the barrier): a plain re-run encodes only what is missing and gives the same bytes."""
    root = setting["root"]
    cache, out = root / f"cache-killed-{after}", root / f"killed-{after}"
    died = torchrun(FAULT, "die", 1, after, "--", *setting["args"], "--out", out, "--cache-dir",
                    cache, env=setting["env"])
    assert died.returncode != 0
    assert not (out / "results.csv").exists()
    (partial,) = cache.glob("*.partial")
    records = [json.loads(p.read_text()) for p in partial.glob("progress*.json")]
    done = set().union(*({int(b) for b in r["done"]} for r in records))
    total = records[0]["plan"]["batches"]
    assert after <= len(done) <= total

    resumed = poolkit(*setting["args"], "--out", out, "--cache-dir", cache, env=setting["env"])
    assert resumed.returncode == 0, resumed.stderr
    left = re.search(r"resuming an interrupted encoding: (\d+) of (\d+) batches left",
                     resumed.stderr)
    assert left and (int(left[1]), int(left[2])) == (total - len(done), total)
    assert sha256(entry(cache) / "tokens.bin") == setting["tokens"]
    assert (out / "results.csv").read_bytes() == setting["results"]


@pytest.mark.slow
def test_a_plain_run_and_a_torchrun_on_one_cache_at_once_agree(setting):
    """Started together on one --cache-dir (issue 27, class 4): each finishes, one entry
    is left, and both give the one-process bytes."""
    root = setting["root"]
    cache = root / "cache-together"
    common = [*setting["args"], "--cache-dir", cache]
    ranks = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                              "--nproc_per_node", "2", "-m", "poolkit", *map(str, common),
                              "--out", str(root / "together-two")], env=setting["env"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    plain = poolkit(*common, "--out", root / "together-one", env=setting["env"])
    _, ranks_err = ranks.communicate(timeout=300)
    assert plain.returncode == 0, plain.stderr
    assert ranks.returncode == 0, ranks_err
    assert sha256(entry(cache) / "tokens.bin") == setting["tokens"]
    for out in ("together-one", "together-two"):
        assert (root / out / "results.csv").read_bytes() == setting["results"]


@pytest.mark.slow
def test_a_pooled_cache_is_the_same_on_two_processes_and_after_a_rank_dies(setting):
    """--cache-mode pooled: each rank pools its own batches into the shared entry."""
    root, args, env = setting["root"], [*setting["args"], "--cache-mode", "pooled"], setting["env"]
    one = poolkit(*args, "--out", root / "pooled-one", "--cache-dir", root / "pooled-one-c",
                  env=env)
    assert one.returncode == 0, one.stderr
    features = sha256(entry(root / "pooled-one-c") / "features.bin")
    results = (root / "pooled-one" / "results.csv").read_bytes()
    # (a pooled cache's heads are its own: the same results as the token cache's here)
    assert results == setting["results"]

    two = torchrun("-m", "poolkit", *args, "--out", root / "pooled-two", "--cache-dir",
                   root / "pooled-two-c", env=env)
    assert two.returncode == 0, two.stderr
    assert sha256(entry(root / "pooled-two-c") / "features.bin") == features
    assert (root / "pooled-two" / "results.csv").read_bytes() == results

    cache, out = root / "pooled-killed-c", root / "pooled-killed"
    died = torchrun(FAULT, "die", 1, 2, "--", *args, "--out", out, "--cache-dir", cache, env=env)
    assert died.returncode != 0
    resumed = poolkit(*args, "--out", out, "--cache-dir", cache, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"resuming an interrupted encoding: \d+ of 11 batches left", resumed.stderr)
    assert sha256(entry(cache) / "features.bin") == features
    assert (out / "results.csv").read_bytes() == results


@pytest.mark.slow
def test_a_cache_dir_the_ranks_do_not_share_is_one_line_of_error(setting):
    root = setting["root"]
    done = torchrun(FAULT, "own-cache-dir", root / "split", "--", *setting["args"], "--out",
                    root / "split-run", env=setting["env"])
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 2 and all("is not shared between the ranks" in e for e in errors)
    # (torchrun itself prints a traceback of its ChildFailedError; none comes from poolkit's
    # code, wherever the checkout is: its folder may well be named poolkit)
    package = Path(importlib.util.find_spec("poolkit").origin).parent
    assert str(package) not in done.stderr
    assert not [p for p in (root / "split").rglob("tokens.bin")]


@pytest.mark.slow
@pytest.mark.parametrize("what", ["data", "seeds"])
def test_ranks_started_with_other_arguments_stop_before_any_write(setting, what):
    """On 0c40f6e rank 1 given another --data file encoded its share into an entry of
    its own, and rank 0 failed only after encoding ("5 of 11 batches missing"), its
    partial entry left; given other --seeds the run exited 0, rank 1's ignored."""
    root = setting["root"]
    args = [str(a) for a in setting["args"]]
    if what == "data":
        other = root / "other-reviews.csv"
        write_rows(other, 1000, seed=1)
        old, new = args[args.index("--data") + 1], str(other)
    else:
        old, new = args[args.index("--seeds") + 1], "2"
    cache, out = root / f"cache-{what}", root / f"run-{what}"
    done = torchrun(FAULT, "other-arg", "1", old, new, "--", *args, "--out", out, "--cache-dir",
                    cache, env=setting["env"])
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 2 and all("rank 1 of 2 was started with other options, data" in e
                                    for e in errors), done.stderr
    assert not cache.exists() and not out.exists()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_on_loopback_write_what_one_process_does(setting):
    """The README's multi-node line, as two torchrun launchers (one process each) on
    127.0.0.1: the same entry bytes and results.csv as one process."""
    root, port = setting["root"], _free_port()
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(n),
         "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
         "-m", "poolkit", *map(str, setting["args"]), "--out", root / "nodes", "--cache-dir",
         root / "cache-nodes"], env=setting["env"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for n in (0, 1)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert "encoding on 2 ranks" in outputs[0][1]
    assert sha256(entry(root / "cache-nodes") / "tokens.bin") == setting["tokens"]
    assert (root / "nodes" / "results.csv").read_bytes() == setting["results"]


@pytest.mark.slow
def test_accelerate_launch_writes_what_one_process_does(setting):
    """``accelerate launch --multi_gpu --num_processes 2`` starts torchrun's workers (on
    this CPU too, over gloo). Its ``--cpu`` runs one process: accelerate's multi-CPU
    launcher is mpirun."""
    pytest.importorskip("accelerate")
    root = setting["root"]
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
         "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(_free_port()), "-m", "poolkit", *map(str, setting["args"]),
         "--out", root / "accelerate", "--cache-dir", root / "cache-accelerate"],
        capture_output=True, text=True, timeout=300, env=setting["env"])
    assert done.returncode == 0, done.stderr
    assert "rank 1 of 2" in done.stderr and "encoding on 2 ranks" in done.stderr
    assert sha256(entry(root / "cache-accelerate") / "tokens.bin") == setting["tokens"]
    assert (root / "accelerate" / "results.csv").read_bytes() == setting["results"]


def test_rank_zero_refuses_a_batch_whose_bytes_fail_their_checksum(tmp_path):
    from poolkit.encoding.batching import plan_batches
    from poolkit.encoding.cache import CacheWriter

    plan = plan_batches([3, 2, 2, 1], max_tokens=4)
    assert len(plan) == 3
    first = CacheWriter(tmp_path, "entry-L1", 2, "fp32", {}, plan, [1])
    first.checkpoint()
    other = CacheWriter(tmp_path, "entry-L1", 2, "fp32", {}, plan, [1], join=first.tmp, rank=1)
    for batch in range(3):
        writer = first if batch == 0 else other
        rows = int(plan.offsets[batch + 1] - plan.offsets[batch])
        writer.write(batch, np.full((1, rows, 2), batch + 1, dtype=np.float32))
    other.checkpoint()
    other.close()
    assert first.collect() == [] and first.done == {0, 1, 2}
    with open(first.tmp / "tokens.bin", "r+b") as handle:  # another rank's bytes change
        handle.seek(int(plan.offsets[2]) * 2 * 4)
        handle.write(np.float32(9).tobytes())
    assert first.collect() == [2] and first.done == {0, 1}
    first.close()


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "2", "RANK": "0"},
     "WORLD_SIZE=2 is set but MASTER_ADDR and MASTER_PORT are not"),
    ({"WORLD_SIZE": "2", "RANK": "5", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
     "WORLD_SIZE=2 is set but RANK='5' is not one of 0 to 1"),
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set but RANK='' is not one of 0 to 1"),
])
def test_torchruns_variables_set_by_hand_inconsistently_are_one_line(small_csv, tiny_model_dir,
                                                                     monkeypatch, env, message):
    """On 0fabc9e the first and last ended in "unexpected ValueError: Error initializing
    torch.distributed using env:// rendezvous", the second waited for its rendezvous."""
    from conftest import invoke

    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = invoke(["run", "--data", small_csv, "--model", tiny_model_dir, "--folds", "2"])
    assert result.exit_code == 1 and message in result.output
    assert "unexpected" not in result.output
