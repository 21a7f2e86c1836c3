"""Who is this? Face identification against an enrolled gallery.

    python -m mobiface_tf.identify --model=PATH --gallery=DIR --query=IMG [--query=IMG2 ...] [--top=K]

The gallery is one folder per identity (DIR/<name>/<photo>). Each identity's template is the mean of the
L2-normalised embeddings of its photos, renormalised (averaging unit vectors, as face templates are built in
the IJB-style "template" protocols, keeps one sharp photo from dominating). A query's score against an identity
is the cosine similarity to its template; the answer is the top-K identities, or "unknown" when even the best
score is not above the threshold (same threshold as verify: --threshold, the model's sidecar, or the default).

Enrolment is cached in an index file (default DIR/.mobiface_index.npz) holding one embedding per distinct photo
content (sha256), plus the model's fingerprint (mobiface_tf.fingerprint: every file it reads, an ONNX model's
external data included) and embedding size. A rerun embeds only new or changed photos; deleted photos leave
the index. The index is an .npz of plain arrays + a JSON string (no pickle), written to a temp file and renamed,
so a crash never leaves half an index. An index that cannot be read is rebuilt with a warning; one built by
another model or embedding size is an error (pass --index or --rebuild_index).

What is a photo and what is an identity is mobiface_tf.images' rule (Pillow reads it; folder names compared in
Unicode NFC, so NFC and NFD folders of one name are merged, with a warning). Files left out are counted in
"skipped" and named in warnings. A photo whose bytes are filed under two identities is named in a warning and
left out of --far's impostor scores.

After enrolment, identity pairs that look like one person (mean cross-photo cosine above the median genuine
score of the gallery) are listed in one warning line each and in the JSON ("near_duplicates"); they are never
merged. --far leaves them out of the impostor scores and, when the gallery has fewer than 10/far of those,
sets the threshold from a generalized Pareto tail fit (mobiface_tf.open_set).
"""
from __future__ import annotations

import os

if __name__ == "__main__":  # `python -m mobiface_tf.identify`: the identify command via mobiface_tf.cli,
    # before TensorFlow is imported (quiet start-up)
    from mobiface_tf import cli

    cli.identify()

import dataclasses
import errno
import json
import stat
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from absl import flags

from mobiface_tf import open_set
from mobiface_tf.embedder import EmbeddingError
from mobiface_tf.faces import FaceError, check_model_path, load_face, load_model, read_photo, resolve_threshold
from mobiface_tf.fingerprint import file_sha256, model_fingerprint
from mobiface_tf.images import IMAGE_EXTENSIONS, hidden_reason, identity_name, list_identity_tree, merge_message

INDEX_NAME = ".mobiface_index.npz"
INDEX_VERSION = 1
_EMBED_CHUNK = 256  # crops held in memory before embedding: 256 x 112x112x3 = 9.6 MB


class IndexCorrupt(Exception):
    """The index file exists but cannot be trusted; it is rebuilt."""


@dataclasses.dataclass
class Gallery:
    """An enrolled gallery: one unit-norm template per identity folder, plus what enrolment did.

    templates: [K, D] float32, row k for names[k]; image_embeddings / image_labels: [N, D] and [N] per usable
    photo; embedded / reused / removed / skipped: index bookkeeping of this run.
    """

    names: list[str]            # identity folder names, sorted
    templates: np.ndarray       # [K, D] float32, unit rows
    num_images: list[int]       # photos behind each template
    embedded: int               # photos embedded in this run
    reused: int                 # photos whose embedding came from the index
    removed: int                # index entries dropped because their photo is gone or changed
    skipped: list[tuple[str, str]]  # (relative path, reason): files that are not photos, photos without a face
    index_path: Path
    index_written: bool
    image_embeddings: np.ndarray | None = None  # [N, D] unit embedding of each usable gallery photo
    image_labels: np.ndarray | None = None      # [N] index into `names` of each of those photos
    # [N] True for a photo whose bytes are also filed under another identity: left out of --far's impostor scores
    far_excluded: np.ndarray | None = None
    shared_photos: list[list[str]] = dataclasses.field(default_factory=list)  # relative paths of one content
    merged: list[tuple[str, list[str]]] = dataclasses.field(default_factory=list)  # (identity, NFC-equal folders)

    def summary(self) -> str:
        """One line: identities, images, what was embedded / reused / removed / skipped, and the index path."""
        return (f"gallery: {len(self.names)} identities, {sum(self.num_images)} images "
                f"(embedded {self.embedded} new, reused {self.reused}, removed {self.removed}, "
                f"skipped {len(self.skipped)}); index {self.index_path}")


