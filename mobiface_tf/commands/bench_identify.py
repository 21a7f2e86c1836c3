"""MegaFace-style identification: real probes against real distractor faces, or a random-vector speed benchmark.

    # real faces: probes are one folder per identity; distractors are any faces of other people
    mobiface-bench-identify --model=M.tflite --probes=DIR --distractors=DIR|SHARDS|X.npy [--output=r.json]
    # LFW: probes and distractors from the same tree; probe identities are removed from the distractors
    mobiface-bench-identify --probes=../shared/data/lfw/lfw-112x112 --distractors=../shared/data/lfw/lfw-112x112
    # the MegaFace Challenge 1 layout (FaceScrub probes, devkit set lists 10 ... 1M, noise lists)
    mobiface-bench-identify --model=M --megaface=ROOT
    # speed only: N random unit vectors as distractors (no rank-1, no TAR: random directions are not faces)
    mobiface-bench-identify --distractors=random:1000000 --dim=512 --threads=1

Sources (--probes, --distractors) are an image folder of aligned crops, TFRecord shards (a folder of
*.tfrecord, a glob or one file) or a features file X.npy with X.txt beside it (one name per row; the first
path component is the identity). Faces are embedded by --model (.keras, SavedModel, .tflite or .onnx) and
cached under --cache_dir keyed by the model's sha256, the preprocess and the flip, so a rerun embeds nothing.
Distractor rows of a probe identity (same first path component) are dropped: a mate among the distractors
would count as an error.

The protocol and the search are mobiface_tf/megaface/search.py's. Real runs also search N random unit
vectors of the same dimension (--compare_random) to show what random distractors would have claimed.
"""
import os
import resource
import time
from pathlib import Path

import numpy as np
from absl import flags

from mobiface_tf.megaface.features import (DEFAULT_CACHE_DIR, embed_image_files, load_probes, load_source, parse_random,
                                           select_probe_rows, source_kind)
from mobiface_tf.megaface.layout import read_megaface_layout
from mobiface_tf.megaface.search import megaface_search, random_unit_vectors
from mobiface_tf.fingerprint import model_fingerprint
from mobiface_tf.commands import SHARED_DATA as _DATA
from mobiface_tf.atomic import write_json_atomic
from mobiface_tf.outputs import check_output_dir, check_output_file, json_report
from mobiface_tf.peak import sgemm_gflops

FLAGS = flags.FLAGS
flags.DEFINE_string("model", str(_DATA / "models" / "mobilefacenet_insightface_fp32.tflite"),
                    "embedding model (.keras, SavedModel dir, .tflite or .onnx)")
flags.DEFINE_string("preprocess", None, "pixel convention of --model (default: what the model states, else raw)")
flags.DEFINE_boolean("flip", False, "flip test: embed each face and its mirror")
flags.DEFINE_boolean("progress", True, "progress bars on stderr while embedding and searching (--noprogress: off)")
flags.DEFINE_string("probes", str(_DATA / "lfw" / "lfw-112x112"),
                    "probe source: image folder (one sub-folder per identity), TFRecord shards or X.npy features")
flags.DEFINE_string("distractors", None, "distractor source: image folder, TFRecord shards, X.npy features, or "
                    "random:N (N random unit vectors: a speed benchmark, no accuracy figures)")
flags.DEFINE_string("megaface", None, "a MegaFace Challenge 1 directory (see the README); replaces --probes and "
                    "--distractors and runs every distractor set list it holds")
flags.DEFINE_string("facescrub_images", None, "with --megaface: probe image folder (default ROOT/facescrub_images)")
flags.DEFINE_string("megaface_images", None, "with --megaface: distractor image folder (default ROOT/megaface_images)")
flags.DEFINE_boolean("remove_noise", True, "with --megaface: leave out the images named in ROOT/*_noises.txt")
flags.DEFINE_integer("max_probes", 300, "probe images at most (folder/shard/features probes)", lower_bound=2)
flags.DEFINE_integer("max_per_identity", 6, "images per probe identity at most (0: all)", lower_bound=0)
flags.DEFINE_integer("min_per_identity", 2, "images a probe identity needs", lower_bound=2)
flags.DEFINE_integer("dim", None, "random:N only: distractor dimension (default: the model's; another value uses "
                     "synthetic probes, e.g. 512 for the MobiFace size)", lower_bound=1)
flags.DEFINE_integer("threads", 1, "BLAS threads for the search (sgemm peak is measured at the same count) and "
                     "interpreter threads for embedding", lower_bound=1)
