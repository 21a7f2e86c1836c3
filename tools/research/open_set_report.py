"""The figures of tools/research/open_set_celeba.py: thresholds before / after the issue-25 fix, and a montage."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from mobiface_tf import identify as ident
from mobiface_tf.atomic import write_json_atomic
from mobiface_tf.gallery import Gallery
from mobiface_tf import open_set

FARS = (1e-2, 1e-3, 1e-4)


def naive_threshold(scores, far: float) -> float:
    """The threshold before the fix: the (k+1)-th highest of ALL impostor scores, k = floor(far N), whatever N."""
    s = np.sort(np.asarray(scores))[::-1]
    return float(s[min(int(math.floor(far * len(s))), len(s) - 1)])


def genuine_truth(gallery, queries) -> tuple[np.ndarray, np.ndarray]:
    """(gallery index of each genuine query's person, the query rows whose person is enrolled)."""
    g_names = {n: i for i, n in enumerate(gallery.names)}
    rows = np.array([i for i, lab in enumerate(queries.image_labels) if queries.names[lab] in g_names])
    return np.array([g_names[queries.names[queries.image_labels[i]]] for i in rows]), rows


def outcomes(gallery, queries, strangers, t: float) -> dict:
    """Shares of genuine queries accepted as the right person and of strangers rejected at threshold t."""
    truth, rows = genuine_truth(gallery, queries)
    q_scores = queries.image_embeddings[rows] @ gallery.templates.T
    best, arg = q_scores.max(1), q_scores.argmax(1)
    s_best = (strangers.image_embeddings @ gallery.templates.T).max(1)
    return {"threshold": round(t, 4), "genuine_accepted_right": round(float(np.mean((arg == truth) & (best > t))), 4),
            "strangers_rejected": round(float(np.mean(s_best <= t)), 4),
            "strangers_accepted": int(np.sum(s_best > t))}


def with_duplicate(g, q, person: str):
    """A copy of gallery g with `person` enrolled a second time as '<person>_dup' from their first 2 query
    photos (one person under two names, on real faces); None when they have < 2 query photos."""
    k = q.names.index(person)
    photos = q.image_embeddings[q.image_labels == k][:2]
    if len(photos) < 2:
        return None
    t = photos.mean(0)
    names = g.names + [person + "_dup"]
    return Gallery(names, np.concatenate([g.templates, (t / np.linalg.norm(t))[None]]).astype(np.float32),
                   g.num_images + [2], 0, 0, 0, [], g.index_path, False,
                   np.concatenate([g.image_embeddings, photos]).astype(np.float32),
                   np.concatenate([g.image_labels, [len(g.names)] * 2]))


def injection(g, q, s, far: float, trials: int) -> dict:
    """One duplicate identity injected at a time (the first `trials` people, by name, with >= 2 query photos):
    was it flagged, and the thresholds / outcomes before and after the fix. The injected person's queries are
    left out of the genuine queries (two of them are enrolled now)."""
    rows = []
    for person in sorted(set(g.names) & set(q.names)):
        if len(rows) == trials:
            break
        gd = with_duplicate(g, q, person)
        if gd is None:
            continue
        near = ident.near_duplicates(gd)
        flagged = [(a, b) for a, b, _ in near.pairs]
        keep = np.array([q.names[lab] != person for lab in q.image_labels])
        qk = Gallery(q.names, q.templates, q.num_images, 0, 0, 0, [], q.index_path, False,
                     q.image_embeddings[keep], q.image_labels[keep])
        pair = [sc for a, b, sc in near.pairs if gd.names[b] == person + "_dup" and gd.names[a] == person]
        sums, counts = open_set.identity_sums(gd.image_embeddings, gd.image_labels, len(gd.names))
        score = float(sums[gd.names.index(person)] @ sums[-1]) / 4
        before = naive_threshold(ident.impostor_scores(gd), far)
        after = ident.far_threshold(gd, far, flagged)
        rows.append({"person": person, "pair_score": round(score, 4), "flagged": bool(pair),
                     "bound": round(near.bound, 4), "other_flags": len(near.pairs) - bool(pair),
                     "before": outcomes(gd, qk, s, before),
                     "after": {**outcomes(gd, qk, s, after.threshold), "far_method": after.method}})
    return {"trials": len(rows), "flagged": sum(r["flagged"] for r in rows), "rows": rows}


def closest_pairs(g, num: int) -> list[tuple[int, int, float]]:
    """The `num` identity pairs with the highest pair score (open_set's statistic), flagged or not."""
    sums, counts = open_set.identity_sums(g.image_embeddings, g.image_labels, len(g.names))
    means = sums / np.maximum(counts, 1)[:, None]
    p = means @ means.T
    a, b = np.triu_indices(len(g.names), 1)
    top = np.argsort(-p[a, b])[:num]
    return [(int(a[i]), int(b[i]), float(p[a[i], b[i]])) for i in top]


def _tile(path):
    import cv2

    from mobiface_tf.images import load_image_rgb

    return cv2.resize(load_image_rgb(path), (89, 109), interpolation=cv2.INTER_AREA)


def montage(rows_spec, path: Path) -> None:
    """One row per entry (caption, [photo groups]): groups side by side, a white gap between groups."""
    import cv2

    rows = []
    for caption, groups in rows_spec:
        tiles = []
        for group in groups:
            tiles += [_tile(p) for p in group] + [np.full((109, 8, 3), 255, np.uint8)]
        row = np.concatenate(tiles[:-1], axis=1)
        cap = np.full((20, row.shape[1], 3), 255, np.uint8)
        cv2.putText(cap, caption, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([cap, row], axis=0))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    image = cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(path), image, [cv2.IMWRITE_PNG_COMPRESSION, 9])


