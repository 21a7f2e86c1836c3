"""Alignment: the similarity transform, the image loader's bad-input policy, MTCNN on real faces."""
import io

import cv2
import numpy as np
import pytest

from conftest import png_header_only

from mobiface_tf.align import (ARCFACE_TEMPLATE, FaceAligner, ImageError, decode_image_rgb, load_image_rgb,
                               pick_face, similarity_transform, warp_to_template)


# ----------------------------------------------------------------------------------------------- geometry
def _apply(m, pts):
    return pts @ m[:, :2].T + m[:, 2]


def test_similarity_recovers_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2)).astype(np.float32)
    a, s, t = 0.4, 1.7, np.array([12.0, -30.0])
    m_true = np.array([[s * np.cos(a), -s * np.sin(a), t[0]], [s * np.sin(a), s * np.cos(a), t[1]]])
    dst = _apply(m_true, src)
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m, m_true, atol=1e-3)


def test_similarity_never_reflects():
    src = ARCFACE_TEMPLATE.copy()
    mirrored = src * [-1, 1]  # a mirror image: the best similarity must still be a proper rotation
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_similarity_least_squares_with_noise():
    rng = np.random.default_rng(1)
    noisy = ARCFACE_TEMPLATE * 2 + 5 + rng.normal(0, 0.5, (5, 2))
    m = similarity_transform(noisy, ARCFACE_TEMPLATE)
    assert np.abs(_apply(m, noisy) - ARCFACE_TEMPLATE).max() < 1.0
    with pytest.raises(ValueError, match="point sets"):
        similarity_transform(np.zeros((5, 2)), np.zeros((4, 2)))


def test_warp_puts_landmarks_on_template():
    # Draw 5 dots at known places in a 300x200 image; after the warp they sit on the template.
    img = np.zeros((200, 300, 3), np.uint8)
    marks = ARCFACE_TEMPLATE * 1.5 + [80, 20]
    for x, y in marks:
        cv2.circle(img, (int(round(x)), int(round(y))), 2, (255, 255, 255), -1)
    crop = warp_to_template(img, marks)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    for x, y in ARCFACE_TEMPLATE:
        assert crop[int(round(y)), int(round(x))].max() > 100


def test_pick_face_prefers_large_and_central():
    shape = (400, 400, 3)
    big_central = [150, 150, 250, 250]
    small_central = [185, 185, 215, 215]
    big_corner = [0, 0, 110, 110]
    assert pick_face(np.array([small_central, big_central], np.float32), shape) == 1
    assert pick_face(np.array([big_corner, big_central], np.float32), shape) == 1


# ----------------------------------------------------------------------------------------------- loader
def _face_like(h=120, w=100):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_load_valid_jpeg_png_bmp_webp(tmp_path):
    img = _face_like()
    for ext in (".png", ".bmp", ".webp", ".jpg"):
        p = tmp_path / f"a{ext}"
        cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp"
                    else [])
        out = load_image_rgb(p)
        assert out.shape == img.shape and out.dtype == np.uint8
        if ext != ".jpg":  # lossless formats come back exactly, in RGB order
            np.testing.assert_array_equal(out, img)


def test_zero_byte(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="zero-byte"):
        load_image_rgb(p)


def test_truncated_jpeg(tmp_path):
    ok, buf = cv2.imencode(".jpg", _face_like())
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(ImageError, match="truncated JPEG"):
        load_image_rgb(p)


def test_truncated_png(tmp_path):
    ok, buf = cv2.imencode(".png", _face_like())
    p = tmp_path / "cut.png"
    p.write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(ImageError, match="cut.png"):
        load_image_rgb(p)


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("these are my holiday notes, not a photo\n" * 10)
    with pytest.raises(ImageError, match="not an image"):
        load_image_rgb(p)


def test_png_with_alpha_is_composited(tmp_path):
    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., 0] = 200  # blue in BGR(A)
    rgba[:, :25, 3] = 255  # left half opaque, right half transparent
    p = tmp_path / "alpha.png"
    cv2.imwrite(str(p), rgba)
    out = load_image_rgb(p)
    assert out.shape == (40, 50, 3)
    assert out[0, 0].tolist() == [0, 0, 200]  # opaque blue, now RGB
    assert out[0, 49].tolist() == [0, 0, 0]  # transparent -> black


