"""Aligned face crops, cached on disk by a model-independent key.

Benchmarks such as CFP (Sengupta et al., WACV 2016) ship loose photo crops, so each photo goes through MTCNN and
the 5-point warp to the ArcFace template (mobiface_tf.align) before a model sees it. Aligning 7,000 photos takes
far longer than embedding them, and the crops do not depend on the model, so they are kept in a cache folder:
the key is the SHA-256 of the photo's bytes together with ALIGN_VERSION and the aligner's settings. A second
model, a second protocol (CFP-FF and CFP-FP share their frontal photos) or a `.bin` writer reuses them.

Detection runs on a fixed canvas: each photo is scaled so that its longer side is DETECT_SIDE pixels and placed,
with a black border of a quarter of that side (MTCNN misses a face that fills its frame), on a square canvas.
Equal canvases let MTCNN take a batch of photos in one call, which on a loaded 2-core machine is about five times
faster than one photo at a time; the five landmarks are mapped back and the warp samples the full-resolution
photo. Against MTCNN on the full-resolution photo the landmarks move by about 1 pixel of the 112x112 template
(median, 32 CFP photos). A photo's crop does not depend on the other photos of its batch.

When MTCNN finds no face, the photo is not dropped: its fallback crop is the centre square of the photo, resized
to 112x112 (CFP photos are loose crops around one face, so the centre square holds the face, unaligned). The
fallback is cached and marked too, so callers count it and the pairs it touches.

Entries are lossless PNGs `<dir>/<key[:2]>/<key>.aligned.png` or `.fallback.png`, written through
mobiface_tf.atomic (a unique temporary file renamed into place), so two processes filling the same cache never
leave a half-written crop.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from mobiface_tf.atomic import atomic_path
from mobiface_tf.images import CROP_SIZE, decode_image_rgb, read_image_bytes

ALIGN_VERSION = "mtcnn5-canvas-arcface112-v1"  # bump when the crop given for a photo changes
DETECT_SIDE = 160  # longer side of a photo on the detection canvas, pixels
DETECT_BATCH = 32  # photos per MTCNN call
FALLBACK = "centre square of the photo resized to 112x112 (MTCNN found no face; the pair is kept and scored)"


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/mobiface_tf/aligned (else ~/.cache/mobiface_tf/aligned)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mobiface_tf" / "aligned"


class Crop(NamedTuple):
    """One photo's 112x112x3 uint8 RGB crop; aligned False when it is the centre-square fallback."""

    image: np.ndarray
    aligned: bool


def centre_square(image: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """The largest centred square of a uint8 RGB [H, W, 3] photo, resized to [size, size, 3] (the fallback crop)."""
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    square = image[top:top + s, left:left + s]
    interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interp)


def aligner_signature(aligner) -> str:
    """The settings of a mobiface_tf.align.FaceAligner that change its crops, as a short string."""
    from mobiface_tf.images import DECODER_VERSION  # the same photo bytes decode to other pixels after a fix

    return (f"{ALIGN_VERSION}|decoder={DECODER_VERSION}|side={DETECT_SIDE}|min_face={aligner.min_face_size}|"
            f"thr={tuple(float(t) for t in aligner.thresholds)}")


