"""MegaFace-style identification benchmark: real LFW probes against N synthetic distractors.

    python tools/bench_identify.py --num_distractors=1000000 --threads=1

Probes are LFW identities with >= 2 images (first --max_per_identity images each, at most --max_probes
images), embedded by --model (the 128-d reference .tflite by default). Distractors are random unit
vectors of the probes' dimension, generated chunk by chunk into one [N, D] float32 array (what a real
gallery held in RAM would be). With --dim different from the model's embedding size (e.g. 512, the
MobiFace size), probes are synthetic too: Gaussian identity centres plus noise, labelled as such.

Reports rank-1, TAR@FAR=1e-6, search time, GFLOP/s as a fraction of this run's sgemm peak at the
same thread count, and the process's peak RSS (resource.getrusage).
"""
import json
import os
import pickle
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from absl import app, flags

from mobiface_tf import identification as ident
from mobiface_tf.peak import sgemm_gflops

_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_distractors", 1_000_000, "number of synthetic distractors N", lower_bound=1)
flags.DEFINE_integer("dim", None, "embedding dimension (default: the model's; other values use synthetic probes)",
                     lower_bound=1)
flags.DEFINE_string("model", str(_DATA / "models" / "mobilefacenet_insightface_fp32.tflite"), "probe embedding model")
flags.DEFINE_string("lfw_dir", str(_DATA / "lfw" / "lfw-112x112"), "LFW image dir for the probes")
flags.DEFINE_integer("max_probes", 300, "probe images at most", lower_bound=2)
flags.DEFINE_integer("max_per_identity", 6, "images per probe identity at most", lower_bound=2)
flags.DEFINE_integer("threads", 1, "BLAS threads for the search (sgemm peak is measured at the same count)", lower_bound=1)
flags.DEFINE_integer("chunk_size", 8192, "distractor rows per matmul", lower_bound=1)
flags.DEFINE_float("far", 1e-6, "target false accept rate")
flags.DEFINE_integer("seed", 0, "distractor seed")
flags.DEFINE_string("output", None, "optional JSON output path")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _lfw_probes(embedder, lfw_dir, max_probes, max_per_identity):
    from mobiface_tf.images import load_image_rgb
    from mobiface_tf.data.verification import list_identities

    people = list_identities(lfw_dir, min_images=2, max_per_identity=max_per_identity, max_images=max_probes)
    paths = [p for _, files in people for p in files]
    labels = np.array([i for i, (_, files) in enumerate(people) for _ in files])
    emb = embedder.embed(np.stack([load_image_rgb(p) for p in paths]))
    return emb, labels, f"LFW ({len(people)} identities with >= 2 images) embedded by {embedder.path.name}"


def _synthetic_probes(dim, max_probes, per_identity, seed):
    rng = np.random.default_rng(seed + 1)
    num_ids = max(1, max_probes // per_identity)
    centres = rng.standard_normal((num_ids, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(num_ids), per_identity)
    # Noise of norm ~0.8 per image: same-identity cosine ~0.6, like a decent face model.
    emb = centres[labels] + 0.8 / np.sqrt(dim) * rng.standard_normal((len(labels), dim)).astype(np.float32)
    return emb, labels, f"synthetic ({num_ids} identities x {per_identity}, dim {dim})"


def _bench():
    t0 = time.perf_counter()
    from mobiface_tf.embedder import load_embedder

    embedder = load_embedder(FLAGS.model, num_threads=FLAGS.threads)
    if FLAGS.dim is None or FLAGS.dim == embedder.embedding_dim:
        emb, labels, source = _lfw_probes(embedder, FLAGS.lfw_dir, FLAGS.max_probes, FLAGS.max_per_identity)
    else:
        emb, labels, source = _synthetic_probes(FLAGS.dim, FLAGS.max_probes, FLAGS.max_per_identity, FLAGS.seed)
    probe_seconds = time.perf_counter() - t0
    dim = emb.shape[1]
    rss_before = _peak_rss_mb()

    t0 = time.perf_counter()
    distractors = ident.random_unit_vectors(FLAGS.num_distractors, dim, seed=FLAGS.seed)
    gen_seconds = time.perf_counter() - t0
    rss_generated = _peak_rss_mb()

    peak = sgemm_gflops(threads=FLAGS.threads)
    result = ident.megaface_identification(emb, labels, distractors, far=FLAGS.far, chunk_size=FLAGS.chunk_size,
                                           threads=FLAGS.threads)
    peak_after = sgemm_gflops(threads=FLAGS.threads)  # bracket the search: the machine is shared
    sgemm = max(peak, peak_after)
    out = result.to_dict()
    out.update(probes=source, threads=FLAGS.threads, chunk_size=FLAGS.chunk_size,
               distractor_bytes=int(distractors.nbytes), probe_embed_seconds=probe_seconds,
               distractor_generate_seconds=gen_seconds, sgemm_gflops=sgemm, sgemm_gflops_before=peak,
               sgemm_gflops_after=peak_after, fraction_of_sgemm=result.gflops_per_s / sgemm,
               load_average_1min=os.getloadavg()[0], cpu_count=os.cpu_count(),
               peak_rss_mb=_peak_rss_mb(), peak_rss_mb_before_distractors=rss_before,
               peak_rss_mb_after_generation=rss_generated)
    tar = "n/a (" + result.reason + ")" if result.tar_at_far is None else f"{result.tar_at_far:.4f}"
    print(f"probes: {source}: {result.num_probes} images, {result.num_rank1_trials} rank-1 trials, "
          f"{result.num_positive_pairs} positive pairs")
    print(f"distractors: {result.num_distractors:,} x {dim} float32 ({distractors.nbytes / 2**30:.2f} GiB), "
          f"generated in {gen_seconds:.1f} s")
    print(f"rank-1: {result.rank1:.4f}   TAR@FAR={FLAGS.far:g}: {tar}")
    print(f"search: {result.search_seconds:.2f} s, {result.gflops_per_s:.1f} GFLOP/s = "
          f"{out['fraction_of_sgemm']:.0%} of sgemm {sgemm:.1f} GFLOP/s ({FLAGS.threads} thread(s); sgemm before/after "
          f"{peak:.1f}/{peak_after:.1f}; CPU time {result.search_cpu_seconds:.2f} s; "
          f"load average {out['load_average_1min']:.1f} on {out['cpu_count']} cores)")
    print(f"peak RSS: {out['peak_rss_mb']:.0f} MB (before distractors: {rss_before:.0f} MB, "
          f"after generating them: {rss_generated:.0f} MB)")
    if FLAGS.output:
        Path(FLAGS.output).write_text(json.dumps(out, indent=2) + "\n")


def main(argv):
    del argv
    try:
        return _bench()
    except (FileNotFoundError, ValueError, pickle.UnpicklingError) as e:  # bad input: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    app.run(main)
