"""The enrolled gallery of mobiface_tf.identify: folders of photos -> one template per identity, and its index.

The gallery is one folder per identity (DIR/<name>/<photo>). Each identity's template is the mean of the
L2-normalised embeddings of its photos, renormalised (averaging unit vectors, as face templates are built in
the IJB-style "template" protocols, keeps one sharp photo from dominating).

Enrolment is cached in an index file (default DIR/.mobiface_index.npz) holding one embedding per distinct photo
content (sha256), plus the model's fingerprint (mobiface_tf.fingerprint: every file it reads, an ONNX model's
external data included) and embedding size. A rerun embeds only new or changed photos; deleted photos leave
the index. The index is an .npz of plain arrays + a JSON string (no pickle), written to a temp file and renamed,
so a crash never leaves half an index (mobiface_tf.atomic). An index that cannot be read is rebuilt with a warning
when it is recognisably ours (the default GALLERY/.mobiface_index.npz, or an .npz with our 'meta' header); a file
at --index that is not a mobiface index (the user's own .npz, a model, any other file) is never replaced, even
with --rebuild_index: IndexNotOurs, before any photo is embedded. An index built by another model or embedding
size is an error (pass --index or --rebuild_index).

What is a photo and what is an identity is mobiface_tf.images' and mobiface_tf.identity_folders' rule (Pillow
reads it; folder names compared by the name rule of --exclude_names, so `Colin_Powell/` and `colin_powell/`, or
NFC and NFD spellings of one name, are merged, with a warning naming both folders; symlinks that loop or lead
back up the tree are not followed). Files left out are counted in "skipped" and named in warnings; names that
are not UTF-8 are shown escaped. A photo whose bytes are filed under two identities is named in a warning and
marked in `Gallery.far_excluded`.

No identity may be named like identify's answer for "no match", REJECTION ("unknown", in any spelling the name
rule calls the same): enrolment refuses such a folder in one line that says to rename it, so an answer
"unknown" always means a rejection, in the text and the JSON output alike.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import stat
import sys
import zipfile
from pathlib import Path

import numpy as np

from mobiface_tf.atomic import atomic_path
from mobiface_tf.faces import FaceError, load_face
from mobiface_tf.fingerprint import file_sha256, model_fingerprint
from mobiface_tf.identity_folders import identity_key, identity_name, list_identity_tree, merge_message
from mobiface_tf.images import IMAGE_EXTENSIONS, hidden_reason, printable

INDEX_NAME = ".mobiface_index.npz"
INDEX_VERSION = 1
_EMBED_CHUNK = 256  # crops held in memory before embedding: 256 x 112x112x3 = 9.6 MB
# identify's answer when no identity scores above the threshold; no gallery identity may be named like it
REJECTION = "unknown"


class IndexCorrupt(Exception):
    """The index file exists, is recognisably ours, but cannot be trusted; it is rebuilt."""


class IndexNotOurs(FaceError):
    """--index names an existing file that is not a mobiface gallery index: it is never replaced (identify exits 2)."""


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
    merged: list[tuple[str, list[str]]] = dataclasses.field(default_factory=list)  # (identity, folders of one name)

    def summary(self) -> str:
        """One line: identities, images, what was embedded / reused / removed / skipped, and the index path."""
        return (f"gallery: {len(self.names)} identities, {sum(self.num_images)} images "
                f"(embedded {self.embedded} new, reused {self.reused}, removed {self.removed}, "
                f"skipped {len(self.skipped)}); index {self.index_path}")


# ----------------------------------------------------------------------------------------------- the index
def model_key(model_path, embedder, aligned: bool) -> dict:
    """What the cached embeddings depend on, besides each photo's bytes: the model, how it is fed, and the
    decoder's version (images.DECODER_VERSION: a photo's bytes decode to other pixels after a decoder fix)."""
    from mobiface_tf.images import DECODER_VERSION

    return {"path": str(Path(model_path).resolve()), "sha256": model_fingerprint(model_path),
            "embedding_dim": int(embedder.embedding_dim), "preprocess": embedder.preprocess,
            "flip": bool(embedder.flip), "aligned": bool(aligned), "decoder": DECODER_VERSION}


def read_index(path: Path) -> tuple[dict, np.ndarray] | None:
    """(meta, embeddings [N, D]) or None when there is no index; IndexCorrupt when it cannot be trusted.
    Whether the file is ours at all is check_index_path's question, asked first by `enroll`."""
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
    """Atomic (mobiface_tf.atomic): a temp file in the same folder, fsynced, then renamed over the old index.
    PermissionError for a folder whose mode says read-only (even to root: shared data stays untouched)."""
    folder = path.parent
    # The owner-write bit too: root ignores a read-only mode, but a read-only gallery (shared data) stays untouched.
    if folder.is_dir() and not (os.access(folder, os.W_OK) and folder.stat().st_mode & stat.S_IWUSR):
        raise PermissionError(errno.EACCES, "folder is read-only", str(folder))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, meta=np.array(json.dumps(meta)), embeddings=np.asarray(embeddings, np.float32))


