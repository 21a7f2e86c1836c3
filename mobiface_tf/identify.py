"""Who is this? Face identification against an enrolled gallery.

    python -m mobiface_tf.identify --model=PATH --gallery=DIR --query=IMG [--query=IMG2 ...] [--top=K]

The gallery is one folder per identity (DIR/<name>/<photo>). Each identity's template is the mean of the
L2-normalised embeddings of its photos, renormalised (averaging unit vectors, as face templates are built in
the IJB-style "template" protocols, keeps one sharp photo from dominating). A query's score against an identity
is the cosine similarity to its template; the answer is the top-K identities, or "unknown" when even the best
score is not above the threshold (same threshold as verify: --threshold, the model's sidecar, or the default).
"unknown" is only ever a rejection: a gallery folder named like it (any case, spaces or underscores) is refused
at enrolment with one line saying to rename it (mobiface_tf.gallery.check_identity_name).

Enrolment (the photo and identity rules, shared photos, the cached index keyed on the model's fingerprint) is
mobiface_tf/gallery.py's; see its docstring.

After enrolment, identity pairs that look like one person (mean cross-photo cosine above the median genuine
score of the gallery) are listed in one warning line each and in the JSON ("near_duplicates"); they are never
merged. --far leaves them out of the impostor scores and, when the gallery has fewer than 10/far of those,
sets the threshold from a generalized Pareto tail fit (mobiface_tf.open_set).

The gallery, its enrolment and its index are mobiface_tf/gallery.py's; this module scores queries against it,
sets the open-set threshold, and is the identify command.
"""
from __future__ import annotations

if __name__ == "__main__":  # `python -m mobiface_tf.identify`: the identify command via mobiface_tf.cli,
    # before TensorFlow is imported (quiet start-up)
    from mobiface_tf import cli

    cli.identify()

import json
import sys

import numpy as np
from absl import flags

from mobiface_tf import open_set
from mobiface_tf.embedder import EmbeddingError
from mobiface_tf.faces import FaceError, check_model_path, load_face, load_model, read_photo, resolve_threshold
from mobiface_tf.gallery import (INDEX_NAME, REJECTION, Gallery, IndexNotOurs, check_index_path, enroll,
                                 index_location, model_key, scan_gallery)
from mobiface_tf.images import printable


# ----------------------------------------------------------------------------------------------- open set
def impostor_scores(gallery: Gallery, exclude_pairs=(), exclude: np.ndarray | None = None) -> np.ndarray:
    """[N'] for each enrolled photo not excluded, its best score against the templates of the *other* identities.

    Each photo is a stand-in for a stranger: it is a false accept at threshold t when this score is > t. Its
    own identity's template is left out (it contains the photo), so no photo is scored against itself, and so
    are identity pairs in `exclude_pairs` (flagged near-duplicates; see mobiface_tf.open_set.impostor_scores).
    exclude: [N] bool mask of photos to leave out (default gallery.far_excluded: photos whose bytes are also
    filed under another identity, which would be scored against a template holding themselves).
    """
    if gallery.image_embeddings is None or len(gallery.names) < 2:
        raise FaceError("--far needs a gallery of at least 2 identities (it scores each photo against the "
                        "other identities' templates)")
    exclude = gallery.far_excluded if exclude is None else exclude
    keep = np.ones(len(gallery.image_labels), bool) if exclude is None else ~np.asarray(exclude, bool)
    if not keep.any():
        raise FaceError("--far has no impostor photo left: every gallery photo is filed under two identities")
    return open_set.impostor_scores(gallery.image_embeddings[keep], np.asarray(gallery.image_labels)[keep],
                                    gallery.templates, exclude_pairs)


def near_duplicates(gallery: Gallery) -> open_set.NearDuplicates:
    """Identity pairs of this gallery that look like one person (mobiface_tf.open_set.find_near_duplicates)."""
    return open_set.find_near_duplicates(gallery.image_embeddings, gallery.image_labels, len(gallery.names))


def far_threshold(gallery: Gallery, far: float, exclude_pairs=()) -> open_set.FarThreshold:
    """The threshold for a per-query false-accept rate on this gallery (mobiface_tf.open_set.far_threshold).

    From the impostor scores without the `exclude_pairs` identity pairs: empirical with N * far >= 10, else a
    generalized Pareto tail estimate (N >= 100), else the highest score. The right threshold rises with the
    number of identities: each query meets more impostor templates.
    """
    if not 0 < far < 1:
        raise FaceError(f"--far must be in (0, 1), got {far}")
    scores = impostor_scores(gallery, exclude_pairs)
    if not len(scores):
        raise FaceError("--far has no impostor scores: every identity pair is flagged as one person")
    return open_set.far_threshold(scores, far)


