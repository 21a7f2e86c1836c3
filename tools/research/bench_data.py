"""Input-pipeline throughput: images/s per core for read + decode + flip + batch of 112x112 JPEG TFRecords.

  python tools/research/bench_data.py [--lfw_dir=../shared/data/lfw/lfw-112x112] [--threads=1,2] [--seconds=5]

Writes up to --num_images real LFW crops (or SYNTHETIC faces when the LFW folder is absent) into a temporary
TFRecord shard set, then times mobiface_tf.data.pipeline.make_dataset(training=True) with a tf.data private
threadpool of 1 and 2 threads. Prints a Markdown table; the ratio between rows is the scaling with cores.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("lfw_dir", str(Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "lfw" /
                                   "lfw-112x112"), "Folder of 112x112 JPEGs <identity>/<image>.")
flags.DEFINE_integer("num_images", 4096, "Images written to the temporary shards.", lower_bound=64)
flags.DEFINE_list("threads", ["1", "2"], "tf.data threadpool sizes to time.")
flags.DEFINE_integer("batch_size", 256, "Batch size.", lower_bound=1)
flags.DEFINE_float("seconds", 5.0, "Timed seconds per setting (after a warm-up).", lower_bound=0.5)


def _time(pattern: str, threads: int) -> tuple[float, float]:
    from mobiface_tf.data.pipeline import make_dataset
    ds = make_dataset(pattern, FLAGS.batch_size, training=True, seed=0, shuffle_buffer=2048, threads=threads)
    it = iter(ds)
    for _ in range(10):  # warm-up: fill the shuffle buffer and let AUTOTUNE settle
        next(it)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < FLAGS.seconds:
        n += int(next(it)[0].shape[0])
    # Wall-clock rate, and images per CPU-second of this process (all its threads): the second figure holds
    # even when other jobs share the cores.
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def main(argv):
    """CLI: time the training input pipeline per --threads setting and print a Markdown table; returns None.

    Flags are defined at module level.
    """
    del argv
    with tempfile.TemporaryDirectory() as tmp:
        from mobiface_tf.data.synthetic import write_benchmark_shards

        what = write_benchmark_shards(tmp, FLAGS.lfw_dir, FLAGS.num_images, num_classes=1000)
        rows = [(int(t), *_time(tmp, int(t))) for t in FLAGS.threads]
    print(f"\n`{' '.join([os.path.basename(sys.executable), 'tools/research/bench_data.py'] + sys.argv[1:])}` "
          f"on {os.cpu_count()} CPU cores; data: {what}; batch {FLAGS.batch_size}, training=True\n")
    print(f"1-min load average at the end (other jobs share the cores): {os.getloadavg()[0]:.1f}\n")
    print("| threads | img/s (wall) | img/s per core (wall) | vs 1 thread | img per CPU-second |")
    print("|---:|---:|---:|---:|---:|")
    for t, ips, cpu in rows:
        print(f"| {t} | {ips:,.0f} | {ips / t:,.0f} | {ips / rows[0][1]:.2f}x | {cpu:,.0f} |")


if __name__ == "__main__":
    app.run(main)
