"""Face verification metrics: the LFW View 2 ten-fold protocol, TAR@FAR and an ROC curve.

Protocol (Huang et al., "Labeled Faces in the Wild", View 2): for each of the 10 folds, the cosine
threshold that maximises accuracy on the other 9 folds is applied to the held-out fold; we report the
mean and standard deviation of the 10 held-out accuracies. Picking the best threshold on all pairs at
once and reporting that accuracy (what some Keras trainers print) is optimistic: the threshold has seen
the test labels. We only use the all-pairs threshold as the *deployment* threshold stored in the sidecar.

The threshold search is exact: candidates are the midpoints between consecutive distinct scores (plus
one below the lowest and one above the highest), so no grid resolution can hide the optimum.
A pair is predicted "same" when score > threshold.
"""
from __future__ import annotations

if __name__ == "__main__":  # `python -m mobiface_tf.evaluate`: the evaluate command (see mobiface_tf/cli.py)
    from mobiface_tf import cli

    cli.evaluate()


import math
from pathlib import Path

import numpy as np

from mobiface_tf.atomic import atomic_path

FARS = (1e-1, 1e-2, 1e-3)


# ---------------------------------------------------------------- thresholds and the 10 folds

def best_threshold(scores, issame) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy of `score > threshold` on these pairs.

    Ties between candidates go to the lowest threshold, so the result is deterministic.
    """
    scores, issame = np.asarray(scores, np.float64), np.asarray(issame, bool)
    if scores.shape != issame.shape or scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"scores {scores.shape} and issame {issame.shape} must be equal-length non-empty 1-D arrays")
    values, inverse = np.unique(scores, return_inverse=True)
    pos_at = np.bincount(inverse, weights=issame, minlength=len(values))
    neg_at = np.bincount(inverse, weights=~issame, minlength=len(values))
    # Candidate c (0..U) sits just below distinct value c: values[:c] are "different", values[c:] are "same".
    neg_below = np.concatenate([[0.0], np.cumsum(neg_at)])
    pos_above = pos_at.sum() - np.concatenate([[0.0], np.cumsum(pos_at)])
    correct = neg_below + pos_above
    c = int(np.argmax(correct))  # first maximum = lowest threshold
    # Outside the scores, the threshold stays in [-1, 1] (the range of a cosine) whenever the scores do.
    if c == 0:
        threshold = -1.0 if values[0] > -1.0 else values[0] - 1.0
    elif c == len(values):
        threshold = 1.0 if values[-1] < 1.0 else values[-1] + 1.0
    else:
        threshold = 0.5 * (values[c - 1] + values[c])
    return float(threshold), float(correct[c] / scores.size)


def accuracy_at(scores, issame, threshold: float) -> float:
    """Fraction of pairs where (score > threshold) equals issame; scores and issame are 1-D of the same length."""
    return float(np.mean((np.asarray(scores) > threshold) == np.asarray(issame, bool)))


def ten_fold_verification(scores, issame, folds) -> dict:
    """LFW View 2: per fold, fit the threshold on the other folds, score the held-out fold.

    Returns accuracy (mean), accuracy_std (population std, as the LFW results page reports it),
    fold_accuracies, fold_thresholds, threshold_mean_of_folds, and the all-pairs deployment threshold
    with its (optimistic, for reference only) accuracy.
    """
    scores, issame, folds = np.asarray(scores, np.float64), np.asarray(issame, bool), np.asarray(folds)
    if not (scores.shape == issame.shape == folds.shape) or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape}, issame {issame.shape} and folds {folds.shape} must be equal-length 1-D arrays")
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise ValueError(f"need at least 2 folds for cross-validation, got {fold_ids.tolist()}")
    accs, thresholds = [], []
    for f in fold_ids:
        test = folds == f
        t, _ = best_threshold(scores[~test], issame[~test])
        thresholds.append(t)
        accs.append(accuracy_at(scores[test], issame[test], t))
    t_all, acc_all = best_threshold(scores, issame)
    return {
        "accuracy": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),
        "fold_accuracies": [float(a) for a in accs],
        "fold_thresholds": [float(t) for t in thresholds],
        "threshold_mean_of_folds": float(np.mean(thresholds)),
        "threshold": t_all,
        "threshold_method": "maximises accuracy on all pairs (deployment threshold; the reported accuracy "
                            "uses per-fold thresholds fit on the other 9 folds)",
        "accuracy_at_threshold_all_pairs_optimistic": acc_all,
    }


def sequential_folds(num_pairs: int, num_folds: int = 10) -> np.ndarray:
    """Contiguous folds, as InsightFace's verification code splits a .bin (KFold without shuffle)."""
    if num_pairs < num_folds:
        raise ValueError(f"{num_pairs} pairs cannot be split into {num_folds} folds")
    return (np.arange(num_pairs) * num_folds) // num_pairs


