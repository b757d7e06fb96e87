"""Use the winner, end to end: predict 20 new sentences, export two sets, load them without poolkit.

On a finished run directory (default: the default run's): ``poolkit predict`` on 20
sentences written for this check (with the label names it prints), ``export-model
--format hf`` of ``bert_pooler@6`` and ``--format sentence-transformers`` of ``mean@6``,
then, in a virtual environment that has torch, transformers and sentence-transformers
but not poolkit (``--venv``), ``pipeline("text-classification")`` and
``SentenceTransformer(DIR).encode`` on the same sentences; prints the largest logit
difference of each against poolkit's own model of the set.

    python benchmarks/use_the_winner.py RUN_DIR --venv /tmp/venv-use [--out /tmp/use]
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SENTENCES = [
    "A warm, funny and sharply written film that earns every one of its tears.",
    "Two hours of my life I will never get back.",
    "The performances are terrific, even when the script lets them down.",
    "A tedious, joyless slog through every cliche of the genre.",
    "It is smart, gorgeous to look at and surprisingly moving.",
    "The jokes land with a thud and the plot makes no sense at all.",
    "One of the most charming comedies of the year.",
    "Dull, overlong and badly acted.",
    "A gripping thriller that never lets go of you.",
    "The director seems to have lost interest halfway through.",
    "An intelligent, beautifully observed portrait of a family in crisis.",
    "Loud, dumb and instantly forgettable.",
    "Funny, tender and wise: a small miracle of a movie.",
    "The sequel nobody asked for, and it shows.",
    "Its ambition outstrips its execution, but it is never boring.",
    "A mess of half-baked ideas and wooden dialogue.",
    "The cast is wonderful and the music is even better.",
    "I laughed once, and I think it was by accident.",
    "A bold, original and thoroughly entertaining ride.",
    "Pretentious, confused and in love with its own cleverness.",
]

FOREIGN = r"""
import json, sys
import numpy as np
try:
    import poolkit  # noqa: F401
    sys.exit("poolkit is importable here; this check needs an environment without it")
except ImportError:
    pass
import torch
from transformers import pipeline
from sentence_transformers import SentenceTransformer
hf, st, texts = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
classify = pipeline("text-classification", model=hf, device="cpu")
scored = classify(texts, truncation=True, top_k=None, function_to_apply="none")
labels = classify.model.config.id2label
logits = [[{r["label"]: r["score"] for r in row}[labels[i]] for i in range(len(labels))]
          for row in scored]
encoded = SentenceTransformer(st, device="cpu").encode(texts)
json.dump({"hf": logits, "hf_labels": [labels[i] for i in range(len(labels))],
           "st": np.asarray(encoded, dtype=float).tolist(),
           "st_labels": json.load(open(st + "/poolkit.json"))["labels"]}, sys.stdout)
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--venv", type=Path, required=True,
                        help="a virtual environment with torch, transformers and "
                             "sentence-transformers, without poolkit")
    parser.add_argument("--out", type=Path, default=Path("/tmp/use-the-winner"))
    parser.add_argument("--hf-set", default="bert_pooler@6")
    parser.add_argument("--st-set", default="mean@6")
    args = parser.parse_args()

    import shutil

    import poolkit
    from poolkit.winner.export_model import export_model
    from poolkit.winner.final import predictions_frame

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    began = time.perf_counter()
    best = poolkit.load(args.run_dir, log=print)
    table = predictions_frame(best, SENTENCES)
    print(f"predict with {best.set_id} ({time.perf_counter() - began:.1f} s, final head "
          "included); labels " + ", ".join(f"{i}={n}" for i, n in enumerate(best.classes_)))
    print(table.to_markdown(index=False, floatfmt=".3f"))
    for fmt, set_id in (("hf", args.hf_set), ("sentence-transformers", args.st_set)):
        export_model(args.run_dir, set_id, args.out / fmt, fmt, log=print)
    ours = {fmt: poolkit.load(args.run_dir, set_id).logits(SENTENCES)
            for fmt, set_id in (("hf", args.hf_set), ("st", args.st_set))}
    (args.out / "texts.json").write_text(json.dumps(SENTENCES))
    script = args.out / "foreign.py"
    script.write_text(FOREIGN)
    done = subprocess.run([str(args.venv / "bin" / "python"), "-I", str(script),
                           str(args.out / "hf"), str(args.out / "sentence-transformers"),
                           str(args.out / "texts.json")], capture_output=True, text=True,
                          cwd=args.out)
    if done.returncode:
        sys.exit(f"the environment without poolkit failed:\n{done.stderr[-3000:]}")
    theirs = json.loads(done.stdout)
    for fmt, set_id, loader in (("hf", args.hf_set, 'pipeline("text-classification")'),
                                ("st", args.st_set, "SentenceTransformer(DIR).encode")):
        gap = np.abs(np.asarray(theirs[fmt]) - ours[fmt]).max()
        agree = (np.asarray(theirs[fmt]).argmax(1) == ours[fmt].argmax(1)).mean()
        print(f"{set_id} via {loader} without poolkit: labels {theirs[fmt + '_labels']}, max "
              f"|logit difference| vs poolkit {gap:.2e}, same label on {agree:.0%} of "
              f"{len(SENTENCES)} sentences")


if __name__ == "__main__":
    main()
