"""CFP (Sengupta et al., WACV 2016) scored by its official FF and FP 10-fold protocols.

The pairs come from mobiface_tf.data.verification.cfp; photos are aligned through mobiface_tf.crop_cache (MTCNN,
cached by photo content, centre-square fallback counted); the metrics are mobiface_tf.evaluate's ten-fold
accuracy, TAR@FAR and ROC plus CFP's AUC and EER (`auc_eer`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mobiface_tf.crop_cache import FALLBACK
from mobiface_tf.evaluate import (_embed_loaded, _fit, auc_eer, cosine_scores, save_roc_png, select_folds,
                                  verification_report)


def cfp_crops(paths, crops=None, input_hwc=(112, 112, 3), progress=True) -> tuple[list, list]:
    """(uint8 RGB crops, fallback flags) of CFP photo files, in order.

    crops: a mobiface_tf.crop_cache.CropCache (MTCNN to the ArcFace template, cached; centre-square fallback
    where MTCNN finds no face), or None for photos that are already aligned (only resized to the model input).
    """
    from mobiface_tf.images import load_image_rgb

    if crops is not None:
        got = crops.crop_many(paths, progress=progress)
        return [_fit(c.image, input_hwc) for c in got], [not c.aligned for c in got]
    return [_fit(load_image_rgb(p), input_hwc) for p in paths], [False] * len(paths)


def evaluate_cfp(embedder, cfp_dir, protocols=("FP",), flip=False, crops=None, folds=None, progress=True, **meta):
    """{protocol: (report, scores, issame)} on CFP's official FF and/or FP 10-fold protocols.

    Each distinct photo of the protocols is aligned (`crops`, see cfp_crops) and embedded once. Per fold, the
    threshold is fit on the other folds (CFP's README); the report adds CFP's AUC and EER to accuracy ± std and
    TAR@FAR. Photos MTCNN could not align keep their pairs (scored on the fallback crop): "align" counts them
    and the pairs they touch, so num_pairs is always every pair of the listed folds (7,000 for all ten).
    folds: 1-based fold numbers to score alone (at least 2), as for LFW.
    """
    from mobiface_tf.data.verification import check_protocol, read_cfp_pairs

    pairs_of = {}
    for protocol in protocols:
        pairs = read_cfp_pairs(cfp_dir, check_protocol(protocol))
        pairs_of[check_protocol(protocol)] = select_folds(pairs, folds) if folds else pairs
    unique = sorted({p for pairs in pairs_of.values() for pair in pairs for p in (pair.path_a, pair.path_b)})
    index = {p: i for i, p in enumerate(unique)}
    images, fallback = cfp_crops(unique, crops, embedder.input_hwc, progress)
    emb, _ = _embed_loaded(embedder, images, lambda image, i: image, flip, None, 256, progress)
    out = {}
    for protocol, pairs in pairs_of.items():
        ia, ib = [index[p.path_a] for p in pairs], [index[p.path_b] for p in pairs]
        scores, issame = cosine_scores(emb[ia], emb[ib]), np.array([p.issame for p in pairs])
        used = sorted({p.fold + 1 for p in pairs})
        report = verification_report(scores, issame, [p.fold for p in pairs],
                                     dataset=f"cfp-{protocol.lower()}:{cfp_dir}", num_images=len({*ia, *ib}),
                                     flip=flip, **meta)
        report.update(auc_eer(scores, issame), folds=used, num_folds=len(used))
        failed = sorted({unique[i] for i in (*ia, *ib) if fallback[i]})
        report["align"] = {
            "method": "none (photos used as given)" if crops is None else "MTCNN 5 points -> ArcFace 112x112 template",
            "cache": None if crops is None else str(crops.dir),
            "no_face_images": len(failed),
            "no_face_pairs": int(sum(fallback[a] or fallback[b] for a, b in zip(ia, ib))),
            "fallback": None if crops is None else FALLBACK,
            "no_face_files": [str(p) for p in failed]}
        out[protocol] = (report, scores, issame)
    return out


def cfp_reports(embedder, cfp_dir, protocols, flip, align_cache, folds, roc_png, model_name: str, progress=True,
                **meta) -> dict:
    """{"cfp_ff"/"cfp_fp": report} for tools/evaluate.py --cfp_dir: evaluate_cfp with MTCNN crops cached in
    `align_cache` (None: the default cache), each report with its ROC PNG (`roc_png` with .cfp_fp.roc.png)."""
    from mobiface_tf.crop_cache import CropCache

    results = evaluate_cfp(embedder, cfp_dir, protocols, flip, CropCache(align_cache), folds, progress, **meta)
    reports = {}
    for protocol, (report, scores, issame) in results.items():
        name = f"cfp_{protocol.lower()}"
        png = Path(roc_png).with_name(Path(roc_png).name.replace(".roc.png", f".{name}.roc.png"))
        title = f"{model_name} on CFP-{protocol} ({report['num_folds']} folds)"
        report["roc_png"] = str(save_roc_png(scores, issame, png, title))
        reports[name] = report
    return reports
