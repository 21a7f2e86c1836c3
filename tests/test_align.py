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
    p.write_bytes(png_header_only(8000, 6000))  # 48 Mpx: under PIL's own bomb limit, over ours
    with pytest.raises(ImageError, match="too large: 8000x6000 = 48000000 pixels > max_pixels=40000000"):
        load_image_rgb(p)
    with pytest.raises(ImageError, match="max_pixels=100"):
        decode_image_rgb(cv2.imencode(".png", _face_like())[1].tobytes(), "x.png", max_pixels=100)


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


def test_several_faces_keeps_largest_central(aligner, lfw_dir):
    a = load_image_rgb(lfw_dir / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg")
    b = load_image_rgb(lfw_dir / "AJ_Cook" / "AJ_Cook_0001.jpg")
    photo = np.full((400, 600, 3), 90, np.uint8)
    photo[20:132, 20:132] = a  # small, in a corner
    photo[100:324, 200:424] = cv2.resize(b, (224, 224))  # big, central
    res = aligner.align(photo)
    assert res.num_faces >= 2
    assert 180 < res.box[0] < 280, res.box  # the big central face was kept