flags.DEFINE_integer("chunk_size", 8192, "distractor rows per matmul", lower_bound=1)
flags.DEFINE_list("far", ["1e-6", "1e-5", "1e-4"], "target false accept rates (each larger FAR keeps more negative scores\n during the search: 1e-3 at 1M x 3.5k probes keeps 3.5M)")
flags.DEFINE_integer("max_rank", 10, "length of the CMC curve", lower_bound=1)
flags.DEFINE_boolean("compare_random", True, "real distractors: also search N random unit vectors, same probes")
flags.DEFINE_integer("seed", 0, "random distractor seed")
flags.DEFINE_string("cache_dir", str(DEFAULT_CACHE_DIR), "embedding cache folder")
flags.DEFINE_string("output", None, "optional JSON output path")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _fars() -> list:
    try:
        fars = sorted(float(f) for f in FLAGS.far)
    except ValueError:
        raise ValueError(f"--far must be numbers like 1e-6,1e-4; got {','.join(FLAGS.far)}") from None
    if not fars or not all(0 < f < 1 for f in fars):
        raise ValueError(f"--far values must be in (0, 1); got {','.join(FLAGS.far)}")
    return fars


def _embedder():
    from mobiface_tf.embedder import load_embedder

    embedder = load_embedder(FLAGS.model, preprocess=FLAGS.preprocess, num_threads=FLAGS.threads)
    embedder.flip = FLAGS.flip
    return embedder