# ----------------------------------------------------------------------------------------------- the index
def model_key(model_path, embedder, aligned: bool) -> dict:
    """What the cached embeddings depend on, besides each photo's bytes."""
    return {"path": str(Path(model_path).resolve()), "sha256": model_fingerprint(model_path),
            "embedding_dim": int(embedder.embedding_dim), "preprocess": embedder.preprocess,
            "flip": bool(embedder.flip), "aligned": bool(aligned)}


def read_index(path: Path) -> tuple[dict, np.ndarray] | None:
    """(meta, embeddings [N, D]) or None when there is no index; IndexCorrupt when it cannot be trusted."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"][()]))
            emb = np.asarray(z["embeddings"], np.float32)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise IndexCorrupt(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(meta, dict) or meta.get("version") != INDEX_VERSION or not isinstance(meta.get("model"), dict):
        raise IndexCorrupt(f"unknown index layout (version {meta.get('version') if isinstance(meta, dict) else '?'})")
    entries = meta.get("entries")
    dim = meta["model"].get("embedding_dim")
    if emb.ndim != 2 or not isinstance(entries, dict) or emb.shape[1] != dim:
        raise IndexCorrupt(f"embeddings {emb.shape} do not match the header (embedding_dim {dim})")
    if any(not isinstance(r, int) or not 0 <= r < len(emb) for r in entries.values()) or not np.isfinite(emb).all():
        raise IndexCorrupt("entries point outside the embedding table or embeddings are not finite")
    if not isinstance(meta.get("failed", {}), dict):
        raise IndexCorrupt("'failed' is not a mapping")
    return meta, emb


def write_index(path: Path, meta: dict, embeddings: np.ndarray) -> None:
    """Atomic: write a temp file in the same folder, fsync, then rename over the old index."""
    folder = path.parent
    # The owner-write bit too: root ignores a read-only mode, but a read-only gallery (shared data) stays untouched.
    if not (os.access(folder, os.W_OK) and folder.stat().st_mode & stat.S_IWUSR):
        raise PermissionError(errno.EACCES, "folder is read-only", str(folder))
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), embeddings=np.asarray(embeddings, np.float32))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # the write failed: leave no temp file behind
            os.unlink(tmp)


def check_compatible(meta: dict, key: dict, index_path: Path) -> None:
    """Embeddings of another model or size cannot be mixed with ours: say so rather than guess."""
    old = meta["model"]
    hint = f"pass --index=OTHER.npz for a separate index, or --rebuild_index to replace {str(index_path)!r}"
    if old.get("embedding_dim") != key["embedding_dim"]:
        raise FaceError(f"index {str(index_path)!r} holds {old.get('embedding_dim')}-d embeddings but model "
                        f"{key['path']!r} gives {key['embedding_dim']}-d; {hint}")
    for field in ("sha256", "preprocess", "flip", "aligned"):
        if old.get(field) != key[field]:
            raise FaceError(f"index {str(index_path)!r} was built with another {field} "
                            f"({old.get('path')!r}, {field}={old.get(field)!r}; now {key['path']!r}, "
                            f"{field}={key[field]!r}); {hint}")


# ----------------------------------------------------------------------------------------------- enrolment
def scan_gallery(gallery_dir, on_merge=None) -> tuple[list[tuple[str, str, Path]], list[tuple[str, str]]]:
    """([(identity, path relative to the gallery, path)], [(relative path, reason)] left out), both sorted.

    Listed by mobiface_tf.images.list_identity_tree, the one rule of what is a photo (Pillow reads it: .avif,
    .jfif, .webp, .tif, .gif too) and what is an identity (folder names in Unicode NFC: an NFC and an NFD
    folder of one name are one identity, reported through on_merge(name, folders)). Hidden entries
    (.ipynb_checkpoints, ._x.jpg, __MACOSX) are never identities or photos. Raises FaceError when DIR is
    missing or not a directory.
    """
    if not gallery_dir:
        raise FaceError("--gallery is required: a folder laid out as DIR/<identity>/<photo>")
    root = Path(gallery_dir)
    if not root.is_dir():
        raise FaceError(f"gallery not found or not a directory: {str(root)!r}; pass --gallery=DIR laid out as "
                        "DIR/<identity>/<photo>")
    identities, left_out = list_identity_tree(root, on_merge=on_merge)
    files = [(name, f.relative_to(root).as_posix(), f) for name, found in identities for f in found]
    return files, [(sk.path.relative_to(root).as_posix(), sk.reason) for sk in left_out]


def _report_left_out(left_out, index_path: Path, root: Path, listed: set, warn) -> list[tuple[str, str]]:
    """Warn about files the listing left out (one line each; one line for all hidden entries) and about
    identity folders left with no photo; returns them, the index's own files excepted."""
    ours = [(rel, why) for rel, why in left_out
            if not (index_path.parent.resolve() == root.resolve() and rel.startswith(index_path.name))]
    hidden = [rel for rel, _ in ours if any(hidden_reason(part) for part in rel.split("/"))]
    for rel, why in ours:
        if rel not in hidden:
            warn(f"skipped gallery file {rel}: {why}")
    if hidden:
        warn(f"left out {len(hidden)} hidden or OS-litter entries ({', '.join(hidden[:3])}"
             f"{', ...' if len(hidden) > 3 else ''})")
    folders = {rel.split("/")[0] for rel, _ in ours if "/" in rel and rel not in hidden}
    for name in sorted({identity_name(n) for n in folders} - listed):
        warn(f"identity {name!r} has no usable photo and is left out of the gallery")
    return ours


