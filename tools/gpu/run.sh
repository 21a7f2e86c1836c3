#!/usr/bin/env bash
# On the lent GPU machine (issue 28 item 3): continue the shipped student for MINUTES (default 7) with Keras 3 on
# the torch backend, and leave OUT/student.keras + OUT/train_log.json. Prepare here first, once:
#   python tools/gpu/pack.py            # gpu_carry/: faces, the teacher as .keras, the keras wheels
# The device call (one, within the 10-minute command limit):
#   run(command="bash tools/gpu/run.sh", carry=["gpu_carry"], timeout_s=600)
# Back here, with the files it returned under FILES_AT:
#   mkdir -p runs/gpu && cp FILES_AT/student.keras runs/gpu/embedding.keras && cp FILES_AT/train_log.json runs/gpu/
#   bash tools/research/score_student.sh runs/gpu && python tools/research/student_card.py --gpu_log=runs/gpu/train_log.json
set -euo pipefail
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    gpu_carry/wheels/*.whl
export PYTHONPATH=/tmp/site KERAS_BACKEND=torch PYTHONUNBUFFERED=1
python3 tools/gpu/train_torch.py --carry=gpu_carry --init=models/mobiface_student.keras \
    --minutes="${MINUTES:-7}" --out="${OUT:-gpu_out}" "$@"
