"""Latency / size / MACs table of MobiFace vs MobileFaceNet vs MobileNetV1 in TFLite.

    mobiface-bench --output_dir=/tmp/bench_out        # all models x modes x threads 1,2
    mobiface-bench --static                            # params, MACs, sizes only (seconds)
    mobiface-bench --reference --output_dir=bench_out # + the publisher's MobileFaceNet TFLite rows
    mobiface-bench --models=mobiface_gdc --quantize=none,int8 --threads=1 --extra_tflite=my.tflite

For each network and thread count the quantize modes are timed interleaved (round-robin in one
process), so the int8/fp32 ratio is measured under the same machine conditions; LiteRT's own
`litert-benchmark` also times every file alone, as a cross-check (`latency_ms_p50_litert`,
`fully_accelerated`). The CPU model and its ISA features (AVX2, AVX-512, VNNI, ...) are recorded with
the figures: int8 vs fp32 depends on them. Random-init networks
get their BN statistics re-estimated on the calibration faces first (--bn_calibration_steps).
Prints a Markdown table and writes DIR/results.json, DIR/results.md and DIR/latency.png; the
.tflite files go to DIR/models/ (each scorable by mobiface-evaluate). Int8 is calibrated on real
aligned faces from --calibration (default: the LFW crops in ../shared/data when present), otherwise
on synthetic noise, which the table's metadata says.
"""
import sys

from absl import flags

from mobiface_tf.commands import SHARED_DATA
from mobiface_tf.outputs import check_output_dir, check_output_file, is_png_file, json_report, markdown_starting

DEFAULT_LFW = SHARED_DATA / "lfw" / "lfw-112x112"

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["mobiface_fc", "mobiface_gdc", "mobilefacenet", "mobilenet_v1_gdc"],
                  "zoo network names (mobiface_tf/models/zoo.py)")
flags.DEFINE_list("quantize", ["none", "float16", "dynamic", "int8"], "TFLite modes")
flags.DEFINE_list("threads", ["1", "2"], "interpreter thread counts")
flags.DEFINE_string("output_dir", "bench_out", "where results.json/.md, latency.png and models/ go")
flags.DEFINE_string("calibration", None, "int8 calibration faces: image dir or TFRecord glob "
                    "(default: ../shared/data/lfw/lfw-112x112 if present, else synthetic)")
flags.DEFINE_integer("num_calibration", 100, "int8 calibration images", lower_bound=1)
flags.DEFINE_string("parity_images", None, "real faces for the Keras-vs-TFLite cosine column (default: as calibration)")
flags.DEFINE_integer("num_parity", 16, "faces for the cosine column", lower_bound=1)
flags.DEFINE_integer("runs", 50, "timed rounds (one invoke per quantize mode per round, interleaved)", lower_bound=1)
flags.DEFINE_integer("warmup", 5, "untimed warm-up rounds", lower_bound=0)
flags.DEFINE_integer("bn_calibration_steps", 4, "re-estimate the random-init networks' BN statistics on the "
                     "calibration faces with this many forward passes before export (0: off; see README)",
                     lower_bound=0)
flags.DEFINE_list("extra_tflite", [], "extra .tflite files timed as additional rows")
flags.DEFINE_string("benchmark_model", None, "path to TFLite's benchmark_model binary: also run it and parse it")
flags.DEFINE_bool("profile", False, "per-op profile: op counts per model, and benchmark_model's op profiling")
flags.DEFINE_bool("reference", False, "add the publisher's MobileFaceNet TFLite files (mobilefacenet_insightface_fp32 / "
                  "_uint8 in --reference_dir) as reference rows; skipped with a note when the folder lacks them")
flags.DEFINE_string("reference_dir", str(SHARED_DATA / "models"), "folder of the --reference .tflite files")
flags.DEFINE_bool("litert_benchmark", True, "also time every file with LiteRT's `litert-benchmark` tool "
                  "(row fields latency_ms_p50_litert, fully_accelerated)")
flags.DEFINE_bool("static", False, "only print params, MACs and sizes (no conversion, no timing)")


def _check_outputs(output_dir) -> None:
    """--output_dir and the files bench writes in it, before any conversion (ValueError: one line)."""
    out = check_output_dir(output_dir, "--output_dir")
    if out.is_dir():  # each is replaced only when it is bench's own (never a file of the user's of that name)
        for name, ours, what in (("results.json", json_report("rows", "meta"), "a bench results.json"),
                                 ("results.md", markdown_starting("CPU: "), "a bench results.md"),
                                 ("latency.png", is_png_file, "a PNG chart")):
            check_output_file(out / name, f"--output_dir (its {name})", ours=ours, what=what)
        check_output_dir(out / "models", "--output_dir (its models/ folder)")


def main(argv):
    """CLI: print the TFLite latency / size / MACs table and write it under --output_dir (--static: no timing).

    Returns None (exit 0); exits 2 with one "error: ..." line on bad input or an --output_dir that cannot be
    written, checked before any work (mobiface_tf.cli). Flags are defined at module level.
    """
    del argv
    if not FLAGS.static:
        _check_outputs(FLAGS.output_dir)
    from mobiface_tf.bench import BenchOptions, bench
    from mobiface_tf.bench_report import static_table

    try:
        if FLAGS.static:
            _, table = static_table(FLAGS.models)
            print(table)
            return
        threads = [int(t) for t in FLAGS.threads]
        if any(t < 1 for t in threads):
            raise ValueError(f"--threads must be positive integers, got {FLAGS.threads}")
        calibration = FLAGS.calibration or (str(DEFAULT_LFW) if DEFAULT_LFW.is_dir() else None)
        opts = BenchOptions(calibration=calibration, num_calibration=FLAGS.num_calibration,
                            parity_images=FLAGS.parity_images or calibration, num_parity=FLAGS.num_parity,
                            runs=FLAGS.runs, warmup=FLAGS.warmup, extra_tflite=FLAGS.extra_tflite,
                            benchmark_model=FLAGS.benchmark_model, profile=FLAGS.profile,
                            bn_calibration_steps=FLAGS.bn_calibration_steps,
                            reference_dir=FLAGS.reference_dir if FLAGS.reference else None,
                            litert_benchmark=FLAGS.litert_benchmark)
        result = bench(FLAGS.models, FLAGS.quantize, threads, FLAGS.output_dir, opts)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(result["table"])
    for r in result["ratios"]:
        if "int8_vs_fp32" in r:
            print(f"{r['model']} x{r['threads']}: int8 p50 / fp32 p50 = {r['int8_vs_fp32']:.2f} "
                  f"(median per-round ratio {r['int8_vs_fp32_paired']:.2f}, same interleaved run)")
    print(f"peak sgemm GFLOP/s by threads: {result['meta']['peak_gflops_by_threads']}; "
          f"outputs in {FLAGS.output_dir}/ (results.json, results.md, latency.png)")
