"""MegaFace-style identification with a million distractors, by chunked brute-force search.

Protocol (Kemelmacher-Shlizerman et al., "The MegaFace Benchmark", CVPR 2016, Challenge 1), as
implemented here with probe images grouped by identity and N distractor embeddings:

* Rank-1 identification. For every identity and every ordered pair (p, g) of two different images of
  it, g is put into a gallery with the N distractors and p is the query. The trial succeeds when g
  scores strictly higher than every distractor (a tie counts as a failure). Rank-1 is the fraction of
  successful trials; there are sum_id n_id * (n_id - 1) trials. Other probe identities are not in the
  gallery, exactly as in MegaFace, so rank-1 only depends on each probe's best distractor score.
* Verification TAR@FAR. Positive pairs: all unordered same-identity probe pairs. Negative pairs: every
  probe against every distractor (P * N pairs). The threshold is the smallest one whose FAR (fraction
  of negatives scoring > threshold) is at most the target, i.e. the (k+1)-th highest negative score
  with k = floor(FAR * P * N); TAR is the fraction of positives scoring above it. With P * N * FAR < 1
  the FAR cannot be measured and TAR is reported as None with the reason.

* CMC. The devkit also reports the cumulative match curve: cmc[r-1] is the fraction of those trials in which
  the mate g ranks r-th or better among g and the N distractors (fewer than r distractors score >= g).
  Rank-1 is cmc[0]. Several FARs come out of one search (one running top-k, k for the largest FAR).

Scores are cosine similarities: probes are L2-normalised here, distractors must already be unit norm.

Simplifications against the devkit: each probe is scored against the distractors once and every ordered
same-identity pair is a trial, which is equivalent to the devkit adding one mate at a time to the distractor
set; scores are cosines of L2-normalised embeddings (the devkit takes L2 distances of the features given,
the same ranking for unit vectors); the devkit's own feature files (.bin per image) are not read, the images
are embedded here.

Below the search: face sources (image folders, TFRecord shards, features files), the embedding cache, and the
MegaFace Challenge 1 directory layout, used by tools/bench_identify.py.

Memory: the distractors are visited in chunks of `chunk_size` rows. Per chunk we keep only each
probe's running maximum (rank-1), its top-`max_rank` scores (CMC) and a running top-(k+1) of all negative
scores (the FAR thresholds), so the extra memory is one [P, chunk] score block on top of the distractors.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from mobiface_tf.fingerprint import model_fingerprint


@dataclass
class IdentificationResult:
    """What `megaface_identification` measured (MegaFace Challenge 1 protocol, see the module docstring).

    Rank-1 and CMC are fractions of trials; TAR@FAR with its threshold, or None with `reason`; the counts of
    probes, identities, distractors and pairs; the search's wall and CPU seconds and its GFLOP/s.
    """

    rank1: float                 # fraction of successful rank-1 trials (see module docstring)
    num_rank1_trials: int
    far: float                   # target FAR
    tar_at_far: float | None     # None when the FAR cannot be measured
    threshold: float | None      # the score threshold at that FAR
    achieved_far: float | None
    reason: str | None           # why tar_at_far is None
    num_probes: int
    num_identities: int
    num_distractors: int
    dim: int
    num_positive_pairs: int
    num_negative_pairs: int
    search_seconds: float        # distractor search only (the matmuls and the running max / top-k), wall clock
    gflops_per_s: float          # 2 * P * N * D / search_seconds
    search_cpu_seconds: float    # process CPU time of the search: on a shared machine, wall time includes waiting
    cmc: list | None = None      # cmc[r-1]: fraction of trials whose mate ranks r-th or better (max_rank > 1)
    per_far: dict | None = None  # {far: {"tar", "threshold", "achieved_far", "reason"}} for every FAR asked

    def to_dict(self) -> dict:
        """All fields as a plain dict (`dataclasses.asdict`), ready for json.dumps."""
        return asdict(self)


def random_unit_chunks(num: int, dim: int, seed: int = 0, chunk_size: int = 16384) -> Iterator[np.ndarray]:
    """Yield `num` random unit-norm float32 vectors in chunks (Gaussian direction = uniform on the sphere)."""
    if num < 0 or dim < 1 or chunk_size < 1:
        raise ValueError(f"need num >= 0, dim >= 1, chunk_size >= 1; got {num}, {dim}, {chunk_size}")
    rng = np.random.default_rng(seed)
    for start in range(0, num, chunk_size):
        chunk = rng.standard_normal((min(chunk_size, num - start), dim), dtype=np.float32)
        chunk /= np.sqrt(np.einsum("ij,ij->i", chunk, chunk))[:, None]  # no [n, D] temporary
        yield chunk


def random_unit_vectors(num: int, dim: int, seed: int = 0, chunk_size: int = 16384) -> np.ndarray:
    """[num, dim] random unit vectors, filled chunk by chunk so peak memory is the array plus one chunk."""
    out = np.empty((num, dim), np.float32)
    start = 0
    for chunk in random_unit_chunks(num, dim, seed, chunk_size):
        out[start:start + len(chunk)] = chunk
        start += len(chunk)
    return out


def _chunks(distractors, chunk_size: int) -> Iterable[np.ndarray]:
    if isinstance(distractors, np.ndarray):
        return (distractors[i:i + chunk_size] for i in range(0, len(distractors), chunk_size))
    return distractors


def megaface_identification(embeddings, labels, distractors, far=1e-6, chunk_size: int = 8192,
                            num_distractors: int | None = None, threads: int | None = None,
                            progress: bool = False, max_rank: int = 1) -> IdentificationResult:
    """Rank-1 and TAR@FAR of probes (`embeddings` [P, D] with identity `labels` [P]) against distractors.

    `distractors` is a [N, D] array (a np.memmap works) or an iterable of [n_i, D] chunks; with an
    iterable give `num_distractors` (needed up front to size the top-k for the FAR threshold).
    `far` is one FAR or a sequence of them: the result's far / tar_at_far / threshold are the first one's,
    `per_far` holds all. `max_rank` > 1 also keeps each probe's top-`max_rank` distractor scores for the CMC
    curve (`cmc`). `threads` caps BLAS threads (None: leave as is).
    """
    from threadpoolctl import threadpool_limits
    from tqdm import tqdm

    emb = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels)
    if emb.ndim != 2 or labels.shape != (len(emb),):
        raise ValueError(f"embeddings must be [P, D] with labels [P]; got {emb.shape} and {labels.shape}")
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    num_probes, dim = emb.shape
    if isinstance(distractors, np.ndarray):
        if distractors.ndim != 2 or distractors.shape[1] != dim:
            raise ValueError(f"distractors must be [N, {dim}] to match the probes, got {distractors.shape}")
        num_distractors = len(distractors)
    elif num_distractors is None:
        raise ValueError("distractors given as chunks: pass num_distractors=N as well")
    fars = [float(f) for f in np.atleast_1d(far)]
    if not fars or not all(0 < f < 1 for f in fars):
        raise ValueError(f"far must be in (0, 1), got {far}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")

    num_neg = num_probes * num_distractors
    ks = {f: math.floor(f * num_neg + 1e-9) for f in fars}  # false accepts allowed at each FAR
    keep = max(ks.values()) + 1                           # the (k+1)-th highest negative is the threshold
    ktop = np.full((num_probes, max_rank), -np.inf, np.float32) if max_rank > 1 else None  # per-probe top scores

    best = np.full(num_probes, -np.inf, np.float32)   # each probe's best distractor score
    top = np.empty(0, np.float32)                     # running top-`keep` negative scores
    buf = np.empty((num_probes, chunk_size), np.float32)
    seen = 0
    bar = tqdm(total=num_distractors, desc="distractors", unit="vec", disable=not progress)
    limits = threadpool_limits(limits=threads, user_api="blas") if threads else None
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        for chunk in _chunks(distractors, chunk_size):
            if chunk.ndim != 2 or chunk.shape[1] != dim or len(chunk) > chunk_size:
                raise ValueError(f"distractor chunk {chunk.shape} does not fit [<= {chunk_size}, {dim}]")
            n = len(chunk)
            scores = buf[:, :n] if n == chunk_size else np.empty((num_probes, n), np.float32)
            np.matmul(emb, np.asarray(chunk, np.float32).T, out=scores)
            row_max = scores.max(axis=1)
            np.maximum(best, row_max, out=best)
            if ktop is not None:
                # Only rows whose best beats their current max_rank-th best can change their top list.
                rows = np.nonzero(row_max > ktop.min(axis=1))[0]
                if rows.size:
                    sub = scores[rows]
                    if n > max_rank:
                        sub = np.partition(sub, n - max_rank, axis=1)[:, -max_rank:]
                    merged = np.concatenate([ktop[rows], sub], axis=1)
                    ktop[rows] = np.partition(merged, merged.shape[1] - max_rank, axis=1)[:, -max_rank:]
            if len(top) < keep:
                # Still filling the top-k: take this chunk's best `keep` scores outright.
                flat = scores.ravel()
                cand = flat if flat.size <= keep else np.partition(flat, flat.size - keep)[-keep:]
            else:
                # Only rows whose maximum beats the current k-th best can contribute; usually none do.
                floor_ = top.min()
                rows = row_max > floor_
                sub = scores[rows]
                cand = sub[sub > floor_]
            if cand.size:
                top = np.concatenate([top, cand])
                if len(top) > keep:
                    top = np.partition(top, len(top) - keep)[-keep:]
            seen += n
            bar.update(n)
    finally:
        if limits is not None:
            limits.unregister()
        bar.close()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    if seen != num_distractors:
        raise ValueError(f"got {seen} distractors but num_distractors={num_distractors}")

    # Probe-vs-probe scores: positives, and the rank-1 trials (probe p, gallery g of the same identity).
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    gram = emb @ emb.T
    p_idx, g_idx = np.nonzero(same)
    trials = len(p_idx)
    mate = gram[p_idx, g_idx]
    rank1 = float(np.mean(mate > best[p_idx])) if trials else float("nan")
    cmc = None
    if ktop is not None:
        kdesc = -np.sort(-ktop, axis=1)  # [P, max_rank], best first; -inf where N < max_rank
        cmc = [float(np.mean(mate > kdesc[p_idx, r])) if trials else float("nan") for r in range(max_rank)]
    positives = gram[np.triu(same, 1)]

    top_desc = -np.sort(-top)
    per_far = {}
    for f in fars:
        k = ks[f]
        if k < 1:
            entry = dict(tar=None, threshold=None, achieved_far=None,
                         reason=f"FAR {f:g} needs >= {math.ceil(1 / f)} negative pairs, have {num_neg} "
                                f"({num_probes} probes x {num_distractors} distractors)")
        elif len(positives) == 0:
            entry = dict(tar=None, threshold=None, achieved_far=None, reason="no same-identity probe pairs")
        else:
            thr = float(top_desc[k])  # the (k+1)-th highest negative score
            entry = dict(tar=float(np.mean(positives > thr)), threshold=thr,
                         achieved_far=float(np.sum(top_desc > thr) / num_neg), reason=None)  # all inside `top`
        per_far[f] = entry
    first = per_far[fars[0]] if np.ndim(far) else per_far[float(far)]
    return IdentificationResult(
        rank1=rank1, num_rank1_trials=int(trials), far=fars[0] if np.ndim(far) else float(far),
        tar_at_far=first["tar"], threshold=first["threshold"], achieved_far=first["achieved_far"],
        reason=first["reason"], cmc=cmc, per_far=per_far, num_probes=int(num_probes), num_identities=int(len(np.unique(labels))),
        num_distractors=int(num_distractors), dim=int(dim), num_positive_pairs=int(len(positives)),
        num_negative_pairs=int(num_neg), search_seconds=seconds, search_cpu_seconds=cpu_seconds,
        gflops_per_s=2.0 * num_probes * num_distractors * dim / seconds / 1e9 if seconds > 0 else float("nan"))


# ----------------------------------------------------------------------------------------------- CMC and FARs
def far_key(far: float) -> str:
    """The JSON key of a FAR in `tar_at_far` dicts: '1e-06', '0.0001', ... (Python's %g)."""
    return f"{far:g}"


def megaface_search(embeddings, labels, distractors, fars=(1e-6,), max_rank: int = 10, chunk_size: int = 8192,
                    num_distractors: int | None = None, threads: int | None = None, progress: bool = False) -> dict:
    """The MegaFace Challenge 1 figures of one distractor set: CMC up to `max_rank` and TAR at several FARs.

    Same protocol and arguments as megaface_identification (which it calls), plus:
      fars: the FARs to report; TAR at each comes from one running top-k of the negative scores.
      max_rank: the CMC curve's length. cmc[r-1] is the fraction of rank-1 trials (p, g) whose mate g ranks
        r-th or better among g + the N distractors, i.e. scores strictly above the r-th best distractor.
    Returns a dict: rank1, cmc (list, cmc[0] == rank1), tar_at_far ({far_key: TAR or None}),
    threshold_at_far, reason_at_far (why a TAR is None), and the counts and timing fields of the search.
    """
    fars = sorted({float(f) for f in np.atleast_1d(fars)})
    res = megaface_identification(embeddings, labels, distractors, far=fars, chunk_size=chunk_size,
                                  num_distractors=num_distractors, threads=threads, progress=progress,
                                  max_rank=max_rank)
    out = res.to_dict()
    for k in ("far", "tar_at_far", "threshold", "achieved_far", "reason"):
        out.pop(k)
    out.update(tar_at_far={far_key(f): v["tar"] for f, v in res.per_far.items()},
               threshold_at_far={far_key(f): v["threshold"] for f, v in res.per_far.items()},
               reason_at_far={far_key(f): v["reason"] for f, v in res.per_far.items() if v["reason"]})
    out.pop("per_far")
    return out


# ----------------------------------------------------------------------------------------------- face sources
# A source of faces is an image folder, TFRecord shards, or a features file (X.npy with X.txt beside it, one
# name per row). Every row has a name whose first path component is its identity: an image's path relative to
# its folder (`Name/Name_0001.jpg`), or `<class name>/<shard>#<index>` for a TFRecord record. Embeddings are
# cached under CACHE_DIR/<model sha256[:16]>-<preprocess>[-flip]/ in the features-file format, keyed by the
# source's listing (relative path, size, mtime of every file), so a rerun on unchanged data embeds nothing.
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
    npy.parent.mkdir(parents=True, exist_ok=True)
    tmp = npy.with_name(npy.stem + ".tmp.npy")
    np.save(tmp, feats)
    npy.with_suffix(".txt.tmp").write_text("".join(n + "\n" for n in names))
    npy.with_suffix(".json.tmp").write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(npy.with_suffix(".txt.tmp"), npy.with_suffix(".txt"))
    os.replace(npy.with_suffix(".json.tmp"), npy.with_suffix(".json"))
    os.replace(tmp, npy)  # last: the .npy is what marks an entry complete


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
    description = [str(root.resolve())] + [f"{r}\t{_stamp(root / r)}" for r in relpaths]
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

        logging.getLogger("mobiface_tf.identification").warning("%s: %s", folder, skipped_summary(skipped, folder))


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


# ----------------------------------------------------------------------------------------------- MegaFace layout
# The MegaFace Challenge 1 layout read by tools/bench_identify.py --megaface=ROOT (see the README):
#   ROOT/devkit/templatelists/facescrub_features_list.json         {"path": [...], "id": [...]} probe images
#   ROOT/devkit/templatelists/megaface_features_list.json_<N>_1    {"path": [...]}, N = 10 ... 1000000
#   ROOT/facescrub_images/<path>, ROOT/megaface_images/<path>      aligned 112x112 crops, named as in the lists
#   ROOT/facescrub_noises.txt, ROOT/megaface_noises.txt           optional lists of noisy images to remove
MEGAFACE_SIZES = (10, 100, 1000, 10_000, 100_000, 1_000_000)
TEMPLATE_LISTS = Path("devkit") / "templatelists"
PROBE_LIST = "facescrub_features_list.json"
DISTRACTOR_LIST = "megaface_features_list.json_{}_1"
PROBE_IMAGES, DISTRACTOR_IMAGES = "facescrub_images", "megaface_images"
PROBE_NOISES, DISTRACTOR_NOISES = "facescrub_noises.txt", "megaface_noises.txt"


@dataclass
class MegaFaceLayout:
    """What a MegaFace Challenge 1 directory holds, with the noisy images already removed."""
    probe_root: Path
    probe_paths: list            # relative to probe_root
    probe_ids: list              # identity of each probe image
    distractor_root: Path
    sets: dict                   # {N: [relative distractor paths]} for each set list present
    removed_probes: list         # noisy probe images left out
    removed_distractors: list    # noisy distractor images left out (union over the sets)


def _read_noise_list(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    out = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.add(line.replace("\\", "/"))
    return out


def _is_noise(rel: str, noise: set[str]) -> bool:
    # The published lists name images by relative path or by file name (with or without extension).
    base = rel.rsplit("/", 1)[-1]
    return rel in noise or base in noise or os.path.splitext(base)[0] in noise


def _read_list(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not the devkit's JSON list: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("path"), list):
        raise ValueError(f"{str(path)!r} has no 'path' list; expected the devkit's {{\"path\": [...]}} format")
    return data


def read_megaface_layout(root, probe_images=None, distractor_images=None, remove_noise: bool = True) -> MegaFaceLayout:
    """Read a MegaFace Challenge 1 directory (layout above); `probe_images` / `distractor_images` override
    the image folders. With remove_noise, images named in the noise lists are left out of probes and sets."""
    root = Path(root)
    lists = root / TEMPLATE_LISTS
    probe_list = lists / PROBE_LIST
    if not probe_list.is_file():
        raise FileNotFoundError(f"MegaFace layout: {str(probe_list)!r} not found. --megaface=ROOT wants the devkit's "
                                f"template lists under ROOT/{TEMPLATE_LISTS} (see the README's identification section)")
    sets = {n: lists / DISTRACTOR_LIST.format(n) for n in MEGAFACE_SIZES}
    sets = {n: p for n, p in sets.items() if p.is_file()}
    if not sets:
        raise FileNotFoundError(f"MegaFace layout: no distractor set list {DISTRACTOR_LIST.format('<N>')} under "
                                f"{str(lists)!r} (N = {', '.join(map(str, MEGAFACE_SIZES))})")
    probe_noise = _read_noise_list(root / PROBE_NOISES) if remove_noise else set()
    distractor_noise = _read_noise_list(root / DISTRACTOR_NOISES) if remove_noise else set()
    data = _read_list(probe_list)
    paths = [p.replace("\\", "/") for p in data["path"]]
    ids = data.get("id") or [p.split("/", 1)[0] for p in paths]
    if len(ids) != len(paths):
        raise ValueError(f"{str(probe_list)!r}: {len(ids)} ids for {len(paths)} paths")
    keep = [not _is_noise(p, probe_noise) for p in paths]
    removed_d: set[str] = set()
    out_sets = {}
    for n, p in sorted(sets.items()):
        rels = [r.replace("\\", "/") for r in _read_list(p)["path"]]
        out_sets[n] = [r for r in rels if not _is_noise(r, distractor_noise)]
        removed_d.update(r for r in rels if _is_noise(r, distractor_noise))
    return MegaFaceLayout(
        probe_root=Path(probe_images) if probe_images else root / PROBE_IMAGES,
        probe_paths=[p for p, k in zip(paths, keep) if k], probe_ids=[str(i) for i, k in zip(ids, keep) if k],
        distractor_root=Path(distractor_images) if distractor_images else root / DISTRACTOR_IMAGES,
        sets=out_sets, removed_probes=[p for p, k in zip(paths, keep) if not k],
        removed_distractors=sorted(removed_d))
