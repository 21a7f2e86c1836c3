"""Face sources for the MegaFace-style search: image folders, TFRecord shards and features files, embedded
through an on-disk cache (used by mobiface_tf/commands/bench_identify.py).

A source of faces is an image folder, TFRecord shards, or a features file (X.npy with X.txt beside it, one
name per row). Every row has a name whose first path component is its identity: an image's path relative to
its folder (`Name/Name_0001.jpg`), or `<class name>/<shard>#<index>` for a TFRecord record. Embeddings are
cached under CACHE_DIR/<model sha256[:16]>-<preprocess>[-flip]/ in the features-file format, keyed by the
source's listing (relative path, size, mtime of every file), so a rerun on unchanged data embeds nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobiface_tf.atomic import atomic_path, write_json_atomic, write_text_atomic
from mobiface_tf.fingerprint import model_fingerprint

DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mobiface_tf" / "features"
_EMBED_BATCH = 256  # images decoded per embedder call


@dataclass
class Features:
    """Unit-norm embeddings of one source, one name per row, and how they were obtained."""
    features: np.ndarray       # [N, D] float32 (a read-only np.memmap when loaded from the cache)
    names: list                # one per row; the first path component is the identity
    kind: str                  # "images", "tfrecord" or "features"
    source: str                # what the user pointed at
    num_embedded: int          # rows embedded by this call (0: cache hit or a features file)
    embed_seconds: float       # decode + embed time of those rows
    img_per_s: float | None    # embedding throughput of the run that embedded them (also on a cache hit)
    cache_file: str | None     # the .npy holding them

    def identities(self) -> np.ndarray:
        """Identity of each row: the first component of its name."""
        return np.array([n.split("/", 1)[0] for n in self.names])

    def subset(self, rows) -> "Features":
        """The same source restricted to `rows` (indices or a boolean mask); the features are copied."""
        rows = np.arange(len(self.names))[rows]
        return Features(np.asarray(self.features[rows]), [self.names[i] for i in rows], self.kind, self.source,
                        self.num_embedded, self.embed_seconds, self.img_per_s, self.cache_file)


def embedder_cache_key(embedder) -> str:
    """The cache folder name of an embedder: its model's sha256 prefix, its preprocess and flip."""
    return f"{model_fingerprint(embedder.path)[:16]}-{embedder.preprocess}{'-flip' if embedder.flip else ''}"


def source_kind(src) -> str:
    """'random' (random:N), 'features' (.npy), 'tfrecord' (shards, a glob, or a folder of *.tfrecord), 'images'."""
    text = str(src)
    if text.startswith("random:"):
        return "random"
    path = Path(text)
    if path.suffix.lower() == ".npy":
        return "features"
    if path.is_dir():
        return "tfrecord" if any(path.glob("*.tfrecord")) else "images"
    if path.suffix.lower() == ".tfrecord" or any(c in text for c in "*?["):
        return "tfrecord"
    raise FileNotFoundError(f"face source not found: {text!r}. Give an image folder, TFRecord shards (DIR, glob or "
                            "file), a features file X.npy (with X.txt beside it) or random:N")


def parse_random(src) -> int:
    """N of a 'random:N' source (underscores allowed: random:1_000_000)."""
    try:
        n = int(str(src).split(":", 1)[1])
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"bad random source {src!r}: write random:N with N >= 1, e.g. random:1000000")
    return n


def read_features_file(path) -> Features:
    """X.npy [N, D] and X.txt beside it (N names, one a line) -> Features; rows are L2-normalised."""
    path = Path(path)
    names_file = path.with_suffix(".txt")
    if not path.is_file():
        raise FileNotFoundError(f"features file not found: {str(path)!r}")
    if not names_file.is_file():
        raise FileNotFoundError(f"{str(path)!r} has no name list beside it: expected {str(names_file)!r} with one "
                                "image name (identity/file) per row")
    feats = np.load(path, mmap_mode="r")
    names = names_file.read_text().splitlines()
    if feats.ndim != 2 or len(names) != len(feats):
        raise ValueError(f"{str(path)!r} holds {feats.shape} but {str(names_file)!r} lists {len(names)} names; "
                         "expected [N, D] and N lines")
    norms = np.linalg.norm(feats[: min(len(feats), 1000)], axis=1)
    if len(norms) and not np.allclose(norms, 1.0, atol=1e-3):
        feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    meta = _read_meta(path)
    return Features(feats, names, "features", str(path), 0, 0.0, meta.get("img_per_s"), str(path))


