"""The figures of tools/research/open_set_celeba.py: thresholds before / after the issue-25 fix, and a montage."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from mobiface_tf import identify as ident
from mobiface_tf import open_set

FARS = (1e-2, 1e-3, 1e-4)


def naive_threshold(scores, far: float) -> float:
    """The threshold before the fix: the (k+1)-th highest of ALL impostor scores, k = floor(far N), whatever N."""
    s = np.sort(np.asarray(scores))[::-1]
    return float(s[min(int(math.floor(far * len(s))), len(s) - 1)])


def outcomes(gallery, queries, strangers, t: float) -> dict:
    """Shares of genuine queries accepted as the right person and of strangers rejected at threshold t."""
    g_names = {n: i for i, n in enumerate(gallery.names)}
    truth = np.array([g_names[queries.names[lab]] for lab in queries.image_labels])
    q_scores = queries.image_embeddings @ gallery.templates.T
    best, arg = q_scores.max(1), q_scores.argmax(1)
    s_best = (strangers.image_embeddings @ gallery.templates.T).max(1)
    return {"threshold": round(t, 4), "genuine_accepted_right": round(float(np.mean((arg == truth) & (best > t))), 4),
            "strangers_rejected": round(float(np.mean(s_best <= t)), 4),
            "strangers_accepted": int(np.sum(s_best > t))}


def montage(gallery, pairs, photo_root: Path, path: Path, num: int) -> None:
    """One row per flagged pair: identity a's photos | identity b's photos, captioned with names and score."""
    import cv2

    from mobiface_tf.images import load_image_rgb

    rows = []
    for a, b, score in pairs[:num]:
        tiles = []
        for k in (a, b):
            for p in sorted((photo_root / gallery.names[k]).iterdir()):
                tiles.append(cv2.resize(load_image_rgb(p), (134, 164), interpolation=cv2.INTER_LINEAR))
            tiles.append(np.full((164, 12, 3), 255, np.uint8))
        row = np.concatenate(tiles[:-1], axis=1)
        cap = np.full((26, row.shape[1], 3), 255, np.uint8)
        cv2.putText(cap, f"{gallery.names[a]} | {gallery.names[b]}  score {score:.3f}", (6, 19),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([cap, row], axis=0))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))


def report(galleries, FLAGS, stem, out: Path) -> dict:
    """Print and write (OUT/<stem>.json) rank-1, acceptance and rejection before / after the fix at FARS."""
    g, q, s = galleries["gallery"], galleries["queries"], galleries["strangers"]
    g_names = {n: i for i, n in enumerate(g.names)}
    truth = np.array([g_names[q.names[lab]] for lab in q.image_labels])
    rank1 = float(np.mean((q.image_embeddings @ g.templates.T).argmax(1) == truth))
    near = ident.near_duplicates(g)
    flagged = [(a, b) for a, b, _ in near.pairs]
    all_scores = ident.impostor_scores(g)
    kept_scores = ident.impostor_scores(g, flagged)
    doc = {"model": str(FLAGS.model), "identities": len(g.names), "gallery_photos": int(sum(g.num_images)),
           "gallery_skipped": len(g.skipped), "genuine_queries": int(len(q.image_labels)),
           "queries_skipped": len(q.skipped), "strangers": int(len(s.image_labels)), "strangers_skipped": len(s.skipped),
           "rank1": round(rank1, 4), "near_duplicates": near.to_json(g.names),
           "impostor_scores_all": int(len(all_scores)), "impostor_scores_kept": int(len(kept_scores)),
           "impostor_p99": round(float(np.quantile(all_scores, 0.99)), 4),
           "impostor_max_all": round(float(all_scores.max()), 4),
           "impostor_max_kept": round(float(kept_scores.max()), 4), "by_far": {}}
    for far in FARS:
        ft = open_set.far_threshold(kept_scores, far)
        doc["by_far"][f"{far:g}"] = {
            "before": outcomes(g, q, s, naive_threshold(all_scores, far)),
            "flags_only": outcomes(g, q, s, naive_threshold(kept_scores, far)),
            "after": {**outcomes(g, q, s, ft.threshold), **ft.to_json()},
        }
    print(json.dumps(doc, indent=1))
    path = Path(FLAGS.json_out) if FLAGS.json_out else out / f"{stem}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    if FLAGS.montage and near.pairs:
        montage(g, near.pairs, out / "photos" / "gallery", Path(FLAGS.montage), FLAGS.montage_pairs)
        print(f"wrote {FLAGS.montage}", file=sys.stderr)
    return doc