def _canvas(image: np.ndarray) -> tuple[np.ndarray, float, tuple]:
    """(detection canvas, scale photo->canvas, scaled photo shape): the photo scaled to DETECT_SIDE on its longer
    side, at (border, border) of a black square of side DETECT_SIDE + 2 * border, border = DETECT_SIDE // 4."""
    scale = DETECT_SIDE / max(image.shape[:2])
    small = cv2.resize(image, None, fx=scale, fy=scale,
                       interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    border = DETECT_SIDE // 4
    canvas = np.zeros((DETECT_SIDE + 2 * border, DETECT_SIDE + 2 * border, 3), np.uint8)
    canvas[border:border + small.shape[0], border:border + small.shape[1]] = small
    return canvas, scale, small.shape


def align_batch(images: list, aligner) -> list:
    """Five MTCNN landmarks ([5, 2] float32, photo pixels) of the kept face of each uint8 RGB photo, or None where
    no face is found; one MTCNN call for all (`aligner` gives min_face_size and thresholds; the face kept among
    several is mobiface_tf.align.pick_face's)."""
    from mobiface_tf.align import get_detector, pick_face

    if not images:
        return []
    canvases = [_canvas(im) for im in images]
    out = get_detector().detect_faces(
        [c for c, _, _ in canvases], output_type="numpy", box_format="xyxy", min_face_size=aligner.min_face_size,
        threshold_pnet=aligner.thresholds[0], threshold_rnet=aligner.thresholds[1],
        threshold_onet=aligner.thresholds[2])
    out = np.asarray(out, np.float64).reshape(-1, 16)  # image index, box, score, 5 x's, 5 y's (mobiface_tf.align)
    border = DETECT_SIDE // 4
    marks = []
    for k, (_, scale, shape) in enumerate(canvases):
        rows = out[out[:, 0] == k]
        if len(rows) == 0:
            marks.append(None)
            continue
        j = pick_face(rows[:, 1:5] - border, shape) if len(rows) > 1 else 0
        marks.append((np.stack([rows[j, 6:11], rows[j, 11:16]], -1) - border) / scale)
    return [None if m is None else m.astype(np.float32) for m in marks]


class CropCache:
    """Aligned crops of photo files, computed once per (file content, aligner settings).

    Args:
      cache_dir: folder of the cache (created when missing); default `default_cache_dir()`. ValueError when it is
        a file or cannot be written.
      aligner: a mobiface_tf.align.FaceAligner; default one with the project's settings (MTCNN is loaded only
        when a photo is missing from the cache).
    """

    def __init__(self, cache_dir=None, aligner=None):
        self.dir = Path(cache_dir) if cache_dir else default_cache_dir()
        if self.dir.exists() and not self.dir.is_dir():
            raise ValueError(f"--align_cache {str(self.dir)!r} exists and is not a folder; pass a folder")
        try:  # checked now, before any photo is aligned
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".probe.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise ValueError(f"--align_cache {str(self.dir)!r} cannot be written ({e.strerror or e}); pass a writable "
                             "folder") from None
        if aligner is None:
            from mobiface_tf.align import FaceAligner

            aligner = FaceAligner()
        self.aligner = aligner
        self._salt = aligner_signature(aligner).encode()
        self.hits = self.misses = 0

    def key(self, data: bytes) -> str:
        """SHA-256 hex of the aligner signature and the photo's bytes: the same photo anywhere, the same key."""
        return hashlib.sha256(self._salt + b"\0" + data).hexdigest()

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.dir / key[:2]
        return folder / f"{key}.aligned.png", folder / f"{key}.fallback.png"

    def lookup(self, data: bytes) -> Crop | None:
        """The cached crop of these photo bytes, or None when it is not cached yet."""
        for path, aligned in zip(self._paths(self.key(data)), (True, False)):
            if path.is_file():
                bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if bgr is not None and bgr.shape == (CROP_SIZE, CROP_SIZE, 3):
                    return Crop(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), aligned)
        return None

    def _store(self, key: str, crop: Crop) -> None:
        path = self._paths(key)[0 if crop.aligned else 1]
        with atomic_path(path, keep_suffix=True) as tmp:  # OpenCV picks the format from the ".png" suffix
            if not cv2.imwrite(str(tmp), cv2.cvtColor(crop.image, cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write an aligned crop under {str(self.dir)!r}; pass a writable "
                              "--align_cache")

    def crop_many(self, items, progress: bool = False) -> list:
        """Crops of many photos, in order; `items` are file paths or encoded bytes. Cached ones are read, the rest
        aligned DETECT_BATCH at a time (or given the fallback) and cached.

        Raises mobiface_tf.images.ImageError when an item is not a readable image.
        """
        from mobiface_tf.align import warp_to_template

        items = list(items)
        out, todo = [None] * len(items), []
        for i, item in enumerate(items):
            data = item if isinstance(item, (bytes, bytearray)) else read_image_bytes(item)
            cached = self.lookup(data)
            if cached is None:
                todo.append((i, data))
            out[i] = cached
        self.hits += len(items) - len(todo)
        self.misses += len(todo)
        bar = None
        if progress and todo:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc="aligning (MTCNN)", unit="img")
        for start in range(0, len(todo), DETECT_BATCH):
            chunk = todo[start:start + DETECT_BATCH]
            photos = [decode_image_rgb(data, str(items[i]) if not isinstance(items[i], (bytes, bytearray))
                                       else f"image {i}") for i, data in chunk]
            for (i, data), photo, marks in zip(chunk, photos, align_batch(photos, self.aligner)):
                crop = Crop(warp_to_template(photo, marks), True) if marks is not None else \
                    Crop(centre_square(photo), False)
                self._store(self.key(data), crop)
                out[i] = crop
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return out

    def crop_file(self, path) -> Crop:
        """The crop of one photo file (crop_many of one)."""
        return self.crop_many([path])[0]
