"""Damaged cache entries are detected, reported and rebuilt, never used.

A complete entry built by ``encode_to_cache`` with the tiny model is damaged on
disk in one way per case; opening it must raise ``CacheDamaged``, and the next
``encode_to_cache`` must say "damaged" naming the entry, re-run the encoder and
leave an entry equal to one built from scratch. Damaged *partial* entries (an
interrupted encoding) must restart or resume, never crash or be trusted.
"""

import json
import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest

import poolkit.encoding.encode
from poolkit.encoding.cache import CacheDamaged, HiddenStateCache
from poolkit.encoding.encode import encode_to_cache
from poolkit.encoding.model import load_encoder

TEXTS = [
    "good",
    "the movie was really very good and the actor was great fun",
    "awful plot , dull story",
    "it was not boring but the film was so poor",
    "loved it !",
    "the story was fine",
    "hated the plot and the actor",
    "a really fun film",
    "dull",
    "the film was very very good",
]
MAX_TEXTS = 3  # several encoder batches per entry
BATCHES = -(-len(TEXTS) // MAX_TEXTS)


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return load_encoder(str(tiny_model_dir))


@pytest.fixture(scope="module")
def fresh(encoder, tmp_path_factory):
    """An entry built once from scratch: what every rebuilt entry must equal."""
    entry, ran = encode_to_cache(encoder, TEXTS, tmp_path_factory.mktemp("fresh"),
                                 max_texts=MAX_TEXTS)
    assert ran
    return entry


def _build(encoder, root, **kwargs):
    return encode_to_cache(encoder, TEXTS, root, max_texts=MAX_TEXTS, **kwargs)


def assert_same_entry(entry, fresh):
    assert entry.path.name == fresh.path.name  # the same key
    assert (entry.path / "tokens.bin").read_bytes() == (fresh.path / "tokens.bin").read_bytes()
    assert entry.starts.tolist() == fresh.starts.tolist()
    assert entry.lengths.tolist() == fresh.lengths.tolist()
    timing = ("encode_seconds", "checksum")  # the checksum covers the timing
    assert ({k: v for k, v in entry.meta.items() if k not in timing}
            == {k: v for k, v in fresh.meta.items() if k not in timing})


def _flip(path: Path, where):
    data = bytearray(path.read_bytes())
    offset = {"first": 0, "last": len(data) - 1}.get(where)
    if offset is None:  # "random-N": a fixed random offset
        offset = random.Random(int(where.split("-")[1])).randrange(len(data))
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path, drop: int):
    data = path.read_bytes()
    path.write_bytes(data[:-drop])


