"""What the online teacher costs: student training img/s alone vs with function-matching distillation.

  python tools/research/bench_distill.py [--teacher=../shared/data/models/mobilefacenet_insightface_fp32.tflite]
      [--backbone=mobiface] [--batch_size=64] [--rounds=5] [--steps=12] [--teacher_threads=1]

A benchmark, not a test. Configurations, each timed for --steps training steps per round, interleaved round
by round in this one process (other jobs share the CPU, so only figures from the same rounds are compared):
  plain     today's input pipeline (random flip) -> one SGD step of the student on a cosine distillation loss
            against a fixed target (the cost of precomputed targets: they are read, not computed)
  augment   the same with the default augmentations and mixup (mobiface_tf.data.augment)
  online    augment + the online teacher embedding each augmented, mixed batch in the input pipeline
The first --skip steps of each segment are not timed (the iterator's prefetch buffer filled while other
configurations ran). Prints a Markdown table: median img/s per configuration, the per-round ratio online /
augment and online / plain, the student's and teacher's MACs, FLOPs per training image (3 x 2 x student MACs
for forward + backward, + 2 x teacher MACs) and the same-run numpy sgemm GFLOP/s at the same thread count.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[2]
FLAGS = flags.FLAGS
REFERENCE = ROOT / ".." / "shared" / "data" / "models" / "mobilefacenet_insightface_fp32.tflite"
flags.DEFINE_string("teacher", str(REFERENCE),
                    "Online teacher (.tflite / .onnx run in the input pipeline; .keras / SavedModel in the step).")
flags.DEFINE_string("lfw_dir", str(ROOT / ".." / "shared" / "data" / "lfw" / "lfw-112x112"),
                    "Folder of 112x112 JPEG faces <identity>/<image> written to temporary shards.")
flags.DEFINE_integer("num_images", 2048, "Faces written to the temporary shards.", lower_bound=128)
flags.DEFINE_string("backbone", "mobiface", "Student network (models.zoo name).")
flags.DEFINE_string("head", "gdc", "Student embedding head.")
flags.DEFINE_integer("embedding_dim", 128, "Student embedding size.")
flags.DEFINE_integer("batch_size", 64, "Training batch.", lower_bound=2)
flags.DEFINE_integer("rounds", 5, "Interleaved rounds.", lower_bound=1)
flags.DEFINE_integer("steps", 12, "Steps per configuration per round.", lower_bound=2)
flags.DEFINE_integer("skip", 2, "Untimed steps at the start of each segment.", lower_bound=0)
flags.DEFINE_integer("threads", 2, "TF intra-op threads (0: TF's default).", lower_bound=0)
flags.DEFINE_integer("teacher_threads", 1, "LiteRT / onnxruntime threads of the online teacher.", lower_bound=1)
flags.DEFINE_float("mixup", 0.5, "Mixup probability in the augment / online configurations.")
flags.DEFINE_list("configs", ["plain", "augment", "online"], "Configurations to time.")
flags.DEFINE_string("json_out", "", "Also write the figures to this JSON file.")


def _datasets(data: str, teacher, dim: int) -> dict:
    import tensorflow as tf

    from mobiface_tf.data.augment import AugmentConfig
    from mobiface_tf.data.pipeline import make_dataset

    aug = AugmentConfig(mixup=FLAGS.mixup)
    target = tf.math.l2_normalize(tf.random.stateless_normal([FLAGS.batch_size, dim], [0, 1]), axis=1)

    def fixed(images, labels):
        return images, labels, target

    common = dict(batch_size=FLAGS.batch_size, training=True, seed=0, shuffle_buffer=1024)
    made = {"plain": lambda: make_dataset(data, **common).map(fixed),
            "augment": lambda: make_dataset(data, augment=aug, **common).map(fixed),
            "online": lambda: make_dataset(data, augment=aug, teacher=teacher, **common)}
    return {name: made[name]() for name in FLAGS.configs}


def _student_step(dim_teacher: int):
    import keras
    import tensorflow as tf

    from mobiface_tf.training.model import build_backbone, make_optimizer
    from mobiface_tf.training.step import make_train_step

    keras.utils.set_random_seed(0)
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")  # what the trainer uses on one CPU
    with strategy.scope():
        backbone = build_backbone(FLAGS.backbone, FLAGS.embedding_dim, FLAGS.head)
        projection = None
        if dim_teacher != FLAGS.embedding_dim:
            projection = keras.layers.Dense(dim_teacher, use_bias=False, name="distill_projection")
            projection.build((None, FLAGS.embedding_dim))
        optimizer = make_optimizer(0.01, 0.9)
    step = make_train_step(strategy, backbone, None, optimizer, 5e-5, FLAGS.batch_size,
                           distill_weight=1.0, projection=projection)
    return backbone, step


def _segment(step, it) -> tuple[float, float]:
    """(img/s, CPU ms per image) over steps [skip, steps) of one segment. CPU time is this process's, all
    threads (tf.data, the teacher, the step): it holds when other jobs share the cores, where wall time does not."""
    for _ in range(FLAGS.skip):
        float(step(it)[-1])
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(FLAGS.steps - FLAGS.skip):
        out = step(it)
    float(out[-1])  # wait for the last step
    n = (FLAGS.steps - FLAGS.skip) * FLAGS.batch_size
    return n / (time.perf_counter() - t0), 1000 * (time.process_time() - c0) / n


def main(argv):
    del argv
    import tensorflow as tf

    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    from mobiface_tf.litert import cpu_info, cpu_label
    from mobiface_tf.models.macs import count_macs
    from mobiface_tf.peak import sgemm_gflops
    from mobiface_tf.teacher import OnlineTeacher

    if not Path(FLAGS.teacher).exists():
        print(f"error: teacher not found: {FLAGS.teacher}; pass --teacher=MODEL (.tflite, .onnx, .keras, SavedModel)",
              file=sys.stderr)
        return 2
    teacher = OnlineTeacher(FLAGS.teacher, num_threads=FLAGS.teacher_threads, batch_size=FLAGS.batch_size)
    if not teacher.in_pipeline and "online" in FLAGS.configs:
        print("error: this benchmark times pipeline teachers (.tflite / .onnx)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        from mobiface_tf.data.synthetic import write_benchmark_shards

        source = write_benchmark_shards(tmp, FLAGS.lfw_dir, FLAGS.num_images)
        datasets = _datasets(tmp, teacher, teacher.embedding_dim)
        backbone, step = _student_step(teacher.embedding_dim)
        iters = {name: iter(ds) for name, ds in datasets.items()}
        for name, it in iters.items():  # warm-up: trace the step, fill shuffle buffers
            for _ in range(2):
                float(step(it)[-1])
        rates, cpu_ms = {name: [] for name in iters}, {name: [] for name in iters}
        for r in range(FLAGS.rounds):
            for name, it in iters.items():
                rate, ms = _segment(step, it)
                rates[name].append(rate)
                cpu_ms[name].append(ms)
            print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.2f} img/s {cpu_ms[n][-1]:.0f} CPU ms/img"
                                                 for n, v in rates.items()), file=sys.stderr, flush=True)
    gflops = sgemm_gflops(threads=max(1, FLAGS.threads))
    per_cpu_s = sgemm_per_cpu_second()
    student_macs = count_macs(backbone)
    teacher_macs = _teacher_macs(teacher)
    _report(source, rates, cpu_ms, student_macs, teacher_macs, (gflops, per_cpu_s), cpu_label(cpu_info()))
    return 0


def sgemm_per_cpu_second(n: int = 1024, repeats: int = 5) -> float:
    """float32 GEMM GFLOP per CPU-second of numpy's BLAS on one thread (best of `repeats`): the per-core peak
    in the same units as the training CPU time, so it holds when other jobs share the cores."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    best = float("inf")
    with threadpool_limits(limits=1, user_api="blas"):
        np.matmul(a, b, out=out)
        for _ in range(repeats):
            c0 = time.process_time()
            np.matmul(a, b, out=out)
            best = min(best, time.process_time() - c0)
    return 2.0 * n ** 3 / max(best, 1e-9) / 1e9


