"""Face alignment as in MobiFace (Duong et al., 2018, Sec. IV-A): MTCNN five landmarks, then a similarity
transform onto the 112x112 ArcFace template.

Image files are listed and decoded by mobiface_tf.images (EXIF orientation, modes, bad-file policy); the names
below are re-exported from there so older imports keep working.
"""
from __future__ import annotations

import dataclasses
import math
import threading

import cv2
import numpy as np

from mobiface_tf.images import (ARCFACE_TEMPLATE, CROP_SIZE, DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS,  # noqa: F401
                                ImageError, decode_image_rgb, image_size, load_image_rgb)


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
    """What aligning one photo gave: the ArcFace-template crop of the kept face, or why there is none.

    crop: 112x112x3 uint8 RGB, or None with `reason` saying why; landmarks ([5, 2]) and box ([x1, y1, x2, y2]):
    float32 in the input image's pixels, None when no face; num_faces: faces MTCNN found before picking one.
    """

    crop: np.ndarray | None          # 112x112x3 uint8 RGB, None when no face was found
    reason: str | None               # why crop is None
    landmarks: np.ndarray | None     # [5, 2] float32 in the input image's pixels
    box: np.ndarray | None           # [x1, y1, x2, y2] float32 of the kept face
    num_faces: int                   # faces MTCNN found before picking one


# MTCNN runs on a copy of a larger photo downscaled to this many pixels; the crop is warped from the full-resolution
# photo. A 12 Mpx phone photo (4032x3024) is detected as it is; a 50 Mpx one (8160x6120) on a 4618x3463 copy, so the
# smallest face found there is 1.8 x min_face_size wide (36 px, under 0.5% of the photo's width), at a third of the
# detection time and memory of the full photo (MTCNN's pyramid starts at 12 / min_face_size of the image).
DETECT_MAX_PIXELS = 16_000_000

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
    face that fills the whole frame, and the padding gives its pyramid room. Photos above `detect_max_pixels`
    (a 50 Mpx phone photo) are detected on a downscaled copy. Boxes and landmarks are mapped back to the input
    image, and the crop is warped from it at full resolution.
    """

    def __init__(self, min_face_size: int = 20, pad_below: int = 256, pad_fraction: float = 0.25,
                 thresholds=(0.6, 0.7, 0.8), detect_max_pixels: int = DETECT_MAX_PIXELS):
        if min_face_size < 12:
            raise ValueError(f"min_face_size must be >= 12 (MTCNN's PNet window), got {min_face_size}")
        if detect_max_pixels < 256 * 256:
            raise ValueError(f"detect_max_pixels must be >= 65536 (a 256x256 image), got {detect_max_pixels}")
        self.min_face_size = min_face_size
        self.pad_below = pad_below
        self.pad_fraction = pad_fraction
        self.thresholds = thresholds
        self.detect_max_pixels = detect_max_pixels

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All faces: boxes [K,4] xyxy, scores [K], landmarks [K,5,2] (template order), in the input image's
        pixels (a photo above detect_max_pixels is detected on a downscaled copy)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected uint8 RGB [H,W,3], got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        scale_x = scale_y = 1.0  # detection copy pixels per input pixel
        if h * w > self.detect_max_pixels:
            f = math.sqrt(self.detect_max_pixels / (h * w))
            size = (max(1, int(w * f)), max(1, int(h * f)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            scale_x, scale_y = size[0] / w, size[1] / h
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
        if scale_x != 1.0:  # back from the downscaled copy to the input's pixels
            boxes = (boxes / np.float32([scale_x, scale_y, scale_x, scale_y])).astype(np.float32)
            marks = (marks / np.float32([scale_x, scale_y])).astype(np.float32)
        return boxes, scores, marks

    def align(self, image_rgb: np.ndarray) -> AlignResult:
        """Detect the faces in one photo, keep one (`pick_face`: largest and most central) and warp it to the
        ArcFace 112x112 template with a 5-point similarity transform (`warp_to_template`).

        Args:
          image_rgb: uint8 RGB [H, W, 3], pixels 0..255 (as `images.read_image_rgb` returns it).
        Returns an AlignResult: `crop` uint8 RGB [112, 112, 3], `landmarks` [5, 2] float32 and `box` [x1, y1,
        x2, y2] float32 in the input's pixels, `num_faces` found. No face: crop, landmarks and box are None and
        `reason` says why (never an exception for a photo without a face).
        Raises ValueError when image_rgb is not uint8 [H, W, 3] (from `detect`).
        Source: MTCNN (Zhang et al., 2016; the `mtcnn` package) and the ArcFace template (InsightFace).
        """
        boxes, _, marks = self.detect(image_rgb)
        if len(boxes) == 0:
            return AlignResult(None, f"no face found (MTCNN, min_face_size={self.min_face_size})", None, None, 0)
        k = pick_face(boxes, image_rgb.shape) if len(boxes) > 1 else 0
        crop = warp_to_template(image_rgb, marks[k])
        return AlignResult(crop, None, marks[k], boxes[k], len(boxes))