def _first_zip_member(path: Path) -> str | None:
    """The name of the first member of a zip archive from its local header (readable even when the archive is
    cut short), or None when the file does not start like a zip archive."""
    with open(path, "rb") as f:
        head = f.read(30 + 256)
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        return None
    size = int.from_bytes(head[26:28], "little")
    return head[30:30 + size].decode("utf-8", "replace")


def index_not_ours(path: Path) -> str | None:
    """None when `path` may be replaced by a new index: it does not exist, is empty, or is recognisably a
    mobiface gallery index (an .npz whose 'meta' member is a JSON object with a 'version'; one cut short still
    starts with its 'meta' member). Otherwise why it is not one, as a short clause for the message."""
    if not path.exists():
        return None
    if path.is_dir():
        return "a folder"
    if not path.is_file():
        return "not a regular file"
    try:
        if path.stat().st_size == 0:
            return None  # nothing in it to lose
        if not zipfile.is_zipfile(path):  # not whole: ours only if it starts as np.savez writes our index
            return None if _first_zip_member(path) == "meta.npy" else "not an .npz archive"
        with zipfile.ZipFile(path) as z:
            if "meta.npy" not in z.namelist():
                return f"no 'meta'; it holds {', '.join(repr(n.removesuffix('.npy')) for n in z.namelist()[:4])}"
        try:
            with np.load(path, allow_pickle=False) as z:
                text = str(z["meta"][()])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None  # our layout with a damaged 'meta' member (a CRC error): ours, corrupt
        try:
            meta = json.loads(text)
        except ValueError:
            meta = None
        if not isinstance(meta, dict) or "version" not in meta:
            return "its 'meta' is not a mobiface index header"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    return None


def index_location(gallery_dir, index_path=None) -> tuple[Path, bool]:
    """(the index file, whether it is the default GALLERY/.mobiface_index.npz) for --gallery and --index."""
    return (Path(index_path), False) if index_path else (Path(gallery_dir) / INDEX_NAME, True)