def warn_near_duplicates(near: open_set.NearDuplicates, names: list[str], warn, limit: int = 20) -> None:
    """One warning line per flagged pair (both names and the score), at most `limit`, then a count."""
    for a, b, score in near.pairs[:limit]:
        warn(f"identities {names[a]!r} and {names[b]!r} look like one person: score {score:.4f} > bound "
             f"{near.bound:.4f} ({near.quantile:.0%} quantile of the genuine scores of {near.num_genuine} "
             "identities); kept apart, left out of each other's --far impostor scores")
    if len(near.pairs) > limit:
        warn(f"{len(near.pairs) - limit} more identity pairs look like one person (all in --json "
             "'near_duplicates')")


# ----------------------------------------------------------------------------------------------- queries
def rank(gallery: Gallery, query_emb: np.ndarray, top: int, threshold: float) -> dict:
    """{"identity": best name or REJECTION ("unknown", never an identity's name: gallery.check_identity_name),
    "score": best score, "top": [(name, score), ...]} for one query."""
    scores = gallery.templates @ np.asarray(query_emb, np.float32)
    order = np.argsort(-scores, kind="stable")[:max(1, top)]
    best = float(scores[order[0]])
    return {"identity": gallery.names[order[0]] if best > threshold else REJECTION, "score": best,
            "top": [(gallery.names[i], float(scores[i])) for i in order]}


def identify(gallery: Gallery, embedder, queries, top: int, threshold: float, aligner=None) -> list[dict]:
    """One result per query path: a ranking, or {"query", "error"} when the query has no usable face."""
    results = []
    for q in queries:
        try:
            crop, faces = load_face(q, aligner)
        except FaceError as e:
            results.append({"query": printable(q), "error": str(e)})
            continue
        r = rank(gallery, embedder.embed(crop[None])[0], top, threshold)
        results.append({"query": printable(q), "faces_found": faces, **r})
    return results


def run(model_path, gallery_dir, queries, top=3, threshold=None, aligned=False, index=None, rebuild=False,
        as_json=False, out=sys.stdout, err=sys.stderr, far=None, progress=False) -> int:
    """The CLI without flag parsing; returns the exit status (1 if anything, or any query, failed; 2, before any
    work, when `index` is an existing file that is not a mobiface index: it is left untouched).

    far: set the threshold from the gallery's own impostor scores at this per-query false-accept rate
    (`far_threshold`) instead of --threshold / the sidecar / the default.
    """
    far_info = None
    try:
        model_path = check_model_path(model_path)  # no --model: the shipped student
        if not queries:
            raise FaceError("no --query=IMG given; pass one or more --query flags")
        if top < 1:
            raise FaceError(f"--top must be >= 1, got {top}")
        if far is not None and threshold is not None:
            raise FaceError(f"give --threshold ({threshold}) or --far ({far}), not both")
        if far is not None and not 0 < far < 1:
            raise FaceError(f"--far must be in (0, 1), got {far}")
        t, source = resolve_threshold(model_path, threshold, warn=lambda m: print(f"warning: {m}", file=err))
        scan_gallery(gallery_dir)  # fail on a bad --gallery before loading TF
        check_index_path(*index_location(gallery_dir, index))  # never replace a file that is not our index
        for q in queries:  # a typo in a query path fails before any work
            read_photo(q)
        embedder = load_model(model_path)
        aligner = None
        if not aligned:
            from mobiface_tf.align import FaceAligner

            aligner = FaceAligner()
        gallery = enroll(gallery_dir, embedder, model_key(model_path, embedder, aligned), index, aligner, rebuild,
                         warn=lambda m: print(f"warning: {m}", file=err), progress=progress)
        near = near_duplicates(gallery)
        warn_near_duplicates(near, gallery.names, lambda m: print(f"warning: {m}", file=err))
        if far is not None:
            ft = far_threshold(gallery, far, [(a, b) for a, b, _ in near.pairs])
            t, far_info = ft.threshold, ft.to_json()
            left_out = (f"{len(near.pairs)} near-duplicate pair{'s' * (len(near.pairs) != 1)} left out"
                        if near.bound is not None else near.rule())
            left = int(gallery.far_excluded.sum()) if gallery.far_excluded is not None else 0
            if left:
                left_out += f", {left} photos filed under two identities left out"
            source = (f"--far={far:g} on this gallery: each of its photos scored against the other "
                      f"{len(gallery.names) - 1} identities, {left_out}; {ft.describe()}")
        results = identify(gallery, embedder, queries, top, t, aligner)
    except IndexNotOurs as e:  # bad input that would have cost the user a file: exit 2, as the other commands
        print(f"error: {e}", file=err)
        return 2
    except (FaceError, EmbeddingError) as e:
        print(f"error: {e}", file=err)
        return 1
    for r in results:
        if "error" in r:
            print(f"error: {r['query']}: {r['error']}", file=err)
    if as_json:
        out.write(json.dumps({"gallery": {"identities": len(gallery.names), "images": sum(gallery.num_images),
                                          "embedded": gallery.embedded, "reused": gallery.reused,
                                          "removed": gallery.removed, "skipped": gallery.skipped,
                                          "shared_photos": gallery.shared_photos,
                                          "merged_identities": [{"identity": n, "folders": f}
                                                                for n, f in gallery.merged],
                                          "index": str(gallery.index_path)},
                              "threshold": round(t, 4), "threshold_source": source, **(far_info or {}),
                              "near_duplicates": near.to_json(gallery.names),
                              "results": [_rounded(r) for r in results]}) + "\n")
    else:
        lines = [gallery.summary(), f"threshold {t:.4f} ({source})"]
        for r in results:
            if "error" in r:
                continue
            lines.append(f"{r['query']}: {r['identity']} (best {r['score']:.4f})")
            lines += [f"  {k}. {name}  {score:.4f}" for k, (name, score) in enumerate(r["top"], 1)]
        out.write("\n".join(lines) + "\n")
    return 1 if any("error" in r for r in results) else 0


