"""Pack what a lent GPU machine needs to continue the shipped student (issue 28 item 3), into gpu_carry/.

  python tools/gpu/pack.py [--data='runs/multi/*/train-*.tfrecord'] [--budget_mb=40] [--out=gpu_carry]

The device machine has PyTorch and JAX but no TensorFlow, cannot download anything, and receives at most 64 MiB
of working tree. So it trains with Keras 3 on the torch backend (the networks in mobiface_tf/models are pure
Keras), and this script carries:
  faces.bin + faces.npy   every training face as JPEG bytes (offsets in faces.npy), re-encoded at the highest
                          quality that keeps them under --budget_mb (the 20,693 faces at about 2 KB each)
  teacher.keras           the reference MobileFaceNet imported into Keras (mobiface_tf.importer: exact weights),
                          so the teacher runs on the GPU inside the step
  wheels/                 keras and the two packages it needs that the device image lacks (namex, optree),
                          for Python 3.12 (pip download; the registry is reachable from here, not from there)
gpu_carry/ is listed in .git/info/exclude (never committed). The student itself travels as the tracked
models/mobiface_student.keras. Run tools/gpu/run.sh there (its header gives the device call).
"""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[2]
FLAGS = flags.FLAGS
flags.DEFINE_string("data", "runs/multi/*/train-*.tfrecord", "The student's training shards (prepare_multisource).")
flags.DEFINE_string("teacher", "../shared/data/models/mobilefacenet_insightface_fp32.tflite", "Teacher to import.")
flags.DEFINE_string("out", "gpu_carry", "Folder to fill (added to .git/info/exclude).")
flags.DEFINE_float("budget_mb", 40.0, "Most MB of JPEG bytes for the faces.")
flags.DEFINE_string("faces_dir", "", "Instead of --data: a folder of aligned 112x112 face images (no TensorFlow "
                    "needed), e.g. for a CPU try-out.")
flags.DEFINE_string("teacher_keras", "", "Copy this .keras as the teacher instead of importing --teacher.")
flags.DEFINE_integer("max_faces", 0, "Pack only the first N faces (0: all; a small N for a CPU try-out).")
flags.DEFINE_boolean("wheels", True, "Download the keras / namex / optree wheels for Python 3.12.")


def _faces(pattern: str, limit: int) -> list[bytes]:
    import glob

    import tensorflow as tf

    from mobiface_tf.data.tfrecord import FEATURE_IMAGE

    files = sorted(glob.glob(pattern))
    if not files:
        raise ValueError(f"no shards match --data={pattern!r}; run tools/prepare_multisource.py first")
    out = []
    for rec in tf.data.TFRecordDataset(files):
        ex = tf.train.Example.FromString(rec.numpy())
        out.append(ex.features.feature[FEATURE_IMAGE].bytes_list.value[0])
        if limit and len(out) >= limit:
            break
    return out


def _reencode(jpegs: list[bytes], quality: int) -> list[bytes]:
    from PIL import Image

    out = []
    for b in jpegs:
        buf = io.BytesIO()
        Image.open(io.BytesIO(b)).convert("RGB").save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def main(argv):
    del argv
    import numpy as np

    out = ROOT / FLAGS.out
    out.mkdir(parents=True, exist_ok=True)
    exclude = ROOT / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    line = f"/{FLAGS.out}/"
    if not exclude.is_file() or line not in exclude.read_text().splitlines():
        with exclude.open("a") as fh:
            fh.write(line + "\n")
    if FLAGS.faces_dir:
        files = sorted(p for p in Path(FLAGS.faces_dir).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        faces = [p.read_bytes() for p in files[:FLAGS.max_faces or None]]
    else:
        faces = _faces(FLAGS.data, FLAGS.max_faces)
    for quality in (90, 85, 80, 75, 70, 60, 50):
        packed = _reencode(faces, quality)
        size = sum(map(len, packed))
        if size <= FLAGS.budget_mb * 1e6:
            break
    else:
        raise ValueError(f"{len(faces)} faces do not fit {FLAGS.budget_mb} MB even at JPEG quality 50")
    offsets = np.cumsum([0] + [len(b) for b in packed]).astype(np.int64)
    (out / "faces.bin").write_bytes(b"".join(packed))
    np.save(out / "faces.npy", offsets)
    print(f"{len(packed)} faces, JPEG quality {quality}, {size / 1e6:.1f} MB")
    teacher = out / "teacher.keras"
    if FLAGS.teacher_keras:
        import shutil

        shutil.copyfile(FLAGS.teacher_keras, teacher)
    elif not teacher.is_file():
        subprocess.run([sys.executable, "-m", "mobiface_tf.import_model", f"--source={FLAGS.teacher}",
                        f"--output={teacher}"], cwd=ROOT, check=True)
    if FLAGS.wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                        "--platform", "any", "-d", str(out / "wheels"), "keras==3.15.1", "namex==0.1.0",
                        "optree==0.20.0"], check=True)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {total / 2**20:.1f} MiB to carry (the limit is 64 MiB with the rest of the tree)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    app.run(main)