def pair_montage(g, pairs, bound, photo_root: Path, path: Path) -> None:
    """Identity a's photos | identity b's photos, per pair, captioned with names, score and flag."""
    def mark(sc):
        return "(no bound)" if bound is None else f"{'flagged' if sc > bound else '< bound'} {bound:.3f}"

    spec = [(f"{g.names[a]} | {g.names[b]}  score {sc:.3f} {mark(sc)}",
             [sorted((photo_root / g.names[k]).iterdir()) for k in (a, b)]) for a, b, sc in pairs]
    montage(spec, path)


def stranger_montage(g, s, t: float, out: Path, path: Path) -> list:
    """Strangers accepted at threshold t: the stranger's photo | the matched identity's photos."""
    scores = s.image_embeddings @ g.templates.T
    best, arg = scores.max(1), scores.argmax(1)
    hits = [int(i) for i in np.argsort(-best) if best[i] > t]
    spec = [(f"stranger {s.names[s.image_labels[i]]} -> {g.names[arg[i]]}  score {best[i]:.3f}",
             [sorted((out / "photos" / "strangers" / s.names[s.image_labels[i]]).iterdir()),
              sorted((out / "photos" / "gallery" / g.names[arg[i]]).iterdir())]) for i in hits]
    if spec:
        montage(spec, path)
    return [{"stranger": s.names[s.image_labels[i]], "matched": g.names[arg[i]], "score": round(float(best[i]), 4)}
            for i in hits]


def report(galleries, FLAGS, stem, out: Path) -> dict:
    """Print and write (OUT/<stem>.json) rank-1, acceptance and rejection before / after the fix at FARS."""
    g, q, s = galleries["gallery"], galleries["queries"], galleries["strangers"]
    truth, rows = genuine_truth(g, q)
    rank1 = float(np.mean((q.image_embeddings[rows] @ g.templates.T).argmax(1) == truth))
    near = ident.near_duplicates(g)
    flagged = [(a, b) for a, b, _ in near.pairs]
    all_scores = ident.impostor_scores(g)
    kept_scores = ident.impostor_scores(g, flagged)
    doc = {"model": str(FLAGS.model), "identities": len(g.names), "gallery_photos": int(sum(g.num_images)),
           "gallery_skipped": len(g.skipped), "genuine_queries": int(len(rows)),
           "genuine_queries_not_enrolled": int(len(q.image_labels) - len(rows)),
           "queries_skipped": len(q.skipped), "strangers": int(len(s.image_labels)),
           "strangers_skipped": len(s.skipped),
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
    doc["injected_duplicates"] = injection(g, q, s, FLAGS.far, FLAGS.inject)
    print(json.dumps(doc, indent=1))
    path = Path(FLAGS.json_out) if FLAGS.json_out else out / f"{stem}.json"
    write_json_atomic(path, doc)
    print(f"wrote {path}", file=sys.stderr)
    if FLAGS.montage:
        pairs = near.pairs[:FLAGS.montage_pairs] or closest_pairs(g, FLAGS.montage_pairs)
        pair_montage(g, pairs, near.bound, out / "photos" / "gallery", Path(FLAGS.montage))
        print(f"wrote {FLAGS.montage} ({'flagged' if near.pairs else 'closest, none flagged'})", file=sys.stderr)
        t = doc["by_far"][f"{FLAGS.far:g}"]["after"]["threshold"]
        spath = Path(FLAGS.montage).with_name(Path(FLAGS.montage).stem + "_strangers.png")
        accepted = stranger_montage(g, s, t, out, spath)
        print(f"wrote {spath}: {len(accepted)} strangers accepted at {t}: {accepted}", file=sys.stderr)
    return doc