def test_16bit_png(tmp_path):
    img16 = (np.arange(30 * 40 * 3).reshape(30, 40, 3) * 17 % 65536).astype(np.uint16)
    p = tmp_path / "deep.png"
    cv2.imwrite(str(p), img16)
    out = load_image_rgb(p)
    assert out.dtype == np.uint8 and out.shape == (30, 40, 3)
    np.testing.assert_array_equal(out, (img16 >> 8).astype(np.uint8)[..., ::-1])


def test_grayscale_pgm(tmp_path):
    gray = np.tile(np.arange(92, dtype=np.uint8), (112, 1))
    p = tmp_path / "face.pgm"
    cv2.imwrite(str(p), gray)
    out = load_image_rgb(p)
    assert out.shape == (112, 92, 3)
    np.testing.assert_array_equal(out[..., 0], gray)
    np.testing.assert_array_equal(out[..., 2], gray)


def test_cmyk_jpeg(tmp_path):
    from PIL import Image
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[..., 0] = 220  # red
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, format="JPEG", quality=95)
    p = tmp_path / "cmyk.jpg"
    p.write_bytes(buf.getvalue())
    assert Image.open(p).mode == "CMYK"
    out = load_image_rgb(p)
    assert out.shape == (32, 48, 3)
    r, g, b = out[16, 24].astype(int)
    assert r > 150 and g < 80 and b < 80, out[16, 24]


def test_too_large_refused_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(png_header_only(100_000, 100_000))  # 10 gigapixels declared, a few bytes on disk
    with pytest.raises(ImageError, match="too large"):
        load_image_rgb(p)
    p.write_bytes(png_header_only(20_000, 12_000))  # 240 Mpx: over our limit, under Pillow's (raised to 2x ours)
    with pytest.raises(ImageError, match="too large: 20000x12000 = 240000000 pixels > 200000000, the limit that "
                                         "guards against decompression bombs; resize it below that: .*bomb.png"):
        load_image_rgb(p)
    with pytest.raises(ImageError, match="> 100, the limit"):
        decode_image_rgb(cv2.imencode(".png", _face_like())[1].tobytes(), "x.png", max_pixels=100)


def test_phone_photo_sizes_are_under_the_limit(tmp_path):
    """verify-50mp-photo-refused-unknown-flag: 48-50 Mpx and 200 Mpx phone photos pass the size check (only the
    missing pixel data of these header-only files stops them)."""
    p = tmp_path / "PXL_50MP.png"
    for w, h in ((8000, 6000), (8160, 6120), (16320, 12240)):
        p.write_bytes(png_header_only(w, h))
        with pytest.raises(ImageError, match="cannot decode PNG data") as err:
            load_image_rgb(p)
        assert "too large" not in str(err.value)


class _FakeMTCNN:
    """Stands in for MTCNN: records the image it is given and finds one face whose landmarks are `marks` (in the
    full photo's pixels) scaled to that image."""

    def __init__(self, marks, photo_shape):
        self.marks, self.photo_shape, self.seen = np.asarray(marks, np.float64), photo_shape, []

    def detect_faces(self, image, **kw):
        self.seen.append(image.shape)
        sy, sx = image.shape[0] / self.photo_shape[0], image.shape[1] / self.photo_shape[1]
        m = self.marks * [sx, sy]
        x1, y1 = m.min(0) - 20
        x2, y2 = m.max(0) + 20
        return np.array([[0, x1, y1, x2, y2, 0.99, *m[:, 0], *m[:, 1]]])


def test_large_photo_is_detected_downscaled_and_cropped_at_full_resolution(monkeypatch):
    """Detection of a photo above detect_max_pixels runs on a downscaled copy; its landmarks come back in the
    photo's pixels and the crop is warped from the full-resolution photo."""
    from mobiface_tf import align

    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    marks = ARCFACE_TEMPLATE * 9 + [1800, 1100]  # a face about 1000 px wide
    fake = _FakeMTCNN(marks, photo.shape)
    monkeypatch.setattr(align, "get_detector", lambda: fake)
    aligner = FaceAligner(detect_max_pixels=1_000_000)
    res = aligner.align(photo)
    (h, w, _), = fake.seen
    assert h * w <= 1_000_000 and abs(w / h - 4 / 3) < 0.01  # the copy MTCNN saw, aspect kept
    np.testing.assert_allclose(res.landmarks, marks, atol=0.01)  # back in the photo's pixels
    np.testing.assert_array_equal(res.crop, warp_to_template(photo, res.landmarks))  # from the full photo
    small = FaceAligner()  # a 12 Mpx photo and anything smaller: detected as it is
    small.align(photo)
    assert fake.seen[-1] == photo.shape
    with pytest.raises(ValueError, match="detect_max_pixels"):
        FaceAligner(detect_max_pixels=100)