def _synthetic_probes(dim, max_probes, per_identity, seed):
    rng = np.random.default_rng(seed + 1)
    num_ids = max(1, max_probes // per_identity)
    centres = rng.standard_normal((num_ids, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(num_ids), per_identity)
    emb = centres[labels] + 0.8 / np.sqrt(dim) * rng.standard_normal((len(labels), dim)).astype(np.float32)
    return emb, labels, f"synthetic ({num_ids} identities x {per_identity}, dim {dim})"


def _search(emb, labels, distractors, num_distractors=None):
    """One search bracketed by sgemm peaks (the machine may be shared): the search dict plus speed fields."""
    peak = sgemm_gflops(threads=FLAGS.threads)
    res = megaface_search(emb, labels, distractors, fars=_fars(), max_rank=FLAGS.max_rank,
                          chunk_size=FLAGS.chunk_size, num_distractors=num_distractors, threads=FLAGS.threads,
                          progress=FLAGS.progress).to_dict()
    peak_after = sgemm_gflops(threads=FLAGS.threads)
    sgemm = max(peak, peak_after)
    res.update(sgemm_gflops=sgemm, sgemm_gflops_before=peak, sgemm_gflops_after=peak_after,
               fraction_of_sgemm=res["gflops_per_s"] / sgemm)
    return res


def _speed_line(res) -> str:
    return (f"search: {res['search_seconds']:.2f} s for {res['num_probes']} x {res['num_distractors']:,} x {res['dim']}, "
            f"{res['gflops_per_s']:.1f} GFLOP/s = {res['fraction_of_sgemm']:.0%} of sgemm {res['sgemm_gflops']:.1f} "
            f"GFLOP/s ({FLAGS.threads} thread(s); sgemm before/after {res['sgemm_gflops_before']:.1f}/"
            f"{res['sgemm_gflops_after']:.1f}; CPU time {res['search_cpu_seconds']:.2f} s; load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


def _figures_line(res, label="") -> str:
    tars = "  ".join(f"TAR@FAR={k}: {'n/a' if v is None else f'{v:.4f}'}" for k, v in res["tar_at_far"].items())
    cmc = res.get("cmc") or []
    at = f"  rank-{len(cmc)}: {cmc[-1]:.4f}" if len(cmc) > 1 else ""
    return f"{label}rank-1: {res['rank1']:.4f}{at}  {tars}"


def _embed_line(what, feats) -> str:
    rate = f"{feats.img_per_s:.1f} img/s" if feats.img_per_s else "rate unknown"
    how = f"embedded {feats.num_embedded} now ({rate})" if feats.num_embedded else f"from cache ({rate} when embedded)"
    return f"{what}: {len(feats.names):,} faces from {feats.source} [{feats.kind}], {how}"


def _base_report(embedder) -> dict:
    model = {} if embedder is None else dict(model=str(embedder.path), model_sha256=model_fingerprint(embedder.path),
                                             preprocess=embedder.preprocess, flip=bool(embedder.flip))
    return dict(**model, threads=FLAGS.threads,
                chunk_size=FLAGS.chunk_size, fars=_fars(), max_rank=FLAGS.max_rank, cache_dir=FLAGS.cache_dir,
                load_average_1min=os.getloadavg()[0], cpu_count=os.cpu_count())


def _embed_fields(prefix, feats) -> dict:
    return {f"{prefix}_source": feats.source, f"{prefix}_source_kind": feats.kind,
            f"num_embedded_{prefix}": feats.num_embedded, f"{prefix}_embed_seconds": feats.embed_seconds,
            f"{prefix}_embed_img_per_s": feats.img_per_s, f"{prefix}_cache_file": feats.cache_file}


def _random_baseline(emb, labels, num, dim) -> dict:
    rnd = random_unit_vectors(num, dim, seed=FLAGS.seed)
    res = megaface_search(emb, labels, rnd, fars=_fars(), max_rank=FLAGS.max_rank, chunk_size=FLAGS.chunk_size,
                          threads=FLAGS.threads).to_dict()
    return {k: res[k] for k in ("rank1", "cmc", "tar_at_far", "threshold_at_far", "num_distractors")}


# ----------------------------------------------------------------------------------------------- modes
def _random_mode() -> dict:
    num = parse_random(FLAGS.distractors)
    dim = FLAGS.dim or _embedder().embedding_dim
    t0 = time.perf_counter()
    # Against random distractors no face figure is reported, so the probes need not be faces either: only
    # their number (--max_probes) and dimension matter for the speed.
    emb, labels, source = _synthetic_probes(dim, FLAGS.max_probes, FLAGS.max_per_identity or 6, FLAGS.seed)
    probe_seconds = time.perf_counter() - t0
    rss_before = _peak_rss_mb()
    t0 = time.perf_counter()
    distractors = random_unit_vectors(num, dim, seed=FLAGS.seed)
    gen_seconds = time.perf_counter() - t0
    rss_generated = _peak_rss_mb()
    res = _search(emb, labels, distractors)
    out = _base_report(None)
    out.update({k: v for k, v in res.items() if k not in ("rank1", "cmc", "tar_at_far", "threshold_at_far",
                                                          "reason_at_far")})
    # Random directions are not faces: no accuracy figure leaves this mode, in the JSON or on the console.
    out.update(distractors_kind="random", rank1=None, tar_at_far={}, probes=source, probe_seconds=probe_seconds,
               distractor_bytes=int(distractors.nbytes), distractor_generate_seconds=gen_seconds,
               peak_rss_mb=_peak_rss_mb(), peak_rss_mb_before_distractors=rss_before,
               peak_rss_mb_after_generation=rss_generated,
               note="random unit vectors as distractors: a speed benchmark; rank-1 and TAR are not reported")
    print(f"probes: {source}: {res['num_probes']} vectors")
    print(f"distractors (random, speed benchmark only): {num:,} x {dim} float32 "
          f"({distractors.nbytes / 2**30:.2f} GiB), generated in {gen_seconds:.1f} s")
    print(_speed_line(out))
    print(f"peak RSS: {out['peak_rss_mb']:.0f} MB (before distractors: {rss_before:.0f} MB, "
          f"after generating them: {rss_generated:.0f} MB)")
    return out


def _real_mode() -> dict:
    embedder = _embedder()
    progress = FLAGS.progress
    same = Path(FLAGS.distractors).resolve() == Path(FLAGS.probes).resolve()
    if same:  # one tree: embed it whole once, then pick the probes from it
        probes_all = load_source(FLAGS.probes, embedder, FLAGS.cache_dir, progress)
        rows, labels = select_probe_rows(probes_all.names, FLAGS.min_per_identity,
                                               FLAGS.max_per_identity or None, FLAGS.max_probes)
        probes, dist_all = probes_all.subset(rows), probes_all
    else:
        probes, labels = load_probes(FLAGS.probes, embedder, FLAGS.cache_dir, FLAGS.min_per_identity,
                                           FLAGS.max_per_identity or None, FLAGS.max_probes, progress)
        probes_all = probes
        dist_all = load_source(FLAGS.distractors, embedder, FLAGS.cache_dir, progress)
    probe_ids = set(probes.identities())
    keep = np.array([i not in probe_ids for i in dist_all.identities()])
    distractors = dist_all.subset(keep)
    if not len(distractors.names):
        raise ValueError(f"no distractors left: every face of {FLAGS.distractors!r} belongs to a probe identity")
    if distractors.features.shape[1] != probes.features.shape[1]:
        raise ValueError(f"probes are {probes.features.shape[1]}-d but distractors {distractors.features.shape[1]}-d: "
                         "embed both with the same model")
    rss_before = _peak_rss_mb()
    res = _search(probes.features, labels, distractors.features)
    out = _base_report(embedder)
    out.update(res)
    out.update(distractors_kind="real", num_distractors_dropped_probe_identities=int((~keep).sum()),
               probe_identities=len(probe_ids), peak_rss_mb=_peak_rss_mb(), peak_rss_mb_before_distractors=rss_before,
               **_embed_fields("probe", probes_all), **_embed_fields("distractor", dist_all))
    if same:
        out["num_embedded_distractor"] = 0  # one embedding of the shared tree, counted under the probes
    if FLAGS.compare_random:
        out["random_baseline"] = _random_baseline(probes.features, labels, len(distractors.names), res["dim"])
    print(_embed_line("probe source", probes_all))
    print(f"probes: {res['num_probes']} images of {len(probe_ids)} identities, {res['num_rank1_trials']} rank-1 "
          f"trials, {res['num_positive_pairs']} genuine pairs")
    print(_embed_line("distractor source", dist_all) + ("  (same tree as the probes)" if same else ""))
    print(f"distractors (real): {res['num_distractors']:,} faces ({int((~keep).sum()):,} of the probe identities "
          "dropped)")
    print(_figures_line(res, "real distractors:   "))
    if FLAGS.compare_random:
        print(_figures_line(out["random_baseline"], "random, same N:     ") + "   (not a face figure)")
    print(_speed_line(out))
    print(f"peak RSS: {out['peak_rss_mb']:.0f} MB")
    return out


def _megaface_mode() -> dict:
    layout = read_megaface_layout(FLAGS.megaface, FLAGS.facescrub_images, FLAGS.megaface_images,
                                        FLAGS.remove_noise)
    embedder = _embedder()
    progress = FLAGS.progress
    probes = embed_image_files(embedder, layout.probe_root, layout.probe_paths, FLAGS.cache_dir,
                                     progress=progress)
    names = sorted(set(layout.probe_ids))
    labels = np.searchsorted(names, layout.probe_ids)
    union = sorted(set().union(*layout.sets.values()))
    dist = embed_image_files(embedder, layout.distractor_root, union, FLAGS.cache_dir, progress=progress)
    row = {n: i for i, n in enumerate(dist.names)}
    feats = dist.features
    chunk = FLAGS.chunk_size
    per_size = {}
    rss_before = _peak_rss_mb()
    print(_embed_line("FaceScrub probes", probes) + f"; {len(layout.removed_probes)} noisy removed")
    print(_embed_line("MegaFace distractors", dist) + f"; {len(layout.removed_distractors)} noisy removed")
    for n, rels in sorted(layout.sets.items()):
        idx = np.array([row[r] for r in rels], np.int64)
        chunks = (np.asarray(feats[idx[i:i + chunk]]) for i in range(0, len(idx), chunk))  # no [N, D] copy
        res = _search(probes.features, labels, chunks, num_distractors=len(idx))
        per_size[str(n)] = res
        print(_figures_line(res, f"set {n:>9,} ({len(idx):,} distractors): "))
    largest = per_size[str(max(layout.sets))]
    out = _base_report(embedder)
    out.update(largest)
    out.update(distractors_kind="real", megaface_root=str(FLAGS.megaface), megaface=per_size,
               num_identities=len(names), removed_probes=layout.removed_probes,
               removed_distractors=layout.removed_distractors, peak_rss_mb=_peak_rss_mb(),
               peak_rss_mb_before_distractors=rss_before, **_embed_fields("probe", probes),
               **_embed_fields("distractor", dist))
    if FLAGS.compare_random:
        out["random_baseline"] = _random_baseline(probes.features, labels, largest["num_distractors"], largest["dim"])
        print(_figures_line(out["random_baseline"], "random, largest N: ") + "   (not a face figure)")
    print(_speed_line(out))
    print(f"peak RSS: {out['peak_rss_mb']:.0f} MB")
    return out


def _bench() -> int:
    if FLAGS.output:  # before any embedding: the report must be writable
        check_output_file(FLAGS.output, "--output", example="identify.json", ours=json_report("fars", "max_rank"),
                          what="a bench_identify report")
    if FLAGS.megaface or (FLAGS.distractors and source_kind(FLAGS.distractors) != "random"):  # faces embedded
        check_output_dir(FLAGS.cache_dir, "--cache_dir")
    if FLAGS.megaface:
        out = _megaface_mode()
    elif FLAGS.distractors is None:
        raise ValueError("pass --distractors=SRC (image folder, TFRecord shards, X.npy) or random:N, or --megaface=ROOT")
    elif source_kind(FLAGS.distractors) == "random":
        out = _random_mode()
    else:
        out = _real_mode()
    if FLAGS.output:
        write_json_atomic(FLAGS.output, out, indent=2)
    return 0


def main(argv):
    """CLI: run the MegaFace-style identification benchmark (or the random-vector speed test) and report it.

    Returns 0; bad input (an --output or --cache_dir that cannot be written included, checked first) raises, and
    mobiface_tf.cli prints one "error: ..." line and exits 2. Flags are defined at module level.
    """
    del argv
    return _bench()