def _rounded(result: dict) -> dict:
    """A result with its scores at 4 decimals, as the text output shows them: float32 sums differ in the last
    bits between CPUs, so full precision would print a different number on another machine."""
    if "error" in result:
        return result
    return {**result, "score": round(result["score"], 4), "top": [(n, round(s, 4)) for n, s in result["top"]]}


FLAGS = flags.FLAGS


def define_flags():
    """Flags are defined only when run as a program, so importing this module (tests, verify and identify
    together) never registers duplicate absl flags."""
    flags.DEFINE_string("model", None, "Embedding model: .keras file, SavedModel dir, .tflite or .onnx file; "
                       "default: the shipped student models/mobiface_student_fp32.tflite.")
    flags.DEFINE_string("gallery", None, "Gallery folder: one sub-folder of photos per identity.")
    flags.DEFINE_multi_string("query", [], "Query photo; repeat the flag for several.")
    flags.DEFINE_integer("top", 3, "How many identities to list per query.", lower_bound=1)
    flags.DEFINE_float("threshold", None, "Cosine threshold below which the answer is 'unknown'; default: the model's "
                       ".eval.json sidecar, else the documented default in mobiface_tf/faces.py.")
    flags.DEFINE_string("index", None, f"Enrolment cache file; default GALLERY/{INDEX_NAME}. An existing file that is "
                        "not a mobiface index is never replaced (exit 2).")
    flags.DEFINE_bool("rebuild_index", False, "Ignore and replace an existing index (never a file that is not one).")
    flags.DEFINE_bool("aligned", False, "Gallery and query photos are already aligned face crops: skip detection.")
    flags.DEFINE_bool("json", False, "Print one JSON object instead of text.")
    flags.DEFINE_float("far", None, "Instead of --threshold: the per-query false-accept rate to allow (e.g. 1e-3). "
                       "The threshold is set from the gallery's own impostor scores (each enrolled photo against the "
                       "other identities' templates), so it rises with the gallery's size. Identity pairs that look "
                       "like one person are left out of them; with fewer than 10/far scores the threshold is a "
                       "generalized Pareto tail estimate. It is printed with the FAR it expects and how many "
                       "impostor scores stand behind it.")
    flags.DEFINE_bool("progress", True, "Show a progress bar while enrolling new gallery photos (--noprogress: off).")


def main(argv):
    """CLI: list the closest gallery identities for each --query photo; returns the exit status (0 ok, 1 error, 2
    when --index names an existing file that is not a mobiface index).

    Flags are defined by the module-level `define_flags()`; positional arguments are refused (exit 1).
    """
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}; pass photos with --query=IMG", file=sys.stderr)
        return 1
    return run(FLAGS.model, FLAGS.gallery, FLAGS.query, FLAGS.top, FLAGS.threshold, FLAGS.aligned, FLAGS.index,
               FLAGS.rebuild_index, FLAGS.json, far=FLAGS.far, progress=FLAGS.progress)