def _read_meta(npy: Path) -> dict:
    meta = npy.with_suffix(".json")
    return json.loads(meta.read_text()) if meta.is_file() else {}


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _cache_path(cache_dir, embedder, kind: str, description: list[str]) -> Path:
    h = hashlib.sha256("\n".join([kind, *description]).encode()).hexdigest()[:24]
    return Path(cache_dir) / embedder_cache_key(embedder) / f"{kind}-{h}.npy"


def _write_cache(npy: Path, feats: np.ndarray, names: list[str], meta: dict):
    """The .npy, its .txt of names and .json of meta, each through mobiface_tf.atomic; the .npy is renamed into
    place last, as it is what marks an entry complete."""
    with atomic_path(npy) as tmp, open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
        np.save(f, feats)
        write_text_atomic(npy.with_suffix(".txt"), "".join(n + "\n" for n in names))
        write_json_atomic(npy.with_suffix(".json"), meta, indent=2)


def _cached(npy: Path, source: str, kind: str) -> Features | None:
    if not (npy.is_file() and npy.with_suffix(".txt").is_file()):
        return None
    got = read_features_file(npy)
    return Features(got.features, got.names, kind, source, 0, 0.0, got.img_per_s, str(npy))


def embed_image_files(embedder, root, relpaths, cache_dir=DEFAULT_CACHE_DIR, source: str | None = None,
                      progress: bool = False) -> Features:
    """Embed `root/relpath` for every relpath (aligned crops of the model's input size), through the cache.

    Images are read by mobiface_tf.images.load_image_rgb. The cache entry is keyed by the embedder (model
    sha256, preprocess, flip), `root` and every file's relative path, size and mtime.
    """
    from tqdm import tqdm

    from mobiface_tf.images import load_image_rgb

    root = Path(root)
    relpaths = [Path(r).as_posix() for r in relpaths]
    if not relpaths:
        raise ValueError(f"no images to embed under {str(root)!r}")
    missing = [r for r in relpaths if not (root / r).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(relpaths)} listed images are missing under {str(root)!r}, "
                                f"e.g. {missing[0]!r}; point the image folder flag at the folder the list names")
    from mobiface_tf.images import DECODER_VERSION  # the same bytes decode to other pixels after a decoder fix

    description = [str(root.resolve()), f"decoder={DECODER_VERSION}"] + [f"{r}\t{_stamp(root / r)}" for r in relpaths]
    npy = _cache_path(cache_dir, embedder, "images", description)
    hit = _cached(npy, source or str(root), "images")
    if hit is not None:
        return hit
    feats = np.empty((len(relpaths), embedder.embedding_dim), np.float32)
    t0 = time.perf_counter()
    with tqdm(total=len(relpaths), desc=f"embedding {root.name}", unit="img", disable=not progress) as bar:
        for start in range(0, len(relpaths), _EMBED_BATCH):
            batch = relpaths[start:start + _EMBED_BATCH]
            feats[start:start + len(batch)] = embedder.embed(np.stack([load_image_rgb(root / r) for r in batch]))
            bar.update(len(batch))
    seconds = time.perf_counter() - t0
    meta = dict(source=source or str(root), kind="images", model=str(embedder.path), preprocess=embedder.preprocess,
                flip=bool(embedder.flip), num_images=len(relpaths), embed_seconds=seconds,
                img_per_s=len(relpaths) / seconds if seconds > 0 else None)
    _write_cache(npy, feats, relpaths, meta)
    return Features(feats, relpaths, "images", source or str(root), len(relpaths), seconds, meta["img_per_s"],
                    str(npy))


def _warn_skipped(folder: Path, skipped) -> None:
    """One warning line when the listing left files out (mobiface_tf.images.image_reason decides), never silence."""
    if skipped:
        import logging

        from mobiface_tf.images import skipped_summary

        logging.getLogger("mobiface_tf.megaface").warning("%s: %s", folder, skipped_summary(skipped, folder))


def embed_image_folder(embedder, folder, cache_dir=DEFAULT_CACHE_DIR, progress: bool = False) -> Features:
    """Every image under `folder` (mobiface_tf.images.list_images), named by its path relative to `folder`."""
    from mobiface_tf.images import list_images

    folder = Path(folder)
    images, skipped = list_images(folder)
    _warn_skipped(folder, skipped)
    if not images:
        raise ValueError(f"no images found under {str(folder)!r}")
    return embed_image_files(embedder, folder, [p.relative_to(folder) for p in images], cache_dir, str(folder),
                             progress)