# ---------------------------------------------------------------- TAR @ FAR and ROC

def tar_at_far(scores, issame, fars=FARS) -> dict:
    """{str(far): {"tar", "far", "threshold"} or {"tar": None, "reason"}} on all pairs.

    The threshold is the smallest one with FAR <= target: with k = floor(target * num_negatives)
    allowed false accepts, it is the (k+1)-th highest negative score. When target * num_negatives < 1
    no threshold can *measure* that FAR (zero false accepts among too few negatives), so we say so.
    """
    scores, issame = np.asarray(scores, np.float64), np.asarray(issame, bool)
    neg = np.sort(scores[~issame])[::-1]
    pos = scores[issame]
    out = {}
    for far in fars:
        k = math.floor(far * len(neg) + 1e-9)
        if len(pos) == 0:
            out[str(far)] = {"tar": None, "reason": "no positive pairs"}
        elif k < 1:
            out[str(far)] = {"tar": None, "reason": f"FAR {far:g} needs at least {math.ceil(1 / far)} negative pairs, "
                                                    f"have {len(neg)}"}
        else:
            t = float(neg[k]) if k < len(neg) else float(neg[-1]) - 1.0
            out[str(far)] = {"tar": float(np.mean(pos > t)), "far": float(np.mean(neg > t)), "threshold": t}
    return out


def roc_curve(scores, issame) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold, from (0, 0) to (1, 1)."""
    scores, issame = np.asarray(scores, np.float64), np.asarray(issame, bool)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], issame[order]
    last_of_value = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp, fp = np.cumsum(y)[last_of_value], np.cumsum(~y)[last_of_value]
    tpr = np.r_[0.0, tp / max(y.sum(), 1)]
    fpr = np.r_[0.0, fp / max((~y).sum(), 1)]
    return fpr, tpr


def auc_eer(scores, issame) -> dict:
    """Area under the ROC curve and the equal error rate, the figures CFP (Sengupta et al., 2016) asks for.

    auc: trapezoidal area under (FAR, TAR) over every distinct threshold (ties count one half: the Mann-Whitney
    statistic). eer: where the false accept rate equals the false reject rate (1 - TAR), linearly interpolated
    between the two ROC points around the crossing; eer_threshold: the score there (interpolated likewise).
    Returns {"auc", "eer", "eer_threshold"}; ValueError unless there are both same and different pairs.
    """
    scores, issame = np.asarray(scores, np.float64), np.asarray(issame, bool)
    if issame.all() or not issame.any():
        raise ValueError("AUC and EER need both same and different pairs")
    fpr, tpr = roc_curve(scores, issame)
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    fnr = 1.0 - tpr
    thresholds = np.r_[np.inf, np.unique(scores)[::-1]]  # ROC point k: "same" when score >= thresholds[k]
    d = fpr - fnr  # rises from -1 at (0, 0) to +1 at (1, 1)
    k = int(np.argmax(d >= 0))
    if d[k] == 0 or k == 0:
        eer, t = float(fpr[k]), float(thresholds[k])
    else:
        w = -d[k - 1] / (d[k] - d[k - 1])  # fraction of the way from point k-1 to point k
        eer = float(fpr[k - 1] + w * (fpr[k] - fpr[k - 1]))
        t_prev = thresholds[k - 1] if np.isfinite(thresholds[k - 1]) else thresholds[k]
        t = float(t_prev + w * (thresholds[k] - t_prev))
    return {"auc": auc, "eer": eer, "eer_threshold": t}


def save_roc_png(scores, issame, path, title: str) -> Path:
    """Write the ROC curve (TAR against FAR, log x axis) of these pairs to `path` as a PNG titled `title`; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr = roc_curve(scores, issame)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    keep = fpr > 0  # log axis: the (0, *) points cannot be drawn
    ax.plot(fpr[keep], tpr[keep], lw=1.5)
    ax.set_xscale("log")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, keep_suffix=True) as tmp:  # matplotlib picks the format from the suffix
        fig.savefig(tmp)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- one report from scores

