"""InsightFace-style verification `.bin` files from the LFW View 2 or CFP (FF/FP) protocol.

InsightFace trainers watch verification accuracy on `lfw.bin`, `cfp_fp.bin` and `agedb_30.bin`: pickles of
(JPEG bytes of the aligned 112x112 crops, issame bools). `build_bin` makes one from a protocol read by
mobiface_tf.data.verification: each photo aligned by MTCNN to the ArcFace template through the crop cache
(mobiface_tf.crop_cache; the centre-square fallback where no face is found, counted) and JPEG-encoded.

Pairs are written fold by fold, so InsightFace's contiguous 10-fold split of the .bin (and evaluate's
`--bin`) uses the protocol's own folds when each fold has the same number of pairs (LFW: 600, CFP: 700).
Then the same model scores the same accuracy through the .bin as through `--cfp_dir` or `--pairs`, up to the
JPEG round trip of the crops.
"""
from __future__ import annotations

if __name__ == "__main__":  # `python -m mobiface_tf.make_bin`: the make_bin command (mobiface_tf/commands/make_bin.py)
    from mobiface_tf import cli

    cli.make_bin()

from pathlib import Path

import cv2
import numpy as np


def encode_jpeg(image_rgb: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of a uint8 RGB image at `quality` (1..100)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def protocol_pairs(cfp_dir=None, cfp_protocol: str = "FP", lfw_dir=None, pairs_file=None, folds=None) -> list:
    """The pairs (mobiface_tf.data.verification.Pair) of CFP (`cfp_dir`, `cfp_protocol`) or LFW (`lfw_dir`,
    `pairs_file`), in fold order, restricted to the 1-based `folds` when given. ValueError unless exactly one
    source is given."""
    from mobiface_tf.data.verification import check_protocol, read_cfp_pairs, read_lfw_pairs

    if bool(cfp_dir) == bool(lfw_dir or pairs_file):
        raise ValueError("give either --cfp_dir (with --cfp_protocol) or --lfw_dir with --pairs")
    if cfp_dir:
        pairs = read_cfp_pairs(cfp_dir, check_protocol(cfp_protocol))
    else:
        if not (lfw_dir and pairs_file):
            raise ValueError("--lfw_dir and --pairs go together")
        pairs = read_lfw_pairs(pairs_file, lfw_dir)
    if folds:
        have = sorted({p.fold + 1 for p in pairs})
        bad = sorted({int(f) for f in folds} - set(have))
        if bad:
            raise ValueError(f"--folds {bad} not in the protocol, which has folds {have[0]}..{have[-1]}")
        pairs = [p for p in pairs if p.fold + 1 in {int(f) for f in folds}]
    return sorted(pairs, key=lambda p: p.fold)  # stable: each fold keeps its order


def build_bin(pairs, output, crops=None, quality: int = 95, progress: bool = True) -> dict:
    """Write `output` (.bin) for `pairs`; returns a summary dict (num_pairs, num_images, folds, pairs_per_fold,
    no_face_images, no_face_pairs, bytes).

    crops: a mobiface_tf.crop_cache.CropCache, or None to keep each photo as it is (it must then be a 112x112
    aligned crop; another size is resized). Each distinct photo is aligned and encoded once.
    """
    from mobiface_tf.data.verification.binfile import write_bin
    from mobiface_tf.evaluate_cfp import cfp_crops

    if not 1 <= int(quality) <= 100:
        raise ValueError(f"--jpeg_quality must be 1..100, got {quality}")
    unique = sorted({p for pair in pairs for p in (pair.path_a, pair.path_b)})
    index = {p: i for i, p in enumerate(unique)}
    images, fallback = cfp_crops(unique, crops, (112, 112, 3), progress)
    encoded = [encode_jpeg(im, quality) for im in images]
    blobs = [encoded[index[p]] for pair in pairs for p in (pair.path_a, pair.path_b)]
    path = write_bin(output, blobs, [pair.issame for pair in pairs])
    folds = sorted({p.fold + 1 for p in pairs})
    per_fold = sorted({sum(p.fold + 1 == f for p in pairs) for f in folds})
    return {"output": str(path), "num_pairs": len(pairs), "num_images": len(unique), "folds": folds,
            "pairs_per_fold": per_fold, "no_face_images": int(sum(fallback)),
            "no_face_pairs": int(sum(fallback[index[p.path_a]] or fallback[index[p.path_b]] for p in pairs)),
            "jpeg_quality": int(quality), "bytes": Path(path).stat().st_size}
