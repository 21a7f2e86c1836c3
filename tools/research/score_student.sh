#!/usr/bin/env bash
# Ship and score the student of one training run (issue 28): copy its embedding.keras to models/, export fp32 and
# int8 TFLite, score all three on people it never saw, and write every report under runs/score/.
#
#   bash tools/research/score_student.sh [RUN_DIR=runs/student] [PARTS="lfw ident bench cfp"]
#
# PARTS picks what to score (each is minutes on 2 cores): lfw = held-out LFW folds 1-3 (flip) for the .keras,
# fp32 and int8 files (the fp32 run writes the threshold sidecar the CLIs read); ident = rank-1 / TAR@FAR of the
# held-out LFW probes against the 12.8k LFW distractors; bench = fp32 vs int8 latency in one bench run; cfp =
# CFP-FF / CFP-FP on CFP_FOLDS (default folds 1,2), student and teacher (crops cached in runs/cfp_align).
# Then: python tools/research/student_card.py --run_dir=RUN_DIR (writes models/mobiface_student.json).
set -euo pipefail
RUN=${1:-runs/student}
PARTS=${2:-"lfw ident openset bench"}
DATA=../shared/data
OUT=runs/score
mkdir -p "$OUT" models
K=models/mobiface_student.keras
F=models/mobiface_student_fp32.tflite
Q=models/mobiface_student_int8.tflite
CAL="runs/multi/*/train-*.tfrecord"

if [ "${EXPORT:-1}" = 1 ]; then  # EXPORT=0: score the files already in models/ (e.g. parts run in parallel)
  cp "$RUN/embedding.keras" "$K.tmp" && mv "$K.tmp" "$K"
  python tools/to_tflite.py --model="$K" --output="$F" --parity_images="$CAL" --noprogress
  python tools/to_tflite.py --model="$K" --output="$Q" --quantize=int8 --calibration="$CAL" --num_calibration=200 \
      --parity_images="$CAL" --noprogress
fi

for part in $PARTS; do
  case $part in
    lfw)
      python tools/evaluate.py --model="$F" --lfw_dir=$DATA/lfw/lfw-112x112 --pairs=$DATA/lfw/pairs.txt \
          --folds=1,2,3 --flip --output=$OUT/lfw_fp32.json --noprogress
      for m in "$K" "$Q"; do
        python tools/evaluate.py --model="$m" --lfw_dir=$DATA/lfw/lfw-112x112 --pairs=$DATA/lfw/pairs.txt \
            --folds=1,2,3 --flip --nowrite_sidecar --output=$OUT/lfw_$(basename "$m" | tr . _).json --noprogress
      done ;;
    ident)
      python - <<'EOF'
# the held-out probe tree: LFW people of View 2 folds 1-3 (never trained on), as symlinks
from pathlib import Path
from mobiface_tf.data.verification import lfw_fold_identities
lfw = Path("../shared/data/lfw/lfw-112x112").resolve()
out = Path("runs/heldout_probes")
for name in sorted(lfw_fold_identities("../shared/data/lfw/pairs.txt", [1, 2, 3])):
    if (lfw / name).is_dir() and not (out / name).exists():
        out.mkdir(parents=True, exist_ok=True)
        (out / name).symlink_to(lfw / name)
EOF
      python tools/bench_identify.py --model="$F" --probes=runs/heldout_probes --distractors=$DATA/lfw/lfw-112x112 \
          --far=1e-6,1e-5,1e-4,1e-3 --threads=2 --noprogress --output=$OUT/ident_fp32.json ;;
    bench)
      python tools/bench.py --models=mobiface_gdc --quantize=none --extra_tflite="$F,$Q" --threads=1,2 --runs=${BENCH_RUNS:-30} \
          --output_dir=$OUT/bench --calibration="$CAL" ;;
    openset)
      # issue 25's tool on aligned crops: held-out LFW people (never trained on) and celeba_small_112 (the
      # student TRAINED on every celeba_small person: memorisation, not generalisation); teacher beside it
      for m in "$F" $DATA/models/mobilefacenet_insightface_fp32.tflite; do
        python tools/research/open_set_celeba.py --model="$m" --data=runs/heldout_probes --aligned \
            --out=runs/open_set_lfw --json_out=$OUT/openset_lfw_$(basename "$m" .tflite).json
        if [ "${OPENSET_CELEBA:-0}" = 1 ]; then
          python tools/research/open_set_celeba.py --model="$m" --data=$DATA/celeba_small_112 --aligned \
              --out=runs/open_set_celeba112 --json_out=$OUT/openset_celeba_$(basename "$m" .tflite).json
        fi
      done ;;
    cfp)
      # CFP_FOLDS (default 1,2; cross-validation needs two): all 10 folds MTCNN-align 7,000 photos, about half an hour on 2 cores; the crops
      # are cached, so the teacher's run after the student's reuses them
      for m in "$F" $DATA/models/mobilefacenet_insightface_fp32.tflite; do
        python tools/evaluate.py --model="$m" --cfp_dir=$DATA/cfp --cfp_protocol=FF,FP --flip \
            --folds=${CFP_FOLDS:-1,2} --align_cache=runs/cfp_align --nowrite_sidecar \
            --output=$OUT/cfp_$(basename "$m" .tflite).json --noprogress
      done ;;
    *) echo "error: unknown part $part (lfw, ident, bench, cfp)" >&2; exit 2 ;;
  esac
done