def embed_tfrecords(embedder, pattern, cache_dir=DEFAULT_CACHE_DIR, progress: bool = False) -> Features:
    """Every record of TFRecord shards (DIR, glob or file; read by data.pipeline.make_dataset), in shard order.

    Rows are named `<class name>/<shard file>#<index>`: the class name comes from the manifest's class_names
    when there is one, else it is the integer label.
    """
    from tqdm import tqdm

    from mobiface_tf.data.pipeline import make_dataset, match_files, read_manifest

    files = match_files(pattern)
    try:
        class_names = read_manifest(files[0]).get("class_names")
    except ValueError:
        class_names = None
    description = [f"{os.path.abspath(f)}\t{_stamp(Path(f))}" for f in files]
    npy = _cache_path(cache_dir, embedder, "tfrecord", description)
    hit = _cached(npy, str(pattern), "tfrecord")
    if hit is not None:
        return hit
    chunks, names = [], []
    t0 = time.perf_counter()
    with tqdm(desc="embedding shards", unit="img", disable=not progress) as bar:
        for f in files:
            i = 0
            for images, labels in make_dataset([f], _EMBED_BATCH, training=False, deterministic=True).as_numpy_iterator():
                chunks.append(embedder.embed(images))
                for label in labels:
                    cls = class_names[label] if class_names and 0 <= label < len(class_names) else str(int(label))
                    names.append(f"{cls}/{os.path.basename(f)}#{i}")
                    i += 1
                bar.update(len(images))
    seconds = time.perf_counter() - t0
    if not names:
        raise ValueError(f"TFRecord shards {str(pattern)!r} hold no records")
    feats = np.concatenate(chunks)
    meta = dict(source=str(pattern), kind="tfrecord", model=str(embedder.path), preprocess=embedder.preprocess,
                flip=bool(embedder.flip), num_images=len(names), embed_seconds=seconds,
                img_per_s=len(names) / seconds if seconds > 0 else None)
    _write_cache(npy, feats, names, meta)
    return Features(feats, names, "tfrecord", str(pattern), len(names), seconds, meta["img_per_s"], str(npy))


def load_source(src, embedder=None, cache_dir=DEFAULT_CACHE_DIR, progress: bool = False) -> Features:
    """Features of an image folder, TFRecord shards or features file (see source_kind); random:N is not a source
    of faces and raises ValueError. `embedder` may be None only for a features file."""
    kind = source_kind(src)
    if kind == "random":
        raise ValueError(f"{src!r} is random vectors, not faces; use it as --distractors only")
    if kind == "features":
        return read_features_file(src)
    if embedder is None:
        raise ValueError(f"{src!r} needs a model to embed it: pass --model")
    if kind == "tfrecord":
        return embed_tfrecords(embedder, src, cache_dir, progress)
    return embed_image_folder(embedder, src, cache_dir, progress)


def select_probe_rows(names, min_per_identity: int = 2, max_per_identity: int | None = None,
                      max_probes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Probe rows of a list of names (identity = first path component): identities sorted by name with
    >= min_per_identity rows, at most max_per_identity each (the first by name) and max_probes in all, as in
    data.verification.list_identities. Returns (row indices, integer labels); raises ValueError when none."""
    groups: dict[str, list[int]] = {}
    for i in sorted(range(len(names)), key=lambda i: names[i]):
        groups.setdefault(names[i].split("/", 1)[0], []).append(i)
    rows, labels = [], []
    for name in sorted(groups):
        members = groups[name]
        if len(members) < min_per_identity:
            continue
        members = members[:max_per_identity] if max_per_identity else members
        if max_probes is not None and len(rows) + len(members) > max_probes:
            members = members[: max_probes - len(rows)]
            if len(members) < min_per_identity:
                break
        labels += [len(set(labels))] * len(members)
        rows += members
    if not rows:
        raise ValueError(f"no identity has >= {min_per_identity} images: probes need one folder per identity "
                         "with at least two images")
    return np.array(rows), np.array(labels)


def load_probes(src, embedder=None, cache_dir=DEFAULT_CACHE_DIR, min_per_identity: int = 2,
                max_per_identity: int | None = None, max_probes: int | None = None,
                progress: bool = False) -> tuple[Features, np.ndarray]:
    """Probe Features of a source and their integer labels (selection: select_probe_rows). An image folder
    is listed first and only the selected images are embedded."""
    if source_kind(src) == "images":
        from mobiface_tf.images import list_images

        folder = Path(src)
        images, skipped = list_images(folder)
        _warn_skipped(folder, skipped)
        names = [p.relative_to(folder).as_posix() for p in images]
        rows, labels = select_probe_rows(names, min_per_identity, max_per_identity, max_probes)
        return embed_image_files(embedder, folder, [names[i] for i in rows], cache_dir, str(src), progress), labels
    feats = load_source(src, embedder, cache_dir, progress)
    rows, labels = select_probe_rows(feats.names, min_per_identity, max_per_identity, max_probes)
    return feats.subset(rows), labels
