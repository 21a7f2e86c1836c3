"""Where one function-matching training step of MobiFace-gdc spends this CPU's time, and which settings help.

  python tools/research/profile_step.py [--rounds=3] [--steps=6] [--batches=32,64,128] [--jit] [--trace_steps=3]
      [--threads=2] [--inter_op_threads=0] [--json_out=FILE]

A benchmark, not a test. Three parts, in one process:
  1. op table: the TF profiler traces --trace_steps full steps (the online LiteRT teacher in the input pipeline,
     the default augmentations, mixup p=0.5, the SGD step); its host events are summed by op type and
     printed as a table with each type's share of the traced op time. tf.data's own iterator time is listed
     as "input pipeline".
  2. input pipeline alone: batches per second of the augmented, mixed, teacher-labelled dataset with no step.
  3. A/B of the step alone on fixed batches, interleaved round by round: each --batches size, with and without
     XLA (`jit_compile`) when --jit is given. img/s and CPU ms per image per configuration.
Thread counts are process-wide in TF, so compare them across separate runs of this script (--threads,
--inter_op_threads), alternated by the caller.
"""
from __future__ import annotations

import collections
import glob
import statistics
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[2]
FLAGS = flags.FLAGS
REFERENCE = ROOT / ".." / "shared" / "data" / "models" / "mobilefacenet_insightface_fp32.tflite"
flags.DEFINE_string("teacher", str(REFERENCE), "Online .tflite / .onnx teacher, run in the input pipeline.")
flags.DEFINE_string("lfw_dir", str(ROOT / ".." / "shared" / "data" / "lfw" / "lfw-112x112"), "112x112 faces.")
flags.DEFINE_integer("num_images", 1024, "Faces written to the temporary shards.", lower_bound=128)
flags.DEFINE_integer("batch_size", 64, "Batch of the traced full step and of the pipeline timing.")
flags.DEFINE_list("batches", ["32", "64", "128"], "Batch sizes of the step A/B.")
flags.DEFINE_boolean("jit", False, "Also time each batch size with jit_compile=True.")
flags.DEFINE_boolean("fused_bn", False, "Also time each batch size with the BN layers on TF's fused kernel "
                     "(mobiface_tf/training/fused_bn.py, the trainer's --fused_bn).")
flags.DEFINE_integer("rounds", 3, "Interleaved A/B rounds.", lower_bound=1)
flags.DEFINE_integer("steps", 6, "Timed steps per configuration per round.", lower_bound=1)
flags.DEFINE_integer("trace_steps", 3, "Full steps traced by the profiler (0: no op table).", lower_bound=0)
flags.DEFINE_integer("threads", 2, "TF intra-op threads (0: TF's default).", lower_bound=0)
flags.DEFINE_integer("inter_op_threads", 0, "TF inter-op threads (0: TF's default).", lower_bound=0)
flags.DEFINE_boolean("ab", True, "Run part 3, the step A/B (--noab: op table and pipeline only).")
flags.DEFINE_string("json_out", "", "Also write the figures to this JSON file.")


def _student(batch: int, jit: bool, teacher_dim: int = 128, fused: bool = False):
    """(step(images, targets) -> loss, backbone): one SGD step of MobiFace-gdc-128 on the cosine distillation
    loss, the trainer's optimizer and L2, as a tf.function (XLA-compiled with `jit`)."""
    import keras
    import tensorflow as tf

    from mobiface_tf.training.model import build_backbone, make_optimizer
    from mobiface_tf.training.schedules import decayed_variables
    from mobiface_tf.training.step import distillation_loss

    keras.utils.set_random_seed(0)
    backbone = build_backbone("mobiface", 128, "gdc")
    if fused:
        from mobiface_tf.training.fused_bn import fuse_batchnorm

        fuse_batchnorm(backbone)
    projection = None
    variables = list(backbone.trainable_variables)
    if teacher_dim != 128:
        projection = keras.layers.Dense(teacher_dim, use_bias=False)
        projection.build((None, 128))
        variables += projection.trainable_variables
    optimizer = make_optimizer(0.01, 0.9)
    decayed = decayed_variables(variables)
    optimizer.build(variables)

    @tf.function(jit_compile=jit)
    def step(images, targets):
        with tf.GradientTape() as tape:
            emb = backbone(images, training=True)
            kd = tf.reduce_sum(distillation_loss(emb, targets, "cosine", projection)) / batch
            l2 = 0.5 * 5e-5 * tf.add_n([tf.reduce_sum(tf.square(v)) for v in decayed])
            total = kd + l2
        optimizer.apply(tape.gradient(total, variables), variables)
        return total

    return step, backbone