def _shared_photos(files, hashes, warn) -> tuple[list[list[str]], set[str]]:
    """Photos whose bytes are filed under two or more identities: a warning naming them, and their hashes."""
    by_hash: dict[str, list[tuple[str, str]]] = {}
    for (name, rel, _), h in zip(files, hashes):
        by_hash.setdefault(h, []).append((name, rel))
    shared, shared_hashes = [], set()
    for h, where in by_hash.items():
        if len({name for name, _ in where}) > 1:
            shared.append([rel for _, rel in where])
            shared_hashes.add(h)
            warn(f"the same photo (sha256 {h[:12]}) is filed under {len({n for n, _ in where})} identities: "
                 f"{' and '.join(rel for _, rel in where)}; it counts for each of their templates and is left out "
                 "of --far's impostor scores. Remove the mis-filed copy")
    return shared, shared_hashes


def enroll(gallery_dir, embedder, key: dict, index_path=None, aligner=None, rebuild: bool = False,
           warn=lambda msg: print(f"warning: {msg}", file=sys.stderr), progress: bool = False) -> Gallery:
    """Build the identity templates, embedding only photos whose content the index does not hold.

    aligner=None means the gallery photos are aligned crops (key["aligned"] must then be True). progress=True
    shows a bar on stderr over the photos to embed (MTCNN + the model: ~0.1-0.2 s each on a CPU core).
    """
    from tqdm import tqdm

    root = Path(gallery_dir)
    merged = []

    def on_merge(name, folders):  # NFC and NFD folders of one name: one identity, said once
        merged.append((name, folders))
        warn(merge_message(name, folders))

    files, left_out = scan_gallery(root, on_merge=on_merge)
    index_path = Path(index_path) if index_path else root / INDEX_NAME
    left_out = _report_left_out(left_out, index_path, root, {f[0] for f in files}, warn)
    cached, failed_before = {}, {}
    meta_old = None
    if not rebuild:
        try:
            loaded = read_index(index_path)
        except IndexCorrupt as e:
            warn(f"index {index_path} is corrupt ({e}); rebuilding it")
            loaded = None
        if loaded is not None:
            meta_old, emb_old = loaded
            check_compatible(meta_old, key, index_path)
            cached = {h: emb_old[r] for h, r in meta_old["entries"].items()}
            failed_before = dict(meta_old.get("failed", {}))

    # Hash every photo; the hash, not the path, decides reuse (a renamed photo is not embedded again).
    hashes = []
    for _, rel, path in files:
        try:
            hashes.append(file_sha256(path))
        except OSError as e:
            raise FaceError(f"cannot read gallery photo {str(path)!r} ({e.strerror})") from None
    shared, shared_hashes = _shared_photos(files, hashes, warn)

    vectors: dict[str, np.ndarray] = {}
    failed: dict[str, str] = {}
    todo, queued = [], set()
    for (_, rel, path), h in zip(files, hashes):
        if h in cached:
            vectors[h] = cached[h]
        elif h in failed_before:
            failed[h] = failed_before[h]
        elif h not in queued:  # two copies of one photo are embedded once
            queued.add(h)
            todo.append((h, rel, path))
    embedded = 0
    bar = tqdm(total=len(todo), unit="photo", desc="enrolling", disable=not progress or not todo, file=sys.stderr)
    for start in range(0, len(todo), _EMBED_CHUNK):
        crops, keys = [], []
        for h, rel, path in todo[start:start + _EMBED_CHUNK]:
            bar.update(1)
            try:
                crop, _ = load_face(path, aligner)
            except FaceError as e:
                failed[h] = str(e)
                continue
            crops.append(crop)
            keys.append(h)
        if crops:
            emb = embedder.embed(np.stack(crops))
            vectors.update(zip(keys, emb))
            embedded += len(crops)
    bar.close()

    # Templates: mean of unit embeddings, renormalised.
    per_id: dict[str, list[np.ndarray]] = {}
    per_id_shared: dict[str, list[bool]] = {}
    skipped = list(left_out)
    for (name, rel, _), h in zip(files, hashes):
        if h in vectors:
            per_id.setdefault(name, []).append(vectors[h])
            per_id_shared.setdefault(name, []).append(h in shared_hashes)
        else:
            skipped.append((rel, failed[h]))
            warn(f"skipped gallery photo {rel}: {failed[h]}")
    for name in sorted({f[0] for f in files} - set(per_id)):
        warn(f"identity {name!r} has no usable photo and is left out of the gallery")
    if not per_id:
        raise FaceError(f"gallery {str(root)!r} has no identity folder with a usable face photo; lay it out as "
                        f"DIR/<identity>/<photo> with one of {', '.join(IMAGE_EXTENSIONS)}")
    names = sorted(per_id)
    means = np.stack([np.mean(per_id[n], axis=0) for n in names])
    templates = (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)

    # The index keeps exactly the current photos' hashes: stale entries (deleted or changed photos) go.
    live = list(dict.fromkeys(h for h in hashes if h in vectors))
    live_failed = {h: failed[h] for h in dict.fromkeys(hashes) if h in failed}
    removed = len(set(cached) - set(live)) + len(set(failed_before) - set(live_failed))
    reused = sum(1 for h in hashes if h in cached)
    written = False
    changed = meta_old is None or embedded or removed or live_failed.keys() != failed_before.keys()
    if changed:
        meta = {"version": INDEX_VERSION, "model": key,
                "entries": {h: i for i, h in enumerate(live)}, "failed": live_failed,
                "paths": {rel: h for (_, rel, _), h in zip(files, hashes)}}  # for people reading the index
        table = np.stack([vectors[h] for h in live]).astype(np.float32)
        try:
            write_index(index_path, meta, table)
            written = True
        except OSError as e:
            warn(f"cannot write index {index_path} ({e.strerror}: {e.filename}); enrolment is not cached. "
                 "Pass --index=PATH in a writable folder")
    labels = np.array([names.index(n) for n in names for _ in per_id[n]], np.int64)
    return Gallery(names, templates, [len(per_id[n]) for n in names], embedded, reused, removed, skipped,
                   index_path, written, np.concatenate([np.stack(per_id[n]) for n in names]).astype(np.float32),
                   labels, np.array([x for n in names for x in per_id_shared[n]], bool), shared, merged)


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
    """{"identity": best name or "unknown", "score": best score, "top": [(name, score), ...]} for one query."""
    scores = gallery.templates @ np.asarray(query_emb, np.float32)
    order = np.argsort(-scores, kind="stable")[:max(1, top)]
    best = float(scores[order[0]])
    return {"identity": gallery.names[order[0]] if best > threshold else "unknown", "score": best,
            "top": [(gallery.names[i], float(scores[i])) for i in order]}