def test_loader_and_bad_input_inside_detector_args():
    with pytest.raises(ValueError, match="min_face_size"):
        FaceAligner(min_face_size=5)
    with pytest.raises(ValueError, match="uint8 RGB"):
        FaceAligner().detect(np.zeros((10, 10), np.float32))


# ----------------------------------------------------------------------------------------------- MTCNN, real faces
@pytest.fixture(scope="module")
def aligner():
    return FaceAligner()


def test_no_face(aligner):
    flat = np.full((200, 200, 3), 128, np.uint8)
    res = aligner.align(flat)
    assert res.crop is None and res.num_faces == 0 and "no face" in res.reason


def test_lfw_crop_is_found_and_realigned(aligner, lfw_dir):
    img = load_image_rgb(lfw_dir / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg")
    res = aligner.align(img)
    assert res.crop is not None and res.crop.shape == (112, 112, 3)
    # The LFW crops use the SphereFace template (eyes near x=31 and x=64); after re-alignment, re-detection
    # finds the eyes on the ArcFace template.
    assert res.landmarks[0, 0] < 36 and res.landmarks[1, 0] < 70
    _, _, marks = aligner.detect(res.crop)
    assert np.abs(marks[0, :2] - ARCFACE_TEMPLATE[:2]).max() < 5


def test_photo_of_any_size(aligner, lfw_dir):
    # A face small in a big frame (an 800x600 "photo") is found, aligned, and the eyes land on the template.
    face = load_image_rgb(lfw_dir / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg")
    photo = np.full((600, 800, 3), 90, np.uint8)
    photo[300:412, 500:612] = face
    res = aligner.align(photo)
    assert res.crop is not None and 500 < res.box[0] < 560 and 300 < res.box[1] < 360
    _, _, marks = aligner.detect(res.crop)
    assert np.abs(marks[0, :2] - ARCFACE_TEMPLATE[:2]).max() < 5


@pytest.mark.slow
def test_50mp_phone_photo_is_read_and_its_face_found(aligner, lfw_dir, tmp_path):
    """verify-50mp-photo-refused-unknown-flag: an 8160x6120 (49.9 Mpx) phone photo is read, and MTCNN finds the
    face on a downscaled copy; the crop, warped from the full photo, has its eyes on the template."""
    face = load_image_rgb(lfw_dir / "Colin_Powell" / "Colin_Powell_0001.jpg")
    photo = np.full((6120, 8160, 3), (118, 118, 110), np.uint8)
    photo[1860:4260, 2880:5280] = cv2.resize(face, (2400, 2400), interpolation=cv2.INTER_CUBIC)
    p = tmp_path / "PXL_20240601_50MP.jpg"
    assert cv2.imwrite(str(p), photo[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 80])
    img = load_image_rgb(p)
    assert img.shape == (6120, 8160, 3)
    res = aligner.align(img)
    assert res.crop is not None, res.reason
    x1, y1, x2, y2 = res.box  # the pasted face (2400 px square at 2880, 1860), in the photo's pixels
    assert 2880 < (x1 + x2) / 2 < 5280 and 1860 < (y1 + y2) / 2 < 4260 and 700 < x2 - x1 < 2900, res.box
    _, _, marks = aligner.detect(res.crop)
    assert np.abs(marks[0, :2] - ARCFACE_TEMPLATE[:2]).max() < 5


def test_several_faces_keeps_largest_central(aligner, lfw_dir):
    a = load_image_rgb(lfw_dir / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg")
    b = load_image_rgb(lfw_dir / "AJ_Cook" / "AJ_Cook_0001.jpg")
    photo = np.full((400, 600, 3), 90, np.uint8)
    photo[20:132, 20:132] = a  # small, in a corner
    photo[100:324, 200:424] = cv2.resize(b, (224, 224))  # big, central
    res = aligner.align(photo)
    assert res.num_faces >= 2
    assert 180 < res.box[0] < 280, res.box  # the big central face was kept
