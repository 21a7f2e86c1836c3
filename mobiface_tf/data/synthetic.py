"""SYNTHETIC face-like identities for the quickstart and fast tests. Not real faces; labelled synthetic
everywhere they appear (folder names `synthetic_id0000`, a SYNTHETIC.txt note, `"synthetic": true` in the
manifest).

Each identity is a stable random drawing seeded by (seed, identity): face oval, skin tone, hair, eyes, brows,
nose and mouth at identity-specific places, sizes and colours, plus a fixed low-frequency skin texture. Each
image of it varies pose (in-plane rotation, shift), scale, light (gain, offset, a gradient) and pixel noise.
The parts sit near the ArcFace template, so the images look like aligned 112x112 crops and need no MTCNN.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from mobiface_tf.images import ARCFACE_TEMPLATE, CROP_SIZE

SIZE = CROP_SIZE
NOTE = ("SYNTHETIC DATA: generated face-like patterns from mobiface_tf.data.synthetic, not photos of people.\n"
        "Use it for smoke tests and the quickstart only; accuracy on it says nothing about real faces.\n")


def _identity(seed: int, identity: int) -> dict:
    r = np.random.default_rng([seed, identity, 0x5EED])
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = ARCFACE_TEMPLATE
    j = lambda s: r.uniform(-s, s)  # noqa: E731  identity-specific jitter of a part
    eye_y = (ly + ry) / 2 + j(4)
    eye_dx = (rx - lx) / 2 + j(4)
    tex = cv2.resize(r.uniform(-1, 1, (6, 6)).astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    return {
        "bg": r.uniform(0, 255, 3), "skin": r.uniform(60, 230, 3), "hair": r.uniform(0, 200, 3),
        "iris": r.uniform(0, 200, 3), "lips": r.uniform(40, 220, 3),
        "face_axes": (r.uniform(30, 42), r.uniform(42, 54)), "face_c": (56 + j(3), 66 + j(4)),
        "hair_h": r.uniform(8, 30), "eye_c": (56 + j(3), eye_y), "eye_dx": eye_dx, "eye_r": r.uniform(3, 7),
        "brow_dy": r.uniform(6, 12), "brow_w": r.uniform(6, 12), "brow_tilt": j(4),
        "nose": (nx + j(3), ny + j(4)), "nose_w": r.uniform(3, 9),
        "mouth": ((mlx + mrx) / 2 + j(3), (mly + mry) / 2 + j(4)), "mouth_w": r.uniform(8, 18),
        "mouth_h": r.uniform(2, 7), "texture": tex * r.uniform(10, 40),
    }


def _draw(p: dict) -> np.ndarray:
    img = np.empty((SIZE, SIZE, 3), np.float32)
    img[:] = p["bg"]
    c = tuple(int(round(v)) for v in p["face_c"])
    ax = tuple(int(round(v)) for v in p["face_axes"])
    cv2.ellipse(img, c, ax, 0, 0, 360, p["skin"].tolist(), -1, cv2.LINE_AA)
    img += p["texture"][:, :, None] * (img != p["bg"]).any(-1, keepdims=True)
    cv2.ellipse(img, (c[0], c[1] - ax[1] + 6), (ax[0] + 2, int(p["hair_h"])), 0, 180, 360,
                p["hair"].tolist(), -1, cv2.LINE_AA)
    ex, ey = p["eye_c"]
    for side in (-1, 1):
        x = ex + side * p["eye_dx"]
        cv2.ellipse(img, (int(x), int(ey)), (int(p["eye_r"] * 1.8), int(p["eye_r"])), 0, 0, 360,
                    (245, 245, 245), -1, cv2.LINE_AA)
        cv2.circle(img, (int(x), int(ey)), int(p["eye_r"] * 0.8), p["iris"].tolist(), -1, cv2.LINE_AA)
        by = ey - p["brow_dy"]
        cv2.line(img, (int(x - p["brow_w"]), int(by + side * p["brow_tilt"] / 2)),
                 (int(x + p["brow_w"]), int(by - side * p["brow_tilt"] / 2)), p["hair"].tolist(), 2, cv2.LINE_AA)
    nx, ny = p["nose"]
    pts = np.array([[nx, ny - 14], [nx - p["nose_w"], ny + 2], [nx + p["nose_w"], ny + 2]], np.int32)
    cv2.fillConvexPoly(img, pts, (p["skin"] * 0.7).tolist(), cv2.LINE_AA)
    mx, my = p["mouth"]
    cv2.ellipse(img, (int(mx), int(my)), (int(p["mouth_w"]), int(p["mouth_h"])), 0, 0, 360,
                p["lips"].tolist(), -1, cv2.LINE_AA)
    return img


def render_identity(seed: int, identity: int, num_images: int, image_seed: int | None = None) -> np.ndarray:
    """[num_images, 112, 112, 3] uint8 RGB images of one synthetic identity."""
    base = _draw(_identity(seed, identity))
    r = np.random.default_rng([seed, identity, 1 if image_seed is None else 2 + image_seed])
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE - 0.5
    out = np.empty((num_images, SIZE, SIZE, 3), np.uint8)
    for k in range(num_images):
        m = cv2.getRotationMatrix2D((56 + r.uniform(-3, 3), 60 + r.uniform(-3, 3)), r.uniform(-12, 12),
                                    r.uniform(0.88, 1.12))
        m[:, 2] += r.uniform(-4, 4, 2)
        img = cv2.warpAffine(base, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        gx, gy = r.uniform(-40, 40, 2)
        img = img * r.uniform(0.7, 1.3) + r.uniform(-30, 30) + (gx * xx + gy * yy)[:, :, None]
        img += r.normal(0, r.uniform(2, 10), img.shape).astype(np.float32)
        out[k] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def class_name(identity: int) -> str:
    """The folder / class name of synthetic identity `identity`: 'synthetic_id0007'."""
    return f"synthetic_id{identity:04d}"


def write_synthetic_folder(root, num_identities: int, images_per_identity: int, seed: int = 0) -> Path:
    """Writes root/synthetic_id0000/0000.jpg ... and root/SYNTHETIC.txt; returns root."""
    from mobiface_tf.data.tfrecord import encode_jpeg
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "SYNTHETIC.txt").write_text(NOTE)
    for i in range(num_identities):
        d = root / class_name(i)
        d.mkdir(exist_ok=True)
        for k, img in enumerate(render_identity(seed, i, images_per_identity)):
            (d / f"{k:04d}.jpg").write_bytes(encode_jpeg(img))
    return root


def write_synthetic_lfw(root, pairs_file, num_identities: int, images_per_identity: int, num_folds: int,
                        pairs_per_class: int, seed: int = 1, pairs_seed: int = 0) -> list[str]:
    """Held-out synthetic people in the LFW layout plus a View 2 style pairs.txt; returns the identity names.

    Writes root/SYNTHETIC.txt and root/heldout_NNN/heldout_NNN_KKKK.jpg (K from 1), drawn with `seed` (use a
    seed other than the training data's so these are different people), and `pairs_file`: the header
    "num_folds pairs_per_class", then per fold pairs_per_class same-person lines and as many different-person
    lines, drawn with `pairs_seed`.
    """
    from mobiface_tf.data.tfrecord import encode_jpeg

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "SYNTHETIC.txt").write_text(NOTE)
    names = [f"heldout_{i:03d}" for i in range(num_identities)]
    for i, name in enumerate(names):
        (root / name).mkdir(exist_ok=True)
        for k, img in enumerate(render_identity(seed=seed, identity=i, num_images=images_per_identity), start=1):
            (root / name / f"{name}_{k:04d}.jpg").write_bytes(encode_jpeg(img))
    rng = np.random.default_rng(pairs_seed)
    n = images_per_identity
    lines = [f"{num_folds}\t{pairs_per_class}"]
    for _ in range(num_folds):
        for _ in range(pairs_per_class):
            name = names[rng.integers(len(names))]
            i, j = rng.choice(np.arange(1, n + 1), 2, replace=False)
            lines.append(f"{name}\t{i}\t{j}")
        for _ in range(pairs_per_class):
            a, b = rng.choice(len(names), 2, replace=False)
            lines.append(f"{names[a]}\t{rng.integers(1, n + 1)}\t{names[b]}\t{rng.integers(1, n + 1)}")
    Path(pairs_file).write_text("\n".join(lines) + "\n")
    return names


def write_synthetic_tfrecords(out_dir, num_identities: int, images_per_identity: int, seed: int = 0,
                              shards: int = 4) -> dict:
    """Writes shards + manifest.json in mobiface-prepare's format ("synthetic": true); returns the manifest.

    Image i of identity c goes to shard (c * images_per_identity + i) % shards, as prepare_data assigns inputs.
    """
    from mobiface_tf.data.manifest import write_manifest
    from mobiface_tf.data.tfrecord import AtomicShardWriter, encode_jpeg, make_example, shard_name
    if shards < 1 or num_identities < 1 or images_per_identity < 1:
        raise ValueError(f"need shards, num_identities, images_per_identity >= 1, got "
                         f"{shards}, {num_identities}, {images_per_identity}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "SYNTHETIC.txt").write_text(NOTE)
    writers = [AtomicShardWriter(out_dir / shard_name(s, shards)) for s in range(shards)]
    n = 0
    for c in range(num_identities):
        for k, img in enumerate(render_identity(seed, c, images_per_identity)):
            writers[n % shards].write(make_example(encode_jpeg(img), c, f"{class_name(c)}/{k:04d}.jpg"))
            n += 1
    shard_info = [{"file": shard_name(s, shards), "num_images": w.count, "bytes": w.commit()}
                  for s, w in enumerate(writers)]
    manifest = {
        "synthetic": True, "source": "synthetic", "input": f"synthetic(seed={seed})", "align": "none",
        "num_inputs": n, "num_images": n, "num_classes": num_identities,
        "class_names": [class_name(c) for c in range(num_identities)],
        "class_counts": [images_per_identity] * num_identities, "skipped": [], "shards": shard_info,
    }
    write_manifest(out_dir, manifest)
    return manifest


def write_benchmark_shards(out_dir, lfw_dir, num_images: int, num_classes: int = 1) -> str:
    """8 TFRecord shards of real face JPEGs for speed benchmarks (tools/research/bench_data.py, bench_distill.py).

    The first `num_images` JPEGs of an LFW-style tree `lfw_dir` (<Name>/<Name>_NNNN.jpg; JPEGs only: the pipeline
    decodes image/encoded as JPEG), labelled i % num_classes; where `lfw_dir` is absent, synthetic identities
    instead. Returns a one-line description of what was written. Labels carry no identity: speed only.
    """
    import os
    from pathlib import Path

    from mobiface_tf.data.manifest import write_manifest
    from mobiface_tf.data.tfrecord import AtomicShardWriter, make_example, shard_name
    from mobiface_tf.identity_folders import list_identity_tree

    lfw = Path(lfw_dir)
    if not lfw.is_dir():
        write_synthetic_tfrecords(out_dir, max(1, num_images // 16), 16, seed=0, shards=8)
        return f"SYNTHETIC ({num_images} generated faces; {lfw} not found)"
    files = sorted(f for _, photos in list_identity_tree(lfw)[0] for f in photos
                   if f.suffix.lower() in (".jpg", ".jpeg"))[:num_images]
    writers = [AtomicShardWriter(os.path.join(out_dir, shard_name(s, 8))) for s in range(8)]
    for i, f in enumerate(files):
        writers[i % 8].write(make_example(f.read_bytes(), i % num_classes, f.name))
    shards = [{"file": shard_name(s, 8), "num_images": w.count, "bytes": w.commit()} for s, w in enumerate(writers)]
    write_manifest(out_dir, {"num_images": len(files), "num_classes": num_classes, "class_names": [],
                             "skipped": [], "shards": shards})
    return f"LFW 112x112 JPEGs ({len(files)} from {lfw})"

