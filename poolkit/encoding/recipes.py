"""A sentence-transformers folder's own recipe: how its model was trained to be used.

Such a folder (``modules.json``) says which module holds the transformer, how its
token states are pooled (``1_Pooling/config.json``), how many tokens a text keeps
(``sentence_bert_config.json``, or the tokenizer's ``model_max_length`` in newer
folders), whether embeddings are normalized, and which prompts it knows
(``config_sentence_transformers.json``). :func:`read_recipe` reads them without
importing sentence-transformers; the encoder uses the length and the prompts, and
the run marks the pooler the model was trained with.
"""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from poolkit.errors import PoolkitError

#: sentence-transformers' pooling modes -> poolkit's pooler of the same computation.
#: Keys are the new ``pooling_mode`` names; the old boolean keys map through ``_OLD_KEYS``.
POOLING_MODES = {"cls": "cls", "mean": "mean", "max": "max",
                 "mean_sqrt_len_tokens": "mean_sqrt_len", "weightedmean": "weighted_mean",
                 "lasttoken": "last_token"}
_OLD_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
             "pooling_mode_max_tokens": "max",
             "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
             "pooling_mode_weightedmean_tokens": "weightedmean",
             "pooling_mode_lasttoken": "lasttoken"}
#: Module classes poolkit follows (the transformer, its pooling, the normalization).
_FOLLOWED = ("Transformer", "Pooling", "Normalize")
#: A prompt given by name: what a named prompt looks like (a literal has a space or ':').
_PROMPT_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass
class Recipe:
    """What a sentence-transformers folder says of its model's use."""

    #: the subfolder holding the transformer ("" for the folder itself)
    transformer: str = ""
    #: poolkit's pooler computing the folder's pooling (``None``: a mode poolkit lacks)
    pooling: str | None = None
    #: the folder's pooling mode(s), as it names them
    pooling_mode: str | None = None
    #: tokens per text (``None``: the tokenizer's own limit applies)
    max_seq_length: int | None = None
    normalize: bool = False
    prompts: dict = field(default_factory=dict)
    default_prompt_name: str | None = None
    #: whether the pooling includes the prompt's tokens
    include_prompt: bool = True
    #: one line per module or setting poolkit does not follow
    notes: list = field(default_factory=list)

    def prompt(self, given: str | None) -> str | None:
        """The text to prepend for ``--prompt given``: a prompt the folder names, else
        ``given`` itself when it reads as a text (a space or a ':' in it); a bare word
        the folder lacks is an error. Without ``given``, the folder's default prompt."""
        if given is None:
            return self.prompts.get(self.default_prompt_name) if self.default_prompt_name \
                else None
        if given in self.prompts:
            return self.prompts[given]
        if _PROMPT_NAME.fullmatch(given):
            known = ", ".join(sorted(self.prompts)) if self.prompts else "none"
            raise PoolkitError(f"--prompt {given}: the model names no prompt '{given}' (its "
                               f"prompts: {known}); to prepend a text, give it with its "
                               f"space or colon, e.g. --prompt '{given}: '")
        return given


def read_recipe(folder) -> Recipe | None:
    """The recipe of the sentence-transformers folder ``folder``; ``None`` when it has
    no ``modules.json``. A module poolkit does not follow is a note, not an error."""
    folder = Path(folder)
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except OSError:
        return None
    except ValueError as exc:
        raise PoolkitError(f"{folder / 'modules.json'} is not JSON: {exc}") from None
    recipe = Recipe()
    if not isinstance(modules, list):
        recipe.notes.append("modules.json is not a list of modules: the folder's recipe is "
                            "not followed")
        return recipe
    for module in sorted((m for m in modules if isinstance(m, dict)),
                         key=lambda m: m.get("idx", 0)):
        kind = str(module.get("type", "")).rpartition(".")[2]
        path = folder / str(module.get("path", ""))
        if kind == "Transformer":
            recipe.transformer = str(module.get("path", ""))
            length = _json(path / "sentence_bert_config.json").get("max_seq_length")
            if isinstance(length, int) and length > 0:
                recipe.max_seq_length = length
        elif kind == "Pooling":
            _read_pooling(recipe, _json(path / "config.json"))
        elif kind == "Normalize":
            recipe.normalize = True
        else:
            recipe.notes.append(f"its module {module.get('path') or module.get('name')} "
                                f"({module.get('type')}) is not followed: poolkit pools the "
                                "transformer's token states")
    settings = _json(folder / "config_sentence_transformers.json")
    prompts = settings.get("prompts")
    if isinstance(prompts, dict):
        recipe.prompts = {str(k): str(v) for k, v in prompts.items()}
    default = settings.get("default_prompt_name")
    if isinstance(default, str) and default in recipe.prompts:
        recipe.default_prompt_name = default
    return recipe


def _read_pooling(recipe: Recipe, config: dict) -> None:
    mode = config.get("pooling_mode")
    modes = ([mode] if isinstance(mode, str) else list(mode) if isinstance(mode, list)
             else [name for key, name in _OLD_KEYS.items() if config.get(key)])
    recipe.pooling_mode = "+".join(map(str, modes)) or None
    recipe.include_prompt = bool(config.get("include_prompt", True))
    if not recipe.include_prompt:
        recipe.notes.append("its pooling leaves a prompt's tokens out; poolkit's poolers pool "
                            "every token, a prompt's too")
    if len(modes) == 1 and modes[0] in POOLING_MODES:
        recipe.pooling = POOLING_MODES[modes[0]]
    elif modes:
        recipe.notes.append(f"its pooling ({recipe.pooling_mode}) is not one of poolkit's "
                            "poolers: no pooler is marked as the model's own")


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
