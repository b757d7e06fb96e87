"""Tiny random models of every text architecture the installed transformers has, built
offline, and what poolkit makes of each: the architecture matrix.

``text_architectures()`` enumerates the model types of ``AutoModel`` that have a masked-LM
or sequence-classification head (text models), split into encoders and decoder-only ones
(encoder-decoder models are left out: poolkit refuses them). ``build(model_type, folder,
tokenizer_dir)`` saves a tiny random one with the tiny WordPiece tokenizer of the tests;
``try_architecture`` pools a few texts with every fixed pooler and reports each outcome.

    python tests/helpers/architectures.py OUT.md   # the README's table, measured
"""

import json
import shutil
import sys
import warnings
from pathlib import Path

#: Sizes every tiny model takes, under whichever name its config gives them.
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
             intermediate_size=48, max_position_embeddings=128, embedding_size=32,
             head_dim=8, d_model=32, n_layer=2, n_head=4, n_embd=32, dim=32, n_layers=2,
             n_heads=4, hidden_dim=48, n_positions=128, ffn_dim=48, moe_intermediate_size=16,
             shared_expert_intermediate_size=16, num_experts=4, num_local_experts=4,
             n_routed_experts=4, num_experts_per_tok=2,
             # latent attention (DeepSeek, MiniCPM3) and partial rotary (GPT-J) at head size 8
             qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, kv_lora_rank=16,
             q_lora_rank=16, rotary_dim=8,
             # hybrids: one full-attention layer of the two (Qwen3-Next, Jamba)
             full_attention_interval=2, attn_layer_period=2, attn_layer_offset=1,
             # Reformer's axial positions: 8 x 16 = 128 positions, 16 + 16 = 32 dims
             axial_pos_shape=(8, 16), axial_pos_embds_dim=(16, 16), attention_head_size=8,
             feed_forward_size=48)
#: Architectures that cannot run on token ids alone, with why (not skipped silently).
NEEDS_MORE = {
    "tapas": "TAPAS encodes tables: its tokenizer and inputs carry row and column ids",
    "perceiver": "Perceiver's text model reads UTF-8 bytes through its own preprocessor",
    "canine": "CANINE reads Unicode code points, not a WordPiece vocabulary",
    "luke": "LUKE's model wants entity inputs besides the words",
    "lilt": "LiLT reads a layout stream (each token's bounding box) beside the text",
    "layoutlmv2": "LayoutLMv2 needs an image and a detectron2 backbone",
    "layoutlmv3": "LayoutLMv3 needs page images with its boxes",
    "modernvbert": "a vision-language model: it wants images with its text",
    "ultravbert": "a vision-language model: it wants images with its text",
}


#: Built tiny, but failing to encode, with why (each a one-line error naming the model).
KNOWN_FAILURES = {
    "reformer": "its states are two streams, twice hidden_size wide: the cache refuses them",
    "xmod": "X-MOD wants a language adapter chosen first (set_default_language)",
    "axk1": "the tiny config's latent-attention sizes do not fit it",
    "qwen3_5_text": "its two tiny layers are both linear attention (a real one has full "
                    "attention layers too)",
    "qwen3_next": "its two tiny layers are both linear attention (a real one has full "
                  "attention layers too)",
}


