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


Memory: the distractors are visited in chunks of `chunk_size` rows. Per chunk we keep only each
probe's running maximum (rank-1), its top-`max_rank` scores (CMC) and a running top-(k+1) of all negative
scores (the FAR thresholds), so the extra memory is one [P, chunk] score block on top of the distractors.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

import numpy as np


def far_key(far: float) -> str:
    """The JSON key of a FAR in `tar_at_far` dicts: '1e-06', '0.0001', ... (Python's %g)."""
    return f"{far:g}"


@dataclass
class SearchResult:
    """What `megaface_search` measured (MegaFace Challenge 1 protocol, see the module docstring).

    Rank-1 and CMC are fractions of trials; TAR at each FAR with its threshold, or None with the reason; the
    counts of probes, identities, distractors and pairs; the search's wall and CPU seconds and its GFLOP/s.
    """

    rank1: float                 # fraction of successful rank-1 trials (see module docstring)
    num_rank1_trials: int
    num_probes: int
    num_identities: int
    num_distractors: int
    dim: int
    num_positive_pairs: int
    num_negative_pairs: int
    search_seconds: float        # distractor search only (the matmuls and the running max / top-k), wall clock
    gflops_per_s: float          # 2 * P * N * D / search_seconds
    search_cpu_seconds: float    # process CPU time of the search: on a shared machine, wall time includes waiting
    cmc: list | None             # cmc[r-1]: fraction of trials whose mate ranks r-th or better (None: max_rank 1)
    tar_at_far: dict             # {far_key: TAR, or None when that FAR cannot be measured}, FARs ascending
    threshold_at_far: dict       # {far_key: the score threshold at that FAR, or None}
    reason_at_far: dict          # {far_key: why its TAR is None}, only the FARs whose TAR is None

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
def megaface_search(embeddings, labels, distractors, fars=(1e-6,), max_rank: int = 10, chunk_size: int = 8192,
                    num_distractors: int | None = None, threads: int | None = None,
                    progress: bool = False) -> SearchResult:
    """The MegaFace Challenge 1 figures of probes (`embeddings` [P, D] with identity `labels` [P]) against distractors.

    `distractors` is a [N, D] array (a np.memmap works) or an iterable of [n_i, D] chunks; with an
    iterable give `num_distractors` (needed up front to size the top-k for the FAR threshold).
      fars: one FAR or a sequence of them, each in (0, 1); TAR at each comes from one running top-k of the
        negative scores. The result's dicts are keyed by far_key(far), FARs ascending.
      max_rank: the CMC curve's length. cmc[r-1] is the fraction of rank-1 trials (p, g) whose mate g ranks
        r-th or better among g + the N distractors, i.e. scores strictly above the r-th best distractor.
        With max_rank 1 only rank-1 is kept and `cmc` is None.
      threads: caps BLAS threads (None: leave as is). progress: a tqdm bar over the distractors.
    Raises ValueError on shapes that do not match, a FAR outside (0, 1), chunk_size or max_rank < 1, or a
    chunk count that does not add up to num_distractors.
    """
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
    fars = sorted({float(f) for f in np.atleast_1d(fars)})
    if not fars or not all(0 < f < 1 for f in fars):
        raise ValueError(f"far must be in (0, 1), got {fars}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")

    num_neg = num_probes * num_distractors
    ks = {f: math.floor(f * num_neg + 1e-9) for f in fars}  # false accepts allowed at each FAR
    best, ktop, top, seconds, cpu_seconds = _scan(emb, distractors, num_distractors, chunk_size, max_rank,
                                                  keep=max(ks.values()) + 1, threads=threads, progress=progress)

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
    tar, threshold, reason = {}, {}, {}
    for f in fars:
        key, k = far_key(f), ks[f]
        tar[key] = threshold[key] = None
        if k < 1:
            reason[key] = (f"FAR {f:g} needs >= {math.ceil(1 / f)} negative pairs, have {num_neg} "
                           f"({num_probes} probes x {num_distractors} distractors)")
        elif len(positives) == 0:
            reason[key] = "no same-identity probe pairs"
        else:
            threshold[key] = float(top_desc[k])  # the (k+1)-th highest negative score
            tar[key] = float(np.mean(positives > threshold[key]))
    return SearchResult(
        rank1=rank1, num_rank1_trials=int(trials), num_probes=int(num_probes),
        num_identities=int(len(np.unique(labels))), num_distractors=int(num_distractors), dim=int(dim),
        num_positive_pairs=int(len(positives)), num_negative_pairs=int(num_neg), search_seconds=seconds,
        gflops_per_s=2.0 * num_probes * num_distractors * dim / seconds / 1e9 if seconds > 0 else float("nan"),
        search_cpu_seconds=cpu_seconds, cmc=cmc, tar_at_far=tar, threshold_at_far=threshold, reason_at_far=reason)


def _scan(emb, distractors, num_distractors, chunk_size, max_rank, keep, threads, progress):
    """One pass over the distractors in chunks: each probe's best score [P], its top-`max_rank` scores
    [P, max_rank] (None when max_rank is 1), the top-`keep` negative scores, and the wall and CPU seconds."""
    from threadpoolctl import threadpool_limits
    from tqdm import tqdm

    num_probes, dim = emb.shape
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
    return best, ktop, top, seconds, cpu_seconds