DAMAGE = {
    **{f"tokens.bin byte {w} flipped": (lambda e, w=w: _flip(e / "tokens.bin", w))
       for w in ("first", "random-0", "random-1", "random-2", "last")},
    "tokens.bin truncated by 3 bytes": lambda e: _truncate(e / "tokens.bin", 3),
    "tokens.bin one byte longer": lambda e: (e / "tokens.bin").write_bytes(
        (e / "tokens.bin").read_bytes() + b"\0"),
    "tokens.bin empty": lambda e: (e / "tokens.bin").write_bytes(b""),
    "tokens.bin deleted": lambda e: (e / "tokens.bin").unlink(),
    **{f"index.npz byte {w} flipped": (lambda e, w=w: _flip(e / "index.npz", w))
       for w in ("first", "random-3", "last")},
    "index.npz truncated": lambda e: _truncate(e / "index.npz", 40),
    "index.npz replaced by other arrays": lambda e: np.savez(
        e / "index.npz", starts=np.zeros(len(TEXTS), np.int64),
        lengths=np.ones(len(TEXTS), np.int64)),
    "index.npz deleted": lambda e: (e / "index.npz").unlink(),
    "meta.json invalid JSON": lambda e: _truncate(e / "meta.json", 10),
    "meta.json empty": lambda e: (e / "meta.json").write_text(""),
    "meta.json deleted": lambda e: (e / "meta.json").unlink(),
    "meta.json of another format version": lambda e: (e / "meta.json").write_text(json.dumps(
        {**json.loads((e / "meta.json").read_text()), "format": 1})),
    "meta.json checksum missing": lambda e: (e / "meta.json").write_text(json.dumps(
        {k: v for k, v in json.loads((e / "meta.json").read_text()).items() if k != "crc32"})),
    "meta.json holds JSON that is not an object": lambda e: (e / "meta.json").write_text("[]"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_entry_is_reported_and_rebuilt(encoder, fresh, tmp_path, forward_calls, damage):
    root = tmp_path / "cache"
    entry, ran = _build(encoder, root)
    assert ran
    key = entry.path.name
    assert_same_entry(HiddenStateCache(root / key), fresh)  # intact before the damage

    DAMAGE[damage](entry.path)

    with pytest.raises(CacheDamaged):
        HiddenStateCache(root / key)
    messages = []
    forward_calls.clear()
    rebuilt, ran = _build(encoder, root, log=messages.append)
    assert ran, "a damaged entry was used"
    assert len(forward_calls) == BATCHES  # a full re-encode
    damaged = [m for m in messages if "damaged" in m]
    assert len(damaged) == 1, messages
    assert str(root / key) in damaged[0]
    assert_same_entry(rebuilt, fresh)
    assert sorted(p.name for p in root.iterdir()) == [key]  # no leftovers
    assert_same_entry(HiddenStateCache(root / key), fresh)

    forward_calls.clear()
    again, ran = _build(encoder, root)  # and now it is an ordinary cache hit
    assert not ran and forward_calls == []


def _interrupted(encoder, root, monkeypatch, at_batch):
    """Encode into ``root`` with a KeyboardInterrupt at encoder batch ``at_batch``."""
    from transformers import BertModel

    monkeypatch.setattr(poolkit.encoding.encode, "CHECKPOINT_EVERY", 1)
    original = BertModel.forward
    calls = []

    def interrupt(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == at_batch:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BertModel, "forward", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _build(encoder, root)
    monkeypatch.setattr(BertModel, "forward", original)
    (partial,) = root.iterdir()
    assert partial.name.endswith(".partial")
    return partial


def _edit_progress(partial: Path, change):
    record = json.loads((partial / "progress.json").read_text())
    (partial / "progress.json").write_text(json.dumps(change(record)))


PARTIAL_DAMAGE = {
    # name: (damage, batches the encoder must run afterwards)
    "progress.json invalid JSON": (lambda p: _truncate(p / "progress.json", 5), BATCHES),
    "progress.json deleted": (lambda p: (p / "progress.json").unlink(), BATCHES),
    "progress.json from another plan": (lambda p: (p / "progress.json").write_text(json.dumps(
        {**json.loads((p / "progress.json").read_text()), "plan": {"budget": 1}})), BATCHES),
    "tokens.bin shorter than recorded": (lambda p: _truncate(p / "tokens.bin", 4), BATCHES),
    "tokens.bin with a half-written batch after the checkpoint": (
        lambda p: (p / "tokens.bin").write_bytes((p / "tokens.bin").read_bytes() + b"\x7f" * 70),
        BATCHES - 2),
    # (The texts' token rows come from the batch plan; progress.json alone says what is done.)
    "progress.json lists a batch the plan lacks": (lambda p: _edit_progress(
        p, lambda r: {**r, "done": r["done"] + [10**6]}), BATCHES),
    "progress.json without its list of batches": (lambda p: _edit_progress(
        p, lambda r: {k: v for k, v in r.items() if k != "done"}), BATCHES),
    "progress.json with batches that are not numbers": (lambda p: _edit_progress(
        p, lambda r: {**r, "done": ["first", "second"]}), BATCHES),
}


@pytest.mark.parametrize("damage", list(PARTIAL_DAMAGE))
def test_damaged_partial_entry_restarts_or_resumes(encoder, fresh, tmp_path, monkeypatch, damage):
    root = tmp_path / "cache"
    partial = _interrupted(encoder, root, monkeypatch, at_batch=3)  # batches 1, 2 on disk
    make_damage, expected_batches = PARTIAL_DAMAGE[damage]
    make_damage(partial)

    from transformers import BertModel

    original = BertModel.forward
    calls = []
    monkeypatch.setattr(BertModel, "forward",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    entry, ran = _build(encoder, root)
    assert ran
    assert len(calls) == expected_batches
    assert_same_entry(entry, fresh)
    assert sorted(p.name for p in root.iterdir()) == [fresh.path.name]


def test_entry_files_are_plain_arrays_and_json_never_pickles(encoder, fresh, tmp_path,
                                                             monkeypatch):
    entry, _ = _build(encoder, tmp_path / "cache")
    files = sorted(p.name for p in entry.path.rglob("*"))
    assert files == ["index.npz", "meta.json", "tokens.bin"]
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pt", ".pth", ".joblib"))]

    meta = json.loads((entry.path / "meta.json").read_text())
    itemsize = {"fp16": 2, "fp32": 4}[meta["dtype"]]
    assert (entry.path / "tokens.bin").stat().st_size == (
        meta["total_tokens"] * meta["hidden_size"] * itemsize)
    with zipfile.ZipFile(entry.path / "index.npz") as archive:
        assert sorted(archive.namelist()) == ["lengths.npy", "starts.npy"]
    with np.load(entry.path / "index.npz", allow_pickle=False) as index:
        for name in ("starts", "lengths"):
            assert index[name].dtype == np.int64 and not index[name].dtype.hasobject

    # Opening and reading an entry: np.load only with allow_pickle=False, no pickle at all.
    loads = []
    real_load = np.load

    def spy_load(*args, **kwargs):
        loads.append(kwargs.get("allow_pickle"))
        return real_load(*args, **kwargs)

    def no_pickle(*args, **kwargs):
        raise AssertionError("the cache unpickled something")

    monkeypatch.setattr(np, "load", spy_load)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    opened = HiddenStateCache(entry.path)
    hidden, mask = opened.padded(next(opened.batches(10_000)))
    assert loads and all(flag is False for flag in loads), loads
    assert hidden.shape[0] == len(TEXTS) and int(mask.sum()) == meta["total_tokens"]
    assert_same_entry(opened, fresh)


# -- meta.json is checked field by field, not trusted ---------------------------------

def _edit_meta(entry: Path, change, recompute_checksum: bool):
    """Apply ``change`` to meta.json; with ``recompute_checksum`` the checksum is made to
    match again (as a careful vandal would), so only the field checks can catch it."""
    import hashlib

    meta = json.loads((entry / "meta.json").read_text())
    meta = change(meta)
    if recompute_checksum and "checksum" in meta:
        body = {k: v for k, v in meta.items() if k != "checksum"}
        meta["checksum"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    (entry / "meta.json").write_text(json.dumps(meta, indent=2))


META_EDITS = {
    "layers swapped": lambda m: {**m, "layers": m["layers"][::-1]},
    "a layer's digit changed": lambda m: {**m, "layers": [m["layers"][0], m["layers"][1] + 4]},
    "layers given as a string": lambda m: {**m, "layers": "".join(map(str, m["layers"]))},
    "hidden_size's digit changed": lambda m: {**m, "hidden_size": m["hidden_size"] + 1},
    "num_texts's digit changed": lambda m: {**m, "num_texts": m["num_texts"] + 1},
    "total_tokens as a string": lambda m: {**m, "total_tokens": str(m["total_tokens"])},
    "the model in identity renamed": lambda m: {**m, "identity": {**m["identity"],
                                                                  "model": "other"}},
    "dtype changed": lambda m: {**m, "dtype": "fp32"},
}


@pytest.fixture(scope="module")
def fresh_two_layers(encoder, tmp_path_factory):
    entry, ran = encode_to_cache(encoder, TEXTS, tmp_path_factory.mktemp("fresh2"),
                                 max_texts=MAX_TEXTS, layers=[1, 2])
    assert ran
    return entry


@pytest.mark.parametrize("recompute", [False, True], ids=["plain edit", "checksum recomputed"])
@pytest.mark.parametrize("edit", list(META_EDITS))
def test_an_edited_meta_json_is_damage_and_the_entry_is_rebuilt(encoder, fresh_two_layers,
                                                                tmp_path, edit, recompute):
    root = tmp_path / "cache"
    entry, _ = encode_to_cache(encoder, TEXTS, root, max_texts=MAX_TEXTS, layers=[1, 2])
    _edit_meta(entry.path, META_EDITS[edit], recompute)
    with pytest.raises(CacheDamaged):
        HiddenStateCache(entry.path)
    messages = []
    rebuilt, ran = encode_to_cache(encoder, TEXTS, root, max_texts=MAX_TEXTS, layers=[1, 2],
                                   log=messages.append)
    assert ran and [m for m in messages if "damaged" in m], messages
    assert_same_entry(rebuilt, fresh_two_layers)
    assert rebuilt.layers == [1, 2]
    for layer in (1, 2):  # each layer's block is that layer's states
        assert np.array_equal(rebuilt.states(layer), fresh_two_layers.states(layer))


@pytest.mark.parametrize("where", ["entry", "partial"])
def test_a_file_where_an_entry_folder_belongs_is_replaced(encoder, fresh, tmp_path, where):
    """Damage that leaves a regular file at the entry's (or its partial's) path: the
    encoding still completes, and the next run is a cache hit."""
    root = tmp_path / "cache"
    root.mkdir()
    name = fresh.path.name + (".partial" if where == "partial" else "")
    (root / name).write_text("not a folder")
    entry, ran = _build(encoder, root)
    assert ran
    assert_same_entry(entry, fresh)
    assert sorted(p.name for p in root.iterdir()) == [fresh.path.name]
    again, ran = _build(encoder, root)
    assert not ran