def verification_report(scores, issame, folds, reference_threshold: float | None = None, **meta) -> dict:
    """Ten-fold accuracy, the deployment threshold and TAR@FAR of cosine `scores` [N] for pairs `issame` [N].

    A set without both same and different pairs cannot give an accuracy or a threshold (any threshold below
    every score is "perfect" on an all-same set). Its report then has accuracy and threshold None, a
    "one_sided" line saying why, and the rate alone: "true_accept_rate" (all same) or "true_reject_rate" (all
    different) at `reference_threshold` (default: mobiface_tf.faces.DEFAULT_THRESHOLD), with the score range.
    Raises ValueError for mismatched or empty inputs or non-finite scores (NaN embeddings).
    """
    scores, issame = np.asarray(scores, np.float64), np.asarray(issame, bool)
    if scores.size and not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} of {scores.size} pair scores are NaN/Inf: the model "
                         "gives non-finite embeddings (a diverged training run?); no accuracy or threshold from it")
    report = dict(meta)
    pos, neg = int(issame.sum()), int((~issame).sum())
    report.update(num_pairs=int(len(scores)), num_positive=pos, num_negative=neg)
    if scores.size and (pos == 0 or neg == 0):
        if reference_threshold is None:
            from mobiface_tf.faces import DEFAULT_THRESHOLD as reference_threshold
        kind = "same" if neg == 0 else "different"
        rate = float(np.mean(scores > reference_threshold) if neg == 0 else np.mean(scores <= reference_threshold))
        report.update(accuracy=None, accuracy_std=None, threshold=None, tar_at_far={}, tar_at_far_details={},
                      reference_threshold=float(reference_threshold), score_min=float(scores.min()),
                      score_max=float(scores.max()),
                      one_sided=f"all {len(scores)} pairs are '{kind}': an accuracy or a threshold needs both same "
                                f"and different pairs; reporting the rate alone, at threshold {reference_threshold}")
        report["true_accept_rate" if neg == 0 else "true_reject_rate"] = rate
        return report
    report.update(ten_fold_verification(scores, issame, folds))
    details = tar_at_far(scores, issame)
    report["tar_at_far"] = {k: v["tar"] for k, v in details.items()}
    report["tar_at_far_details"] = details
    return report


