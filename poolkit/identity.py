"""What a run's results depend on, and the names poolkit derives from it.

:class:`RunIdentity` owns the three: the default run folder (from the options
that change results), the cache entry key (the encoder and the texts) and the
key under which a run directory's finished heads are reused (the entry, the
labels and splits, the head settings). Output-only options (``--out``,
``--cache-dir``, ``--predictions``, ``--plot``, ``--pooler-timeout``, export
choices) take no part: adding one to a finished command reuses its folder and
trains nothing.
"""

import hashlib
import inspect
import json
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

import numpy as np

from poolkit.version import __version__

#: Bump when the cache's on-disk format changes: old entries are then re-encoded.
CACHE_FORMAT = 4
#: The folder default run directories go in.
RUNS_FOLDER = Path("poolkit-runs")


def digest(value) -> str:
    """sha256 of ``value`` as canonical JSON (sorted keys; dataclasses as dicts)."""
    def plain(obj):
        return asdict(obj) if is_dataclass(obj) else str(obj)

    return hashlib.sha256(json.dumps(value, sort_keys=True, default=plain).encode()).hexdigest()


def texts_digest(texts) -> str:
    """sha256 over the texts in order (length-prefixed, so boundaries count). A pair
    ``(text, text_pair)`` hashes as a marker and its two texts: pairs never hash as
    the single texts they are made of, nor as the same pairs joined otherwise."""
    hashed = hashlib.sha256()
    for text in texts:
        parts = text if isinstance(text, tuple) else (text,)
        if isinstance(text, tuple):
            hashed.update(b"\xffpair")
        for part in parts:
            data = part.encode("utf-8")
            hashed.update(len(data).to_bytes(8, "little"))
            hashed.update(data)
    return hashed.hexdigest()


def splits_digest(dataset) -> str:
    """sha256 over every fold's split names and index arrays."""
    hashed = hashlib.sha256()
    for number, fold in enumerate(dataset.folds):
        if number:  # (a single split hashes as it did before folds existed)
            hashed.update(f"fold {number}".encode())
        for name in sorted(fold):
            hashed.update(name.encode() + np.ascontiguousarray(fold[name]).tobytes())
    return hashed.hexdigest()


def pooler_fingerprint(pooler) -> str:
    """Hash of the pooler's class and the source file that defines it: a saved head
    is reused only while its plugin's code is unchanged."""
    cls = type(pooler)
    hashed = hashlib.sha256(f"poolkit {__version__} {cls.__module__}.{cls.__qualname__}".encode())
    try:
        hashed.update(Path(inspect.getsourcefile(cls)).read_bytes())
    except (TypeError, OSError):  # defined interactively: no file to hash
        hashed.update(repr(sorted(vars(cls))).encode())
    return hashed.hexdigest()


@dataclass(frozen=True)
class RunIdentity:
    """A run's identity: ``options`` are the options its results depend on
    (:meth:`~poolkit.config.RunConfig.results_options`)."""

    options: dict

    @classmethod
    def of(cls, config) -> "RunIdentity":
        return cls(config.results_options())

    def folder(self) -> Path:
        """``poolkit-runs/<data name>-<hash>``: the same command (up to output-only
        options) names the same folder, so running it again reuses its heads."""
        data = self.options.get("data")
        stem = Path(data).name.split(".")[0] if data else "rotten_tomatoes"
        return RUNS_FOLDER / f"{stem}-{digest(self.options)[:8]}"

    @staticmethod
    def entry_key(encoder: dict, texts, compute: str, dtype: str) -> tuple[str, dict]:
        """``(key, identity)`` of the cache entry of ``texts`` under an encoder whose
        :meth:`~poolkit.encoding.model.Encoder.identity` is ``encoder``, computed in ``compute``
        precision and stored as ``dtype``. ``identity`` is what the entry records."""
        identity = {**encoder, "texts": texts_digest(texts), "num_texts": len(texts),
                    "compute": compute}
        return RunIdentity.key_of_entry(identity, dtype), identity

    @staticmethod
    def key_of_entry(identity: dict, dtype: str) -> str:
        """The key an entry recorded as ``identity`` and ``dtype`` is found under."""
        return digest({"format": CACHE_FORMAT, **identity, "dtype": dtype})[:32]

    def heads_key(self, entry_key: str, dataset) -> str:
        """Everything besides the feature set and seed that a head's result depends on:
        the entry's key (not its layers: adding layers keeps finished heads), the labels,
        the splits and the head settings."""
        head = {"cache": entry_key, "labels": dataset.label_names,
                "head": asdict(self.options["head"])}
        if self.options.get("protocol", "default") != "default":  # another recipe, other heads
            head["protocol"] = self.options["protocol"]
        if self.options.get("finetune") is not None:  # (a frozen run's heads keep their key)
            head["finetune"] = asdict(self.options["finetune"])
            head["precision"] = self.options.get("precision")
        hashed = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
        hashed.update(np.ascontiguousarray(dataset.labels).tobytes())
        hashed.update(splits_digest(dataset).encode())
        return hashed.hexdigest()