WRAPPERS = {"Process", "Run", "ExecutorState::Process", "StatefulPartitionedCall", "PartitionedCall", "While",
            "If", "IteratorGetNext"}


def _op_table(logdir: str) -> list[tuple[str, float]]:
    """[(op type, total ms)] from the profiler's host plane, largest first."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    files = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
    totals: dict[str, float] = collections.defaultdict(float)
    for f in files:
        space = xplane_pb2.XSpace()
        space.ParseFromString(Path(f).read_bytes())
        for plane in space.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            names = {k: m.name for k, m in plane.event_metadata.items()}
            for line in plane.lines:
                if "python" in line.name.lower():
                    continue
                for ev in line.events:
                    name = names.get(ev.metadata_id, "?")
                    # TF op events are "name:Type"; tf.data's are "Iterator::..."
                    if name.startswith("Iterator::"):
                        kind = "input pipeline: " + name.split("::")[1] if name.count("::") == 1 else None
                    elif ":" in name and not name.startswith("__inference") and "/" in name:
                        kind = name.rsplit(":", 1)[1]  # a TF op inside the step: "scope/op_name:OpType"
                    else:
                        kind = None  # wrappers (the whole function, executor runs): they hold the ops above
                    if kind in WRAPPERS:
                        kind = None
                    if kind:
                        totals[kind] += ev.duration_ps / 1e9
    return sorted(totals.items(), key=lambda kv: -kv[1])


def main(argv):
    del argv
    import numpy as np
    import tensorflow as tf

    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    if FLAGS.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)
    from mobiface_tf.data.augment import AugmentConfig
    from mobiface_tf.data.pipeline import make_dataset
    from mobiface_tf.data.synthetic import write_benchmark_shards
    from mobiface_tf.litert import cpu_info, cpu_label
    from mobiface_tf.models.macs import count_macs
    from mobiface_tf.teacher import OnlineTeacher

    out = {"cpu": cpu_label(cpu_info()), "threads": FLAGS.threads, "inter_op_threads": FLAGS.inter_op_threads}
    print(f"CPU: {out['cpu']}; intra-op {FLAGS.threads or 'default'}, inter-op {FLAGS.inter_op_threads or 'default'}",
          flush=True)
    teacher = OnlineTeacher(FLAGS.teacher, num_threads=1, batch_size=FLAGS.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        write_benchmark_shards(tmp, FLAGS.lfw_dir, FLAGS.num_images)
        ds = make_dataset(tmp, batch_size=FLAGS.batch_size, training=True, seed=0, shuffle_buffer=1024,
                          augment=AugmentConfig(mixup=0.5), teacher=teacher)
        it = iter(ds)
        step, backbone = _student(FLAGS.batch_size, False)
        images, _, targets = next(it)
        float(step(images, targets))
        # 1. op table of full steps (pipeline + step)
        if FLAGS.trace_steps:
            logdir = f"{tmp}/trace"
            tf.profiler.experimental.start(logdir)
            t0 = time.perf_counter()
            for _ in range(FLAGS.trace_steps):
                images, _, targets = next(it)
                float(step(images, targets))
            traced = time.perf_counter() - t0
            tf.profiler.experimental.stop()
            table = _op_table(logdir)
            total = sum(ms for _, ms in table)
            out["op_table"] = [(k, round(ms, 1), round(100 * ms / total, 1)) for k, ms in table[:25]]
            print(f"\nop table: {FLAGS.trace_steps} full steps, batch {FLAGS.batch_size}, {traced:.1f} s wall, "
                  f"{total / 1000:.1f} s of op time on all threads")
            print("| op type | ms | share |\n| --- | ---: | ---: |")
            for k, ms, share in out["op_table"][:15]:
                print(f"| {k} | {ms:.0f} | {share:.1f} % |")
        # 2. input pipeline alone
        t0, c0 = time.perf_counter(), time.process_time()
        n = 6
        for _ in range(n):
            next(it)
        out["pipeline_img_s"] = n * FLAGS.batch_size / (time.perf_counter() - t0)
        out["pipeline_cpu_ms_per_img"] = 1000 * (time.process_time() - c0) / (n * FLAGS.batch_size)
        print(f"\ninput pipeline alone (augment + mixup + LiteRT teacher): {out['pipeline_img_s']:.1f} img/s, "
              f"{out['pipeline_cpu_ms_per_img']:.1f} CPU ms/img")
    if not FLAGS.ab:
        if FLAGS.json_out:
            from mobiface_tf.atomic import write_json_atomic

            write_json_atomic(FLAGS.json_out, out)
        return 0
    # 3. step A/B on fixed batches
    rng = np.random.default_rng(0)
    configs = {}
    for b in (int(x) for x in FLAGS.batches):
        for jit, fused in [(False, False)] + [(True, False)] * FLAGS.jit + [(False, True)] * FLAGS.fused_bn:
            s, _ = _student(b, jit, fused=fused)
            x = tf.constant(rng.uniform(-1, 1, (b, 112, 112, 3)).astype(np.float32))
            t = tf.math.l2_normalize(tf.constant(rng.standard_normal((b, 128)).astype(np.float32)), axis=1)
            float(s(x, t))
            float(s(x, t))
            configs[f"b{b}{'_jit' if jit else ''}{'_fusedbn' if fused else ''}"] = (s, x, t, b)
    rates = {k: [] for k in configs}
    cpu = {k: [] for k in configs}
    for r in range(FLAGS.rounds):
        for k, (s, x, t, b) in configs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(FLAGS.steps):
                v = s(x, t)
            float(v)
            rates[k].append(FLAGS.steps * b / (time.perf_counter() - t0))
            cpu[k].append(1000 * (time.process_time() - c0) / (FLAGS.steps * b))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in rates.items()), flush=True)
    macs = count_macs(backbone)
    out["student_macs"] = macs
    out["step_ab"] = {k: {"img_s_median": statistics.median(v), "img_s": v, "cpu_ms_per_img": statistics.median(cpu[k])}
                      for k, v in rates.items()}
    print(f"\nstep alone (MobiFace-gdc-128, {macs / 1e6:.1f} M MACs, {6 * macs / 1e9:.2f} GFLOP per training image):")
    print("| configuration | median img/s | CPU ms / img |\n| --- | ---: | ---: |")
    for k, v in out["step_ab"].items():
        print(f"| {k} | {v['img_s_median']:.1f} | {v['cpu_ms_per_img']:.0f} |")
    from mobiface_tf.peak import sgemm_gflops

    out["sgemm_gflops"] = sgemm_gflops(threads=max(1, FLAGS.threads))
    best = max(v["img_s_median"] for v in out["step_ab"].values())
    print(f"same-run sgemm {out['sgemm_gflops']:.1f} GFLOP/s; best step {best * 6 * macs / 1e9:.1f} GFLOP/s = "
          f"{100 * best * 6 * macs / 1e9 / out['sgemm_gflops']:.1f} % of it")
    if FLAGS.json_out:
        from mobiface_tf.atomic import write_json_atomic

        write_json_atomic(FLAGS.json_out, out)
    return 0


if __name__ == "__main__":
    app.run(main)