def _teacher_macs(teacher) -> int | None:
    """The reference teacher is a MobileFaceNet: its MACs from our own MobileFaceNet build (same layer shapes,
    counted by models.macs), else None. Not read from the .tflite."""
    if "mobilefacenet" not in teacher.path.name.lower():
        return None
    from mobiface_tf.models.macs import count_macs
    from mobiface_tf.training.model import build_backbone

    return count_macs(build_backbone("mobilefacenet", teacher.embedding_dim, None))


def _report(source, rates, cpu_ms, student_macs, teacher_macs, peaks, cpu):
    gflops, per_cpu_s = peaks
    med = {n: statistics.median(v) for n, v in rates.items()}
    ms = {n: statistics.median(v) for n, v in cpu_ms.items()}
    rows = [f"| {n} | {med[n]:.2f} | {min(v):.2f} | {max(v):.2f} | {ms[n]:.0f} |" for n, v in rates.items()]
    ratio = {}
    for base in ("augment", "plain"):
        if "online" in rates and base in rates:
            ratio[f"online/{base}"] = statistics.median(o / b for o, b in zip(rates["online"], rates[base]))
    train_flops = 6 * student_macs
    print(f"data: {source}; student {FLAGS.backbone}-{FLAGS.head} {FLAGS.embedding_dim}-d, batch {FLAGS.batch_size}, "
          f"teacher {Path(FLAGS.teacher).name} ({FLAGS.teacher_threads} thread(s)); TF intra-op {FLAGS.threads}; "
          f"{FLAGS.rounds} rounds x {FLAGS.steps - FLAGS.skip} timed steps; CPU: {cpu}\n")
    print("| configuration | median img/s | min | max | median CPU ms / image |\n| --- | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))
    for k, v in ratio.items():
        base = k.split("/")[1]
        print(f"\nratio {k}: img/s {v:.3f} (median of per-round ratios); CPU ms per image "
              f"{ms[base] / ms['online']:.3f} (inverse ratio of medians)")
    print(f"\nstudent forward MACs/image {student_macs / 1e6:.1f} M -> training FLOPs/image ~{train_flops / 1e9:.3f} G "
          f"(forward + backward = 3 x 2 x MACs)")
    if teacher_macs:
        print(f"teacher forward MACs/image {teacher_macs / 1e6:.1f} M -> {2 * teacher_macs / 1e9:.3f} GFLOPs/image")
    print(f"numpy sgemm, same run, {max(1, FLAGS.threads)} thread(s): {gflops:.1f} GFLOP/s")
    print(f"numpy sgemm, same run, 1 thread, CPU time: {per_cpu_s:.1f} GFLOP per CPU-second")
    for n, v in med.items():
        flops = train_flops + (2 * teacher_macs if n == "online" and teacher_macs else 0)
        per_s = flops / 1e9 / (ms[n] / 1000)
        print(f"  {n}: {v * flops / 1e9:.1f} GFLOP/s wall = {100 * v * flops / 1e9 / gflops:.1f}% of sgemm; "
              f"{per_s:.1f} GFLOP per CPU-second = {100 * per_s / per_cpu_s:.1f}% of sgemm per CPU-second")
    if FLAGS.json_out:
        from mobiface_tf.atomic import write_json_atomic

        write_json_atomic(FLAGS.json_out, dict(source=source, rates=rates, cpu_ms=cpu_ms, median=med, ratio=ratio,
                                               student_macs=student_macs, teacher_macs=teacher_macs,
                                               sgemm_gflops=gflops, sgemm_gflop_per_cpu_s=per_cpu_s, cpu=cpu))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    app.run(lambda argv: sys.exit(main(argv)))