def identify(gallery: Gallery, embedder, queries, top: int, threshold: float, aligner=None) -> list[dict]:
    """One result per query path: a ranking, or {"query", "error"} when the query has no usable face."""
    results = []
    for q in queries:
        try:
            crop, faces = load_face(q, aligner)
        except FaceError as e:
            results.append({"query": str(q), "error": str(e)})
            continue
        r = rank(gallery, embedder.embed(crop[None])[0], top, threshold)
        results.append({"query": str(q), "faces_found": faces, **r})
    return results


def run(model_path, gallery_dir, queries, top=3, threshold=None, aligned=False, index=None, rebuild=False,
        as_json=False, out=sys.stdout, err=sys.stderr, far=None, progress=False) -> int:
    """The CLI without flag parsing; returns the exit status (1 if anything, or any query, failed).

    far: set the threshold from the gallery's own impostor scores at this per-query false-accept rate
    (`far_threshold`) instead of --threshold / the sidecar / the default.
    """
    far_info = None
    try:
        check_model_path(model_path)
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
    flags.DEFINE_string("model", None, "Embedding model: .keras file, SavedModel dir or .tflite file.")
    flags.DEFINE_string("gallery", None, "Gallery folder: one sub-folder of photos per identity.")
    flags.DEFINE_multi_string("query", [], "Query photo; repeat the flag for several.")
    flags.DEFINE_integer("top", 3, "How many identities to list per query.", lower_bound=1)
    flags.DEFINE_float("threshold", None, "Cosine threshold below which the answer is 'unknown'; default: the model's "
                       ".eval.json sidecar, else the documented default in mobiface_tf/faces.py.")
    flags.DEFINE_string("index", None, f"Enrolment cache file; default GALLERY/{INDEX_NAME}.")
    flags.DEFINE_bool("rebuild_index", False, "Ignore and replace an existing index.")
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
    """CLI: list the closest gallery identities for each --query photo; returns the exit status (0 ok, 1 error).

    Flags are defined by the module-level `define_flags()`; positional arguments are refused (exit 1).
    """
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}; pass photos with --query=IMG", file=sys.stderr)
        return 1
    return run(FLAGS.model, FLAGS.gallery, FLAGS.query, FLAGS.top, FLAGS.threshold, FLAGS.aligned, FLAGS.index,
               FLAGS.rebuild_index, FLAGS.json, far=FLAGS.far, progress=FLAGS.progress)
