#!/usr/bin/env bash
# The whole path on SYNTHETIC identities, in <= 10 minutes on 2 CPU cores (`make quickstart`):
#   generate identities -> prepare (tools/prepare_data.py) -> verification BEFORE training (random init)
#   -> train (configs/quickstart.flags) -> verification AFTER training on held-out identities
#   -> to_tflite -> bench; prints the bench table and both verification accuracies at the end.
# The data is generated, not real faces: the accuracies say the pipeline works, nothing about real faces.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=quickstart_out
export TF_CPP_MIN_LOG_LEVEL=2
START=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - START )) s] $*"; }

rm -rf "$OUT"
mkdir -p "$OUT"

step "1/6 synthetic identities: 50 for training (12 images each), 20 held-out (6 images each) + LFW-style pairs"
"$PY" - <<'EOF'
from pathlib import Path
from mobiface_tf.data import synthetic

out = Path("quickstart_out")
synthetic.write_synthetic_folder(out / "train_images", num_identities=50, images_per_identity=12, seed=0)
# Held-out identities come from another seed, so they are different people from the training ones.
held = out / "heldout"
folds, per_class = 10, 30
synthetic.write_synthetic_lfw(held, out / "heldout_pairs.txt", num_identities=20, images_per_identity=6,
                              num_folds=folds, pairs_per_class=per_class, seed=1, pairs_seed=0)
print(f"wrote {out}/train_images (50 ids x 12), {held} (20 ids x 6), {out}/heldout_pairs.txt "
      f"({folds * 2 * per_class} pairs)")
EOF

step "2/6 prepare: tools/prepare_data.py --align=none (synthetic crops are already aligned)"
"$PY" tools/prepare_data.py --input="$OUT/train_images" --output="$OUT/train_tfr" --align=none --shards=4 \
  --workers=2 --progress=false

step "3/6 verification BEFORE training (random-init MobiFace gdc, same architecture)"
"$PY" - <<'EOF'
import keras
from mobiface_tf.training.model import build_backbone
keras.utils.set_random_seed(0)
build_backbone("mobiface", 512, "gdc").save("quickstart_out/untrained.keras")
EOF
"$PY" tools/evaluate.py --model="$OUT/untrained.keras" --lfw_dir="$OUT/heldout" --pairs="$OUT/heldout_pairs.txt" \
  --output="$OUT/eval_before.json" --write_sidecar=false --progress=false

step "4/6 train: python -m mobiface_tf.train --flagfile=configs/quickstart.flags"
TRAIN_T0=$(date +%s)
"$PY" -m mobiface_tf.train --flagfile=configs/quickstart.flags --model_dir="$OUT/model" --data="$OUT/train_tfr"
TRAIN_S=$(( $(date +%s) - TRAIN_T0 ))

step "5/6 verification AFTER training, on the held-out identities"
"$PY" tools/evaluate.py --model="$OUT/model/embedding.keras" --lfw_dir="$OUT/heldout" \
  --pairs="$OUT/heldout_pairs.txt" --output="$OUT/eval_after.json" --progress=false

step "6/6 export + bench: tools/to_tflite.py, tools/bench.py"
"$PY" tools/to_tflite.py --model="$OUT/model/embedding.keras" --output="$OUT/mobiface_quickstart.tflite" \
  --quantize=none --parity_images="$OUT/heldout"
"$PY" tools/bench.py --models=mobiface_gdc,mobilefacenet --quantize=none,dynamic --threads=1,2 --runs=20 \
  --warmup=3 --calibration="$OUT/train_tfr" --extra_tflite="$OUT/mobiface_quickstart.tflite" \
  --output_dir="$OUT/bench" > "$OUT/bench.log" 2>&1 || { cat "$OUT/bench.log"; exit 1; }

step "summary"
cat "$OUT/bench/results.md"
"$PY" - "$TRAIN_S" <<'EOF'
import json, sys
before = json.load(open("quickstart_out/eval_before.json"))
after = json.load(open("quickstart_out/eval_after.json"))
print(f"\nVerification on 20 held-out SYNTHETIC identities ({after['num_pairs']} pairs, 10-fold):")
print(f"  before training (random init): {before['accuracy']:.4f} +- {before['accuracy_std']:.4f}")
print(f"  after training ({sys.argv[1]} s):      {after['accuracy']:.4f} +- {after['accuracy_std']:.4f}")
EOF
echo "quickstart total wall time: $(( $(date +%s) - START )) s"