def text_architectures() -> tuple:
    """``(encoders, decoders)``: sorted model types of ``AutoModel`` with a text head."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
        MODEL_MAPPING_NAMES,
    )

    text = (set(MODEL_FOR_MASKED_LM_MAPPING_NAMES)
            | set(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES))
    encoders, decoders = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for model_type in sorted(t for t in MODEL_MAPPING_NAMES if t in text):
            try:
                config = CONFIG_MAPPING[model_type]()
            except Exception:  # noqa: BLE001 - listed with the reason when built
                config = None
            if config is not None and getattr(config, "is_encoder_decoder", False):
                continue
            causal = (model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
                      and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)
            (decoders if causal else encoders).append(model_type)
    return encoders, decoders


def build(model_type: str, folder: Path, tokenizer_dir: Path) -> Path:
    """A tiny random ``model_type`` saved in ``folder`` with the tokenizer files of
    ``tokenizer_dir`` (vocabulary size taken from them)."""
    import inspect

    import torch
    from transformers import AutoModel
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type in NEEDS_MORE:
        raise NotImplementedError(NEEDS_MORE[model_type])
    vocab = len((tokenizer_dir / "vocab.txt").read_text().split())
    cls = CONFIG_MAPPING[model_type]
    if getattr(cls, "sub_configs", None):  # its towers keep their full default sizes
        raise NotImplementedError("a composite config (its text model's and other towers' "
                                  f"configs: {', '.join(cls.sub_configs)}): not built tiny here")
    accepted = set(inspect.signature(cls.__init__).parameters) | set(cls.attribute_map)
    sizes = {k: v for k, v in SIZES.items() if k in accepted and v is not None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = cls(vocab_size=vocab, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                     **sizes)
        torch.manual_seed(0)
        model = AutoModel.from_config(config)
    folder.mkdir(parents=True, exist_ok=True)
    for file in tokenizer_dir.iterdir():
        if file.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(file, folder / file.name)
    model.eval().save_pretrained(folder)
    return folder


def try_architecture(model_type: str, root: Path, tokenizer_dir: Path, poolers) -> dict:
    """What poolkit makes of a tiny ``model_type``: ``{"built": reason or None, "pooled":
    {pooler: None or the one-line reason it failed}, "token_type_ids", "pooler weights",
    "attention", "causal"}``."""
    import poolkit
    from poolkit.encoding.model import load_encoder
    from poolkit.errors import PoolkitError, one_line

    row = {"type": model_type, "built": None, "pooled": {}}
    try:
        folder = build(model_type, root / model_type, tokenizer_dir)
    except Exception as exc:  # noqa: BLE001 - the matrix lists why
        row["built"] = one_line(exc)[:160]
        return row
    try:
        encoder = load_encoder(str(folder))
        encoder.model  # noqa: B018 - loads it, with transformers' attention choice
    except PoolkitError as exc:
        row["built"] = str(exc)[:160]
        return row
    except Exception as exc:  # noqa: BLE001 - a traceback: the matrix test names it
        row["built"] = f"not one line: {one_line(exc)}"[:160]
        return row
    row.update(causal=encoder.causal, attention=encoder.attention,
               token_types=encoder.token_types,
               pooler_weights=encoder.weights("pooler.dense") is not None)
    texts = ["the movie was good", "a very dull and boring story , really",
             "fun", "it was not bad but not great either"]
    for name in poolers:
        try:
            features = poolkit.pool(texts, [name], model=str(folder), cache_dtype="fp32",
                                    cache_dir=root / "cache")[name]
            ok = features.shape[0] == len(texts) and bool((features == features).all())
            row["pooled"][name] = None if ok else "NaN in the features"
        except PoolkitError as exc:
            row["pooled"][name] = str(exc)
        except Exception as exc:  # noqa: BLE001 - a traceback: the matrix test names it
            row["pooled"][name] = f"not one line: {one_line(exc)}"
    return row


def markdown(rows: list) -> str:
    """The README's table of ``rows`` (from :func:`try_architecture`)."""
    lines = ["| architecture | attention | loads | SDPA or eager | token_type_ids | pooler "
             "weights (`bert_pooler`) | fixed poolers that pool | notes |",
             "|:--|:--|:--|:--|:--|:--|:--|:--|"]
    for row in rows:
        if row["built"]:
            lines.append(f"| {row['type']} | | not built tiny | | | | | {row['built']} |")
            continue
        pooled = [p for p, why in row["pooled"].items() if why is None]
        failed = {p: why for p, why in row["pooled"].items()
                  if why is not None and p != "bert_pooler"}
        reasons = sorted({why.partition(": ")[2] or why for why in failed.values()})
        if row["type"] in KNOWN_FAILURES:
            notes = f"fails to encode, one line naming the model: {KNOWN_FAILURES[row['type']]}"
        else:
            notes = "; ".join(f"{', '.join(p for p, why in failed.items() if reason in why)}: "
                              f"{reason[:110]}" for reason in reasons)
        lines.append(f"| {row['type']} | {'causal' if row['causal'] else 'both ways'} | yes | "
                     f"{row['attention']} | {'yes' if row['token_types'] else 'no'} | "
                     f"{'yes' if row['pooler_weights'] else 'no'} | "
                     f"{len(pooled)} of {len(row['pooled'])} | {notes} |")
    return "\n".join(lines) + "\n"


def main(out: str) -> None:
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from conftest import FIXED_POOLERS, WORDS  # noqa: E402 - the tests' own tiny vocabulary
    from transformers import BertTokenizerFast

    encoders, decoders = text_architectures()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_dir = Path(tmp) / "tokenizer"
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, ".", ","]
        BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)},
                          do_lower_case=True).save_pretrained(tokenizer_dir)
        (tokenizer_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
        for kind, types in (("encoder", encoders), ("decoder", decoders)):
            for model_type in types:
                row = try_architecture(model_type, Path(tmp), tokenizer_dir, FIXED_POOLERS)
                row["kind"] = kind
                rows.append(row)
                print(model_type, row["built"] or {p: w is None for p, w in row["pooled"].items()},
                      flush=True)
    Path(out).write_text(markdown(rows))
    Path(out).with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