def cosine_scores(emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of L2-normalised embeddings."""
    return np.einsum("ij,ij->i", emb_a, emb_b).astype(np.float64)


# ---------------------------------------------------------------- images -> embeddings

def _model_size(embedder) -> tuple[int, int] | None:
    """(width, height) the model takes, or None when it takes any size."""
    h, w = tuple(embedder.input_hwc)[:2]
    return None if h is None or w is None else (int(w), int(h))


def _embed_loaded(embedder, items, load, flip, aligner, batch_size, progress, where=None,
                  remake="save the crops at {size}"):
    """Embed len(items) images, load(item, i) -> uint8 RGB; returns (embeddings [N, D], realign failures).

    With `aligner` every image becomes a template crop whatever its size. Without, every image must be the size
    the model takes (image 0's for a model of any size): the first that is not stops it with a ValueError naming
    it (`where(i)`, default "image i"), its size, the expected one, and the ways out (--realign, or `remake`, whose
    {size} is the expected size), before a batch of mixed sizes reaches numpy's "all input arrays must have the
    same shape".
    """
    from tqdm import tqdm

    out = np.empty((len(items), embedder.embedding_dim), np.float32)
    failures = 0
    want, basis = _model_size(embedder), "the model's input"
    bar = tqdm(total=len(items), desc="embedding", unit="img", disable=not progress)
    for start in range(0, len(items), batch_size):
        images = []
        for i in range(start, min(start + batch_size, len(items))):
            image = load(items[i], i)
            if aligner is not None:
                crop = aligner.align(image).crop
                if crop is None:
                    failures += 1
                    image = _fit(image, embedder.input_hwc)
                else:
                    image = crop
            else:
                if want is None:
                    want, basis = (image.shape[1], image.shape[0]), "the size of image 0"
                if (image.shape[1], image.shape[0]) != want:
                    raise ValueError(f"{where(i) if where else f'image {i}'} is {image.shape[1]}x{image.shape[0]}, "
                                     f"expected {want[0]}x{want[1]} ({basis}); pass --realign to align every image to "
                                     f"the ArcFace template, or {remake.format(size=f'{want[0]}x{want[1]}')}")
            images.append(image)
        out[start:start + len(images)] = embedder.embed(np.stack(images), flip=flip)
        bar.update(len(images))
    bar.close()
    return out, failures


def _fit(image, input_hwc):
    """A crop MTCNN could not re-align is kept, resized to the model's input size (the template's, CROP_SIZE, for a
    model of any size: the re-aligned crops beside it have that size)."""
    import cv2

    from mobiface_tf.images import CROP_SIZE

    h, w = (d if d is not None else CROP_SIZE for d in input_hwc[:2])
    if image.shape[:2] == (h, w):
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)


def embed_paths(embedder, paths, flip: bool, aligner=None, batch_size: int = 256, progress: bool = True):
    """Embed image files in order; returns (embeddings [N, D], num_realign_failures).

    With `aligner` (a mobiface_tf.align.FaceAligner), each image is re-aligned by MTCNN first; when no
    face is found the original crop is kept and counted, so the report says how many were not re-aligned.
    """
    from mobiface_tf.images import load_image_rgb

    paths = list(paths)
    return _embed_loaded(embedder, paths, lambda p, i: load_image_rgb(p), flip, aligner, batch_size, progress,
                         where=lambda i: f"image {str(paths[i])!r}")


def embed_encoded(embedder, encoded, flip: bool, aligner=None, batch_size: int = 256, progress: bool = True,
                  source=None):
    """Like embed_paths, for encoded images held in memory (a .bin: `source`, its path, names it in errors)."""
    from mobiface_tf.images import decode_image_rgb

    prefix = f"{str(source)!r}: " if source is not None else ""

    def where(i):
        return f"{prefix}image {i} (counting from 0; the {('first', 'second')[i % 2]} image of pair {i // 2})"

    return _embed_loaded(embedder, encoded, lambda data, i: decode_image_rgb(data, f"{prefix}image {i}"),
                         flip, aligner, batch_size, progress, where=where,
                         remake="rebuild the .bin with {size} crops (mobiface-make-bin)")


def select_folds(pairs, folds):
    """The pairs of the given 1-based folds (the held-out LFW protocol); ValueError for unknown folds or
    fewer than 2 (cross-validation needs a fold to fit the threshold on)."""
    have = sorted({p.fold + 1 for p in pairs})
    wanted = sorted({int(f) for f in folds})
    bad = [f for f in wanted if f not in have]
    if bad:
        raise ValueError(f"--folds {bad} not in the pairs file, which has folds {have[0]}..{have[-1]}")
    if len(wanted) < 2:
        raise ValueError(f"--folds needs at least 2 folds (the threshold is fit on the others), got {wanted}")
    return [p for p in pairs if p.fold + 1 in wanted]


def evaluate_lfw(embedder, pairs_file, lfw_dir, flip=False, aligner=None, progress=True, folds=None, **meta):
    """(report, scores, issame) on LFW View 2; each distinct image referenced by pairs.txt is embedded once.

    folds: 1-based fold numbers to score alone (e.g. [1, 2, 3]): cross-validation restricted to them, the
    threshold for each fit on the other listed folds. With a model trained without the people of those folds
    (mobiface-prepare --exclude_pairs/--exclude_folds) this scores it only on people it has never seen.
    The report's "folds" lists them (all folds when None).
    """
    from mobiface_tf.data.verification import read_lfw_pairs

    pairs = read_lfw_pairs(pairs_file, lfw_dir)
    if folds:
        pairs = select_folds(pairs, folds)
    used = sorted({p.fold + 1 for p in pairs})
    unique = sorted({p for pair in pairs for p in (pair.path_a, pair.path_b)})
    index = {p: i for i, p in enumerate(unique)}
    emb, failures = embed_paths(embedder, unique, flip, aligner, progress=progress)
    a = emb[[index[p.path_a] for p in pairs]]
    b = emb[[index[p.path_b] for p in pairs]]
    scores, issame = cosine_scores(a, b), np.array([p.issame for p in pairs])
    report = verification_report(scores, issame, [p.fold for p in pairs],
                                 dataset=f"lfw:{pairs_file}", num_images=len(unique),
                                 flip=flip, realign=aligner is not None, **meta)
    report["folds"] = used
    report["num_folds"] = len(used)
    report["realign_failed"] = failures
    return report, scores, issame


def evaluate_bin(embedder, bin_path, flip=False, aligner=None, progress=True, num_folds: int = 10, **meta):
    """(report, scores, issame): ten-fold report on an InsightFace .bin (pairs (2k, 2k+1), `num_folds` contiguous
    folds as InsightFace splits them; a .bin from tools/make_bin.py keeps its protocol's folds in that order).

    Without `aligner` every crop must be the model's input size: ValueError naming the first that is not
    (binfile.check_image_sizes). With one (--realign) crops of any size are aligned to the template."""
    from mobiface_tf.data.verification import check_image_sizes, read_bin

    encoded, issame = read_bin(bin_path)
    if aligner is None:  # crops of another size: one line naming the first, before any embedding
        check_image_sizes(bin_path, encoded, _model_size(embedder))
    emb, failures = embed_encoded(embedder, encoded, flip, aligner, progress=progress, source=bin_path)
    scores = cosine_scores(emb[0::2], emb[1::2])
    report = verification_report(scores, issame, sequential_folds(len(issame), num_folds),
                                 dataset=f"bin:{bin_path}", num_images=len(encoded),
                                 flip=flip, realign=aligner is not None, **meta)
    report["realign_failed"] = failures
    return report, scores, issame


# ---------------------------------------------------------------- the threshold sidecar
# Lives in mobiface_tf.sidecar, next to the model loader; re-exported here for existing importers.
from mobiface_tf.sidecar import (SidecarError, read_sidecar, read_sidecar_settings, read_threshold,  # noqa: E402,F401
                                 sidecar_path, write_sidecar)
