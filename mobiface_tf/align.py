"""Face alignment as in MobiFace (Duong et al., 2018, Sec. IV-A): MTCNN five landmarks, then a similarity
transform onto the 112x112 ArcFace template. Also the one image loader every tool uses.

The loader refuses bad files with an `ImageError` whose message is one line saying what is wrong, so that
tools/prepare_data.py can skip the file and record the reason in manifest.json.
"""
from __future__ import annotations

import dataclasses
import io
import os
import threading
import warnings

import cv2
import numpy as np

# The ArcFace / InsightFace 112x112 template, (x, y) for: left eye, right eye, nose tip, left and right mouth
# corner, where "left" means the image's left (smaller x). One source of truth for the whole project.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32)
CROP_SIZE = 112

# 40 Mpx is above any consumer photo (a 7000x5000 camera image is 35 Mpx) but stops decompression bombs early.
DEFAULT_MAX_PIXELS = 40_000_000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".webp")


class ImageError(ValueError):
    """A file that cannot be used as a face photo; str(err) is the one-line reason."""


# ----------------------------------------------------------------------------------------------- loading
def image_size(data: bytes, name: str = "<bytes>") -> tuple[int, int, str, str]:
    """(width, height, format, mode) from the header only: nothing is decoded yet."""
    from PIL import Image, UnidentifiedImageError  # pillow: header parsing without decoding pixels
    if not data:
        raise ImageError(f"zero-byte file: {name}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own max_pixels check follows
            with Image.open(io.BytesIO(data)) as im:
                return im.size[0], im.size[1], im.format or "", im.mode
    except Image.DecompressionBombError as e:
        raise ImageError(f"too large ({e}): {name}") from None
    except UnidentifiedImageError:
        raise ImageError(f"not an image (unknown format): {name}") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL raises these on broken headers
        raise ImageError(f"unreadable image header ({e}): {name}") from None


def _jpeg_is_complete(data: bytes) -> bool:
    # A JPEG ends with the EOI marker FFD9; some writers pad after it, so look at the tail only.
    return b"\xff\xd9" in data.rstrip(b"\x00\r\n ")[-32:]


def decode_image_rgb(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decodes encoded image bytes to uint8 RGB [H, W, 3].

    Handles grayscale (PGM), 16-bit, alpha (composited over black, as the crops' border), CMYK JPEG.
    Raises ImageError on zero-byte, truncated, non-image or too-large (w*h > max_pixels, checked before
    decoding) input.
    """
    width, height, fmt, mode = image_size(data, name)
    if width * height > max_pixels:
        raise ImageError(f"too large: {width}x{height} = {width * height} pixels > max_pixels={max_pixels} "
                         f"(raise --max_pixels if this is a real photo): {name}")
    if fmt == "JPEG" and not _jpeg_is_complete(data):
        raise ImageError(f"truncated JPEG (no end-of-image marker): {name}")
    buf = np.frombuffer(data, np.uint8)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and fmt == "PNG")
    # IMREAD_COLOR gives 8-bit BGR for gray, 16-bit and CMYK input; UNCHANGED keeps alpha when there is one.
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED if has_alpha else cv2.IMREAD_COLOR)
    if img is None:
        raise ImageError(f"cannot decode {fmt or 'image'} data (corrupt or truncated): {name}")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageError(f"unsupported pixel type {img.dtype}: {name}")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        alpha = img[:, :, 3:4].astype(np.float32) / 255.0
        img = (img[:, :, :3].astype(np.float32) * alpha + 0.5).astype(np.uint8)
    if img.shape[:2] != (height, width):
        raise ImageError(f"decoded size {img.shape[1]}x{img.shape[0]} differs from header {width}x{height} "
                         f"(corrupt file): {name}")
    return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))


def load_image_rgb(path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Reads an image file as uint8 RGB [H, W, 3]; raises ImageError with the reason on a bad file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageError(f"cannot read file ({e.strerror}): {path}") from None
    return decode_image_rgb(data, path, max_pixels)


# ----------------------------------------------------------------------------------------------- geometry
def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping src -> dst.

    Umeyama (1991), "Least-squares estimation of transformation parameters between two point patterns",
    eqs. 40-42. Returns the 2x3 matrix for cv2.warpAffine.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"similarity_transform needs two [N>=2, 2] point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    fix = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # the best orthogonal map is a reflection: forbid it
        fix[1, 1] = -1
    rot = u @ fix @ vt
    var_s = (s ** 2).sum() / len(src)
    scale = (sig * np.diag(fix)).sum() / var_s if var_s > 0 else 1.0
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]]).astype(np.float32)


def warp_to_template(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Warps `image` so its 5 landmarks land on ARCFACE_TEMPLATE; returns a 112x112x3 uint8 crop."""
    m = similarity_transform(np.asarray(landmarks, np.float32).reshape(5, 2), ARCFACE_TEMPLATE)
    return cv2.warpAffine(image, m, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


# ----------------------------------------------------------------------------------------------- detection
@dataclasses.dataclass
class AlignResult:
    crop: np.ndarray | None          # 112x112x3 uint8 RGB, None when no face was found
    reason: str | None               # why crop is None
    landmarks: np.ndarray | None     # [5, 2] float32 in the input image's pixels
    box: np.ndarray | None           # [x1, y1, x2, y2] float32 of the kept face
    num_faces: int                   # faces MTCNN found before picking one


_DETECTOR = None
_DETECTOR_LOCK = threading.Lock()


def get_detector():
    """One MTCNN per process, built on first use (its weights ship in the `mtcnn` wheel: no download)."""
    global _DETECTOR
    with _DETECTOR_LOCK:
        if _DETECTOR is None:
            from mtcnn import MTCNN
            _DETECTOR = MTCNN(device="CPU:0")
    return _DETECTOR


def pick_face(boxes: np.ndarray, image_shape) -> int:
    """Index of the face to keep when there are several: the largest and most central one.

    score = box area - 2 * (squared distance from the box centre to the image centre), the rule of FaceNet's
    MTCNN alignment script: a face twice as wide wins unless it sits far off-centre.
    """
    h, w = image_shape[:2]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 - w / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 - h / 2
    return int(np.argmax(area - 2.0 * (cx ** 2 + cy ** 2)))


class FaceAligner:
    """MTCNN detection + 5-point similarity warp to the ArcFace template.

    Small images (tight crops such as LFW 112x112 or AT&T 92x112) are padded before detection: MTCNN misses a
    face that fills the whole frame, and the padding gives its pyramid room. Landmarks are mapped back to the
    unpadded image.
    """

    def __init__(self, min_face_size: int = 20, pad_below: int = 256, pad_fraction: float = 0.25,
                 thresholds=(0.6, 0.7, 0.8)):
        if min_face_size < 12:
            raise ValueError(f"min_face_size must be >= 12 (MTCNN's PNet window), got {min_face_size}")
        self.min_face_size = min_face_size
        self.pad_below = pad_below
        self.pad_fraction = pad_fraction
        self.thresholds = thresholds

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All faces: boxes [K,4] xyxy, scores [K], landmarks [K,5,2] (template order), image pixels."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected uint8 RGB [H,W,3], got {image.dtype} {image.shape}")
        pad = 0
        if min(image.shape[:2]) < self.pad_below:
            pad = int(round(self.pad_fraction * max(image.shape[:2])))
            image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        out = get_detector().detect_faces(
            image, output_type="numpy", box_format="xyxy", min_face_size=self.min_face_size,
            threshold_pnet=self.thresholds[0], threshold_rnet=self.thresholds[1],
            threshold_onet=self.thresholds[2])
        out = np.asarray(out, np.float64).reshape(-1, 16)
        # Row layout of mtcnn 1.0: image_id, x1, y1, x2, y2, confidence, then the five x's and the five y's of
        # left eye, right eye, nose, mouth left, mouth right (the template's order). Kept as floats: the JSON
        # output rounds landmarks to whole pixels.
        boxes = out[:, 1:5].astype(np.float32) - pad
        scores = out[:, 5].astype(np.float32)
        marks = np.stack([out[:, 6:11], out[:, 11:16]], axis=-1).astype(np.float32) - pad
        return boxes, scores, marks

    def align(self, image_rgb: np.ndarray) -> AlignResult:
        boxes, _, marks = self.detect(image_rgb)
        if len(boxes) == 0:
            return AlignResult(None, f"no face found (MTCNN, min_face_size={self.min_face_size})", None, None, 0)
        k = pick_face(boxes, image_rgb.shape) if len(boxes) > 1 else 0
        crop = warp_to_template(image_rgb, marks[k])
        return AlignResult(crop, None, marks[k], boxes[k], len(boxes))