def check_index_path(path: Path, default: bool) -> None:
    """IndexNotOurs unless an index may be written at `path`. `default`: the path is the gallery's own
    GALLERY/.mobiface_index.npz (or a file of that name), which only this tool writes: anything there is ours."""
    if default or path.name == INDEX_NAME:
        if path.is_dir():
            raise IndexNotOurs(f"--index {str(path)!r} is a folder; pass a file path such as "
                               f"{str(path / INDEX_NAME)!r}")
        return
    why = index_not_ours(path)
    if why is not None:
        raise IndexNotOurs(f"--index {str(path)!r} exists and is not a mobiface gallery index ({why}); pass "
                           "another --index path, or delete it")


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

    Listed by mobiface_tf.identity_folders.list_identity_tree, the one rule of what is a photo (Pillow reads it: .avif,
    .jfif, .webp, .tif, .gif too) and what is an identity (folder names equal under the name rule of
    --exclude_names, `Colin_Powell` and `colin_powell`, or NFC and NFD spellings, are one identity, reported
    through on_merge(name, folders)). Hidden entries (.ipynb_checkpoints, ._x.jpg, __MACOSX) are never identities
    or photos; symlinks that loop or lead back up the tree are skipped with their reason. Relative paths are
    printable (a name that is not UTF-8 is escaped). Raises FaceError when DIR is missing or not a directory, or
    when an identity is named like REJECTION.
    """
    if not gallery_dir:
        raise FaceError("--gallery is required: a folder laid out as DIR/<identity>/<photo>")
    root = Path(gallery_dir)
    if not root.is_dir():
        raise FaceError(f"gallery not found or not a directory: {str(root)!r}; pass --gallery=DIR laid out as "
                        "DIR/<identity>/<photo>")
    identities, left_out = list_identity_tree(root, on_merge=on_merge)
    for name, _ in identities:
        check_identity_name(name)
    files = [(name, printable(f.relative_to(root).as_posix()), f) for name, found in identities for f in found]
    return files, [(printable(sk.path.relative_to(root).as_posix()), sk.reason) for sk in left_out]


def check_identity_name(name: str) -> None:
    """FaceError (one line: rename the folder) for an identity named like REJECTION under the name rule
    (`unknown`, `Unknown`, ` UNKNOWN`): its matches could not be told from rejections."""
    if identity_key(name) == identity_key(REJECTION):
        raise FaceError(f"gallery identity folder {name!r} has the name identify answers for \"no match\" "
                        f"({REJECTION!r}), so a match could not be told from a rejection; rename the folder (e.g. "
                        f"to 'unnamed_person_1') and run again")


def _report_left_out(left_out, index_path: Path, root: Path, listed: set, warn) -> list[tuple[str, str]]:
    """Warn about files the listing left out (one line each; one line for all hidden entries) and about
    identity folders left with no photo; returns them, the index's own files excepted."""
    ours = [(rel, why) for rel, why in left_out  # the index and its temporary files (mobiface_tf.atomic) are ours
            if not (index_path.parent.resolve() == root.resolve() and
                    rel.startswith((index_path.name, "." + index_path.name)))]
    hidden = [rel for rel, _ in ours if any(hidden_reason(part) for part in rel.split("/"))]
    for rel, why in ours:
        if rel not in hidden:
            warn(f"skipped gallery file {rel}: {why}")
    if hidden:
        warn(f"left out {len(hidden)} hidden or OS-litter entries ({', '.join(hidden[:3])}"
             f"{', ...' if len(hidden) > 3 else ''})")
    folders = {rel.split("/")[0] for rel, _ in ours if "/" in rel and rel not in hidden}
    empty = {}  # identity key -> name, for folders whose identity has no photo (merged folders said once)
    listed_keys = {identity_key(n) for n in listed}
    for n in sorted(folders):
        empty.setdefault(identity_key(n), identity_name(n))
    for key, name in sorted(empty.items(), key=lambda kv: kv[1]):
        if key not in listed_keys:
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
    Raises IndexNotOurs (a FaceError), before any photo is read, when `index_path` is an existing file that is
    not a mobiface index; FaceError for an unusable gallery or an index of another model.
    """
    root = Path(gallery_dir)
    merged = []

    def on_merge(name, folders):  # folders of one name (case, spaces, NFC/NFD): one identity, said once
        merged.append((name, folders))
        warn(merge_message(name, folders))

    files, left_out = scan_gallery(root, on_merge=on_merge)
    index_path, default = index_location(root, index_path)
    check_index_path(index_path, default)  # a file of the user's at --index is never replaced
    left_out = _report_left_out(left_out, index_path, root, {f[0] for f in files}, warn)
    meta_old, cached, failed_before = (None, {}, {}) if rebuild else _load_cache(index_path, key, warn)
    hashes = _hash_photos(files)
    shared, shared_hashes = _shared_photos(files, hashes, warn)
    vectors, failed, embedded = _embed_new(files, hashes, cached, failed_before, embedder, aligner, progress)
    names, per_id, per_id_shared, skipped = _group_by_identity(files, hashes, vectors, failed, shared_hashes,
                                                               left_out, root, warn)
    means = np.stack([np.mean(per_id[n], axis=0) for n in names])  # templates: mean of unit embeddings,
    templates = (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)  # renormalised
    removed, reused, written = _update_index(index_path, key, files, hashes, vectors, failed, cached,
                                             failed_before, meta_old is None or embedded, warn)
    labels = np.array([names.index(n) for n in names for _ in per_id[n]], np.int64)
    return Gallery(names, templates, [len(per_id[n]) for n in names], embedded, reused, removed, skipped,
                   index_path, written, np.concatenate([np.stack(per_id[n]) for n in names]).astype(np.float32),
                   labels, np.array([x for n in names for x in per_id_shared[n]], bool), shared, merged)


def _load_cache(index_path: Path, key: dict, warn) -> tuple[dict | None, dict, dict]:
    """(the index's meta or None, {hash: embedding} it holds, {hash: reason} of photos that failed before).
    A corrupt index is warned about and rebuilt; an index of another model raises (check_compatible)."""
    try:
        loaded = read_index(index_path)
    except IndexCorrupt as e:
        warn(f"index {index_path} is corrupt ({e}); rebuilding it")
        loaded = None
    if loaded is None:
        return None, {}, {}
    meta_old, emb_old = loaded
    check_compatible(meta_old, key, index_path)
    if meta_old["model"].get("decoder") != key["decoder"]:  # our own cache, made by another image decoder
        warn(f"index {index_path} was made by an older image decoder (version {meta_old['model'].get('decoder')}, "
             f"now {key['decoder']}); embedding every photo again")
        return meta_old, {}, {}
    return meta_old, {h: emb_old[r] for h, r in meta_old["entries"].items()}, dict(meta_old.get("failed", {}))


def _hash_photos(files) -> list[str]:
    """The sha256 of every photo: the hash, not the path, decides reuse (a renamed photo is not embedded
    again). FaceError when one cannot be read."""
    hashes = []
    for _, rel, path in files:
        try:
            hashes.append(file_sha256(path))
        except OSError as e:
            raise FaceError(f"cannot read gallery photo {str(path)!r} ({e.strerror})") from None
    return hashes


def _embed_new(files, hashes, cached, failed_before, embedder, aligner, progress):
    """({hash: embedding} of every usable photo, {hash: reason} of those without a face, number embedded now):
    cached photos and known failures are reused; two copies of one photo are embedded once."""
    from tqdm import tqdm

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
    return vectors, failed, embedded


def _group_by_identity(files, hashes, vectors, failed, shared_hashes, left_out, root: Path, warn):
    """(sorted identity names, {name: [embedding]}, {name: [photo shared with another identity?]}, skipped
    [(rel, reason)]); warns per skipped photo and empty identity. FaceError when no identity is usable."""
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
    return sorted(per_id), per_id, per_id_shared, skipped


def _update_index(index_path: Path, key: dict, files, hashes, vectors, failed, cached, failed_before, new_or_embedded,
                  warn) -> tuple[int, int, bool]:
    """Rewrite the index when anything changed; it keeps exactly the current photos' hashes (stale entries of
    deleted or changed photos go). Returns (entries removed, photos reused, index written); a write error is
    a warning (enrolment is then not cached)."""
    live = list(dict.fromkeys(h for h in hashes if h in vectors))
    live_failed = {h: failed[h] for h in dict.fromkeys(hashes) if h in failed}
    removed = len(set(cached) - set(live)) + len(set(failed_before) - set(live_failed))
    reused = sum(1 for h in hashes if h in cached)
    written = False
    changed = new_or_embedded or removed or live_failed.keys() != failed_before.keys()
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
    return removed, reused, written
