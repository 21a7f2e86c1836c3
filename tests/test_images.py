"""The image module: EXIF orientation (all eight), mode conversion, hidden-entry and sub-folder listing rules,
and the same upright pixels in every reader (prepare, verify, identify, evaluate --realign, export)."""
import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import person

from mobiface_tf.identity_folders import find_image, list_identity_tree
from mobiface_tf.images import (IMAGE_EXTENSIONS, ImageError, decode_image_rgb, image_header, image_reason, image_size,
                                list_images, load_image_rgb, significant_bits)

from conftest import REPO  # noqa: E402  (the repo root, one definition for every test file)
CASES = (REPO / ".." / "shared" / "cases").resolve()


def case(*parts) -> Path:
    path = CASES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"failing-input cases not found at {path} (../shared/cases is only present on project machines)")
    return path


# ----------------------------------------------------------------------------------------------- EXIF
def _upright(h=30, w=44):
    """An image no flip or rotation maps onto itself (gradients along x and y, a marked corner); smooth, so a JPEG
    of it stays close."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 127 // (w + h)], axis=-1).astype(np.uint8)
    img[:6, :8] = (255, 255, 255)
    return img


# How a camera stores the upright image u for each EXIF Orientation value (TIFF 6.0 / EXIF 2.3: the tag says where
# row 0 and column 0 of the stored image belong). A viewer undoes it; the decoder must too.
STORED = {
    1: lambda u: u,
    2: lambda u: u[:, ::-1],                      # mirrored left-right
    3: lambda u: u[::-1, ::-1],                   # rotated 180
    4: lambda u: u[::-1],                         # mirrored top-bottom
    5: lambda u: u.transpose(1, 0, 2),            # mirrored along the main diagonal
    6: lambda u: np.rot90(u, 1),                  # stored 90 degrees counter-clockwise: view rotates clockwise
    7: lambda u: np.rot90(u, 2).transpose(1, 0, 2),  # mirrored along the anti-diagonal
    8: lambda u: np.rot90(u, -1),                 # stored 90 degrees clockwise: view rotates counter-clockwise
}


def _encode(pixels, orientation, fmt="PNG", **kw):
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format=fmt, exif=exif.tobytes(), **kw)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_decodes_upright(orientation, tmp_path):
    up = _upright()
    data = _encode(STORED[orientation](up), orientation)  # PNG: lossless, so exact
    assert image_header(data).orientation == orientation
    assert image_size(data)[:2] == (44, 30)  # the header reports the upright size
    np.testing.assert_array_equal(decode_image_rgb(data), up)
    # The same through a file, in JPEG (lossy: compare loosely).
    p = tmp_path / f"o{orientation}.jpg"
    p.write_bytes(_encode(STORED[orientation](up), orientation, "JPEG", quality=98))
    got = load_image_rgb(p)
    assert got.shape == up.shape
    assert np.abs(got.astype(int) - up).mean() < 3


def test_invalid_or_broken_orientation_is_ignored():
    up = _upright()
    for value in (0, 9, 65535):
        np.testing.assert_array_equal(decode_image_rgb(_encode(up, value)), up)


def test_max_pixels_uses_the_header_before_decoding():
    data = _encode(STORED[6](_upright()), 6)
    with pytest.raises(ImageError, match="too large: 44x30 = 1320 pixels > 1000, the limit"):
        decode_image_rgb(data, "x.png", max_pixels=1000)


@pytest.mark.shared_data
def test_phone_portrait_case_is_upright():
    d = case("exif-orientation")
    upright = load_image_rgb(d / "face_upright.jpg")
    rotated = load_image_rgb(d / "face_exif6.jpg")  # stored sideways with Orientation 6
    assert rotated.shape == upright.shape == (300, 400, 3)
    assert np.abs(rotated.astype(int) - upright).mean() < 4
    assert load_image_rgb(d / "synthetic_exif6.jpg").shape == (300, 400, 3)


# ----------------------------------------------------------------------------------------------- modes
def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_palette_grey_alpha_and_16bit_grey():
    rgb = _upright()
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    np.testing.assert_array_equal(decode_image_rgb(_png(pal)), np.asarray(pal.convert("RGB")))
    pal.info["transparency"] = 0  # palette entry 0 transparent: composited on black
    out = decode_image_rgb(_png(pal))
    assert (out[np.asarray(pal) == 0] == 0).all()
    grey_alpha = Image.fromarray(np.dstack([rgb[..., 0], np.full(rgb.shape[:2], 128, np.uint8)]), "LA")
    out = decode_image_rgb(_png(grey_alpha))
    np.testing.assert_array_equal(out[..., 1], (rgb[..., 0].astype(np.float32) * 128 / 255 + 0.5).astype(np.uint8))
    g16 = (np.arange(30 * 40).reshape(30, 40) * 53 % 65536).astype(np.uint16)
    for ext in (".png", ".pgm"):
        out = decode_image_rgb(cv2.imencode(ext, g16)[1].tobytes())
        np.testing.assert_array_equal(out[..., 2], (g16 >> 8).astype(np.uint8))  # top 8 bits, never clipped
    bilevel = Image.fromarray(rgb[..., 0] > 127)
    assert decode_image_rgb(_png(bilevel)).shape == (30, 44, 3)


# ----------------------------------------------------------------------------------------------- 16-bit range
# png16-12bit-data-decoded-black: machine-vision, NIR and thermal cameras save 10-14-bit frames as 16-bit PNG/TIFF
# with the values in the low bits. Read by their top 8 of 16 bits they were near-black (12-bit data: 0..15).
def _chunk(kind: bytes, payload: bytes) -> bytes:
    import struct
    import zlib
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png16(pixels: np.ndarray, sbit=None) -> bytes:
    """A 16-bit PNG of uint16 [H, W] or [H, W, C] (C = 2 is grey + alpha, which OpenCV cannot write), filter 0,
    with an sBIT chunk when given."""
    import struct
    import zlib
    a = np.asarray(pixels, np.uint16)
    a = a[..., None] if a.ndim == 2 else a
    h, w, c = a.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in a)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + (_chunk(b"sBIT", bytes(sbit)) if sbit else b"")
            + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b""))


def _tiff16_premultiplied(pixels: np.ndarray) -> bytes:
    """An uncompressed little-endian 16-bit RGBA TIFF with associated (premultiplied) alpha: ExtraSamples = 1."""
    import struct
    h, w, _ = pixels.shape
    data = np.asarray(pixels, "<u2").tobytes()
    tags = [(256, [w]), (257, [h]), (258, [16] * 4), (259, [1]), (262, [2]), (273, [0]), (277, [4]), (278, [h]),
            (279, [len(data)]), (284, [1]), (338, [1])]
    ifd_end = 8 + 2 + 12 * len(tags) + 4
    bps_at, data_at = ifd_end, ifd_end + 8  # BitsPerSample's 4 values do not fit in its entry
    entries = b""
    for tag, vals in tags:
        value = {258: struct.pack("<I", bps_at), 273: struct.pack("<I", data_at), 279: struct.pack("<I", vals[0])}.get(
            tag, struct.pack("<H", vals[0]) + b"\0\0")
        entries += struct.pack("<HHI", tag, 4 if tag in (273, 279) else 3, len(vals)) + value
    return (b"II" + struct.pack("<HI", 42, 8) + struct.pack("<H", len(tags)) + entries + b"\0" * 4
            + struct.pack("<4H", 16, 16, 16, 16) + data)


def _to_bits(image8: np.ndarray, bits: int) -> np.ndarray:
    """8-bit pixels as a `bits`-bit camera gives them: 0..255 stretched to 0..2**bits - 1 (make_png16.py)."""
    top = (1 << bits) - 1
    return ((image8.astype(np.int64) * top + 127) // 255).astype(np.uint16)


def test_significant_bits_is_the_one_rule():
    assert [significant_bits(p) for p in (0, 255, 256, 1023, 1024, 4095, 4096, 16383, 16384, 65535)] == [
        8, 8, 10, 10, 12, 12, 14, 14, 16, 16]
    assert significant_bits(900, declared=12) == 12   # a dark 12-bit frame (PNG sBIT / TIFF BitsPerSample)
    assert significant_bits(60000, declared=12) == 16  # sBIT data scaled to 16 bits, as the PNG standard says
    assert significant_bits(900, declared=16) == 10   # "16 of 16 bits" says nothing


def _cv2_write(ext):
    def write(path, pixels, top):  # OpenCV: BGR(A) order, no sBIT chunk, as camera software writes these files
        path = path.with_suffix(ext)
        order = {3: [2, 1, 0], 4: [2, 1, 0, 3]}.get(pixels.shape[-1] if pixels.ndim == 3 else 1)
        assert cv2.imwrite(str(path), pixels[..., order] if order else pixels)
        return path
    return write


def _opaque(pixels, top):
    """Grey or RGB uint16 pixels with an alpha channel, opaque at the data's own depth (top = 2**bits - 1)."""
    return np.dstack([pixels, np.full(pixels.shape[:2], top, np.uint16)])


def _png16_file(path, pixels, top):
    path = path.with_suffix(".png")
    path.write_bytes(_png16(pixels))
    return path


# How a camera or OpenCV stores uint16 samples: grey or RGB, and a writer(path, pixels, full-scale value) -> path.
WRITERS = {
    "png grey": ("grey", _cv2_write(".png")),
    "png rgb": ("rgb", _cv2_write(".png")),
    "png rgba": ("rgb", lambda path, a, top: _cv2_write(".png")(path, _opaque(a, top), top)),
    "png grey+alpha": ("grey", lambda path, a, top: _png16_file(path, _opaque(a, top), top)),  # OpenCV cannot
    "tiff grey": ("grey", _cv2_write(".tif")),
    "tiff rgb": ("rgb", _cv2_write(".tif")),
    "pgm grey": ("grey", _cv2_write(".pgm")),
    "ppm rgb": ("rgb", _cv2_write(".ppm")),
}


@pytest.mark.parametrize("bits", [10, 12])
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_16bit_file_of_10_or_12_bit_data_decodes_like_the_8bit_face(bits, writer, lfw_dir, tmp_path):
    """A real face, stored as 10- or 12-bit data in a 16-bit PNG/TIFF/PGM/PPM (grey, RGB, with alpha), decodes
    to the 8-bit face it came from (within 1 level), not to a near-black image."""
    face = load_image_rgb(lfw_dir / "Colin_Powell" / "Colin_Powell_0001.jpg")
    kind, write = WRITERS[writer]
    original = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY) if kind == "grey" else face
    path = write(tmp_path / f"frame{bits}", _to_bits(original, bits), (1 << bits) - 1)
    out = load_image_rgb(path)
    want = np.dstack([original] * 3) if kind == "grey" else original
    assert out.shape == want.shape
    assert np.abs(out.astype(int) - want).max() <= 1, (writer, bits, out.mean(), want.mean())


def test_true_16bit_data_keeps_its_top_byte():
    """Data that uses all 16 bits keeps its top byte, grey, RGB and alpha, as 16-bit PNG and TIFF did before the
    rule (a 16-bit PPM was rounded by Pillow, at most 1 level away; now it follows the one rule too)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 65536, (20, 30, 3)).astype(np.uint16)
    rgb[0, 0, 0] = 65535
    np.testing.assert_array_equal(decode_image_rgb(_png16(rgb)), (rgb >> 8).astype(np.uint8))
    np.testing.assert_array_equal(decode_image_rgb(_png16(rgb[..., 1])), np.dstack([rgb[..., 1] >> 8] * 3))
    opaque = np.dstack([rgb, np.full(rgb.shape[:2], 65535, np.uint16)])
    np.testing.assert_array_equal(decode_image_rgb(_png16(opaque)), (rgb >> 8).astype(np.uint8))
    ppm = b"P6\n30 20\n65535\n" + rgb.astype(">u2").tobytes()
    np.testing.assert_array_equal(decode_image_rgb(ppm), (rgb >> 8).astype(np.uint8))


def test_sbit_says_how_many_bits_dark_data_has():
    """12-bit data that stays below 1024 would pass for 10-bit data; an sBIT chunk of 12 says otherwise."""
    dark = np.tile(np.arange(0, 1000, 10, dtype=np.uint16), (8, 1))
    np.testing.assert_array_equal(decode_image_rgb(_png16(dark, sbit=[12]))[..., 0], dark >> 4)
    np.testing.assert_array_equal(decode_image_rgb(_png16(dark))[..., 0], dark >> 2)
    scaled = dark * 64  # sBIT with the data scaled to 16 bits, as the PNG standard writes it: the top byte
    np.testing.assert_array_equal(decode_image_rgb(_png16(scaled, sbit=[10]))[..., 0], scaled >> 8)


def test_16bit_image_that_cannot_be_scaled_is_refused_not_black():
    """Premultiplied 16-bit alpha has no byte-exact low half in Pillow: 12-bit data there is refused in one line."""
    pixels = _to_bits(np.dstack([_upright(), np.full((30, 44), 255, np.uint8)]), 12)
    with pytest.raises(ImageError, match=r"16-bit image \(RGBa;16L\) whose data uses at most 12 of its 16 bits.*"
                                         r"convert it to 8-bit with its range stretched: cam.tif"):
        decode_image_rgb(_tiff16_premultiplied(pixels), "cam.tif")


@pytest.mark.shared_data
def test_png16_12bit_case_decodes_like_its_8bit_version():
    """The case's two 12-bit grey PNGs decode to the 8-bit crops they were made from, not to 0..15."""
    d = case("png16-12bit-data-decoded-black")
    for name in ("colin_powell_12bit.png", "serena_williams_12bit.png"):
        raw = cv2.imread(str(d / name), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint16 and raw.max() < 4096
        raw = raw.astype(np.int64)
        out = load_image_rgb(d / name)
        assert np.abs(out[..., 0].astype(int) - (raw * 255 + 2047) // 4095).max() <= 1
        assert out.max() > 200  # was 15


# ----------------------------------------------------------------------------------------------- listing
def _touch(path: Path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_identity_tree_hidden_entries_subfolders_and_strays(tmp_path):
    for rel in ["bob/1.jpg", "bob/2019/holiday/3.PNG", "bob/2.webp", "alice/a.JPEG", "alice/notes.txt",
                "alice/.DS_Store", "alice/._a.JPEG", "alice/.thumbs/t.jpg", "alice/__MACOSX/a.jpg",
                ".ipynb_checkpoints/0000-checkpoint.jpg", "__MACOSX/bob/._1.jpg", ".git/HEAD", "stray.jpg",
                "SYNTHETIC.txt", "empty_id/readme.md", "$RECYCLE.BIN/x.jpg", "@eaDir/x.jpg"]:
        _touch(tmp_path / rel)
    ids, skipped = list_identity_tree(tmp_path)
    assert [(n, [p.relative_to(tmp_path).as_posix() for p in f]) for n, f in ids] == [
        ("alice", ["alice/a.JPEG"]), ("bob", ["bob/1.jpg", "bob/2.webp", "bob/2019/holiday/3.PNG"])]
    reasons = {p.relative_to(tmp_path).as_posix(): r for p, r in skipped}
    assert set(reasons) == {"alice/notes.txt", "alice/.DS_Store", "alice/._a.JPEG", "alice/.thumbs", "alice/__MACOSX",
                            ".ipynb_checkpoints", "__MACOSX", ".git", "stray.jpg", "empty_id/readme.md",
                            "$RECYCLE.BIN", "@eaDir"}
    assert "hidden" in reasons[".ipynb_checkpoints"] and "not an identity" in reasons[".ipynb_checkpoints"]
    assert "litter" in reasons["__MACOSX"] and "hidden" in reasons["alice/._a.JPEG"]
    assert "not an image Pillow can read (extension .txt)" in reasons["alice/notes.txt"]
    assert "not inside an identity folder" in reasons["stray.jpg"]
    files, left_out = list_images(tmp_path / "alice")
    assert [f.name for f in files] == ["a.JPEG"] and len(left_out) == 5


# One rule for what is a photo (identify-drops-avif-jfif-photos): Pillow reads it, or it is skipped with a reason.
PILLOW_FORMATS = [".avif", ".jfif", ".webp", ".tif", ".gif", ".jpe", ".JFIF"]


@pytest.mark.parametrize("ext", PILLOW_FORMATS)
def test_every_format_pillow_reads_is_a_photo(ext, tmp_path):
    """.avif / .jfif / .webp / .tif / .gif photos are listed and decode to the picture (verify already read them)."""
    face = person(3, 1)
    path = tmp_path / "Serena" / f"photo{ext}"
    path.parent.mkdir()
    Image.fromarray(face).save(path, format={".jfif": "JPEG", ".jpe": "JPEG"}.get(ext.lower()))
    ids, skipped = list_identity_tree(tmp_path)
    assert ids == [("Serena", [path])] and skipped == []
    assert image_reason(path) is None
    decoded = load_image_rgb(path)
    assert decoded.shape == face.shape
    assert np.abs(decoded.astype(int) - face).mean() < 25  # lossy (AVIF, JPEG) or 256-colour (GIF) copies


def test_heic_without_plugin_and_other_files_are_skipped_with_their_reason(tmp_path):
    """A .heic (iPhone) names the plugin to install; a JPEG saved without an extension is read by its content;
    text is not an image. Whatever is left out is in `skipped` with its reason: nothing vanishes silently."""
    try:
        import pillow_heif  # noqa: F401
        has_heif = True
    except ImportError:
        has_heif = False
    buf = io.BytesIO()
    Image.fromarray(person(1, 0)).save(buf, "JPEG")
    (tmp_path / "bob").mkdir()
    (tmp_path / "bob" / "IMG_0001").write_bytes(buf.getvalue())          # no extension: Pillow identifies it
    (tmp_path / "bob" / "a.jpg_large").write_bytes(buf.getvalue())      # a browser's name for a JPEG
    (tmp_path / "bob" / "notes.txt").write_text("not a photo")
    (tmp_path / "bob" / "phone.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    ids, skipped = list_identity_tree(tmp_path)
    assert [p.name for p in ids[0][1]] == (["IMG_0001", "a.jpg_large", "phone.HEIC"] if has_heif else
                                           ["IMG_0001", "a.jpg_large"])
    reasons = {p.name: r for p, r in skipped}
    assert "not an image Pillow can read (extension .txt)" in reasons["notes.txt"]
    if not has_heif:
        assert "pip install pillow-heif" in reasons["phone.HEIC"]
        with pytest.raises(ImageError, match="pip install pillow-heif"):  # as a verify / identify query too
            load_image_rgb(tmp_path / "bob" / "phone.HEIC")
    assert load_image_rgb(tmp_path / "bob" / "IMG_0001").shape == (112, 112, 3)


def test_nfc_and_nfd_folders_are_one_identity(tmp_path):
    """macOS writes folder names decomposed (NFD): 'Renée' in NFC and NFD is one identity, and the merge is said."""
    import unicodedata

    nfc = unicodedata.normalize("NFC", "Renée_Williams")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    for folder, shot in ((nfc, 0), (nfc, 1), (nfd, 2), ("Tony", 0)):
        _touch(tmp_path / folder / f"{shot}.jpg")
    merges = []
    ids, skipped = list_identity_tree(tmp_path, on_merge=lambda name, folders: merges.append((name, folders)))
    assert [(n, len(f)) for n, f in ids] == [(nfc, 3), ("Tony", 1)] and skipped == []
    assert merges == [(nfc, sorted([nfc, nfd]))]


def test_case_and_space_variants_of_one_name_are_one_identity(tmp_path):
    """prepare-case-variant-folders-two-classes: folder names equal under the name rule of --exclude_names
    (`Colin_Powell` / `colin_powell`, `Tony Blair` / `Tony_Blair`) are one identity, and the merge names both."""
    for rel in ["Colin_Powell/1.jpg", "Colin_Powell/2.jpg", "colin_powell/5.jpg", "Tony Blair/1.jpg",
                "Tony_Blair/2.jpg", "Serena/1.jpg", "Jay-Z/1.jpg", "Jay Z/1.jpg"]:
        _touch(tmp_path / rel)
    merges = []
    ids, skipped = list_identity_tree(tmp_path, on_merge=lambda name, folders: merges.append((name, folders)))
    assert [(n, [p.relative_to(tmp_path).as_posix() for p in f]) for n, f in ids] == [
        ("Colin_Powell", ["Colin_Powell/1.jpg", "Colin_Powell/2.jpg", "colin_powell/5.jpg"]),
        ("Jay Z", ["Jay Z/1.jpg"]), ("Jay-Z", ["Jay-Z/1.jpg"]),  # punctuation distinguishes names (people.py)
        ("Serena", ["Serena/1.jpg"]),
        ("Tony Blair", ["Tony Blair/1.jpg", "Tony_Blair/2.jpg"])]
    assert merges == [("Colin_Powell", ["Colin_Powell", "colin_powell"]), ("Tony Blair", ["Tony Blair", "Tony_Blair"])]
    assert skipped == []
    from mobiface_tf.identity_folders import merge_message

    line = merge_message(*merges[0])
    assert "'Colin_Powell' and 'colin_powell'" in line and "merged into one identity" in line


def _symlink(target, link: Path):
    try:
        os.symlink(target, link)
    except (OSError, NotImplementedError) as e:  # Windows without the privilege
        pytest.skip(f"cannot make symlinks here: {e}")


def test_symlink_back_to_the_root_is_skipped_with_its_reason(tmp_path):
    """prepare-symlink-loop-duplicates-classes: a link back up the tree (`Tony/all -> ..`) is not followed, so no
    identity gets other people's photos; it is skipped with its reason, and so are links that loop, lead nowhere
    or lead into another identity. A folder outside the tree is followed, once even when two links reach it."""
    root = tmp_path / "photos"
    for rel in ["Colin/1.jpg", "Serena/1.jpg", "Tony/1.jpg", "Tony/2019/2.jpg"]:
        _touch(root / rel)
    _touch(tmp_path / "outside" / "o.jpg")
    _symlink("..", root / "Tony" / "all")                 # back to the root
    _symlink("../..", root / "Tony" / "2019" / "up")      # to an ancestor of the folder listed
    _symlink("../Serena", root / "Tony" / "serena")       # into another identity
    _symlink("self", root / "Colin" / "self")             # a link to itself
    _symlink("gone", root / "Colin" / "gone.jpg")         # leads nowhere
    _symlink(str(tmp_path / "outside"), root / "Colin" / "extra")  # outside the tree: followed
    _symlink(str(tmp_path / "outside"), root / "Serena" / "extra")  # ... once
    _symlink("Tony", root / "Alias")                      # an identity folder that is another identity's
    ids, skipped = list_identity_tree(root)
    assert [(n, [p.relative_to(root).as_posix() for p in f]) for n, f in ids] == [
        ("Colin", ["Colin/1.jpg", "Colin/extra/o.jpg"]), ("Serena", ["Serena/1.jpg"]),
        ("Tony", ["Tony/1.jpg", "Tony/2019/2.jpg"])]
    reasons = {p.relative_to(root).as_posix(): r for p, r in skipped}
    assert set(reasons) == {"Tony/all", "Tony/2019/up", "Tony/serena", "Colin/self", "Colin/gone.jpg",
                            "Serena/extra", "Alias"}
    assert "symlink to an ancestor folder" in reasons["Tony/all"] and "not followed" in reasons["Tony/all"]
    assert "symlink to an ancestor folder" in reasons["Tony/2019/up"]
    assert "another folder of the tree ('Serena')" in reasons["Tony/serena"]
    assert "another folder of the tree ('Tony')" in reasons["Alias"]
    assert "loops" in reasons["Colin/self"] and "broken symlink" in reasons["Colin/gone.jpg"]
    assert "already listed" in reasons["Serena/extra"]
    # An unlabelled tree (prepare --unlabelled lists the root with list_images) is not walked twice either.
    files, left_out = list_images(root)
    assert len(files) == len({os.path.realpath(p) for p in files}) == 5
    assert any(r.startswith("symlink to an ancestor folder") for _, r in left_out)


def _non_utf8_folder(parent: Path, raw: bytes) -> Path:
    """parent/<raw bytes>, a folder name that is not UTF-8 (skip where the file system refuses one: macOS APFS)."""
    path = os.path.join(os.fsencode(parent), raw)
    try:
        os.makedirs(path)
    except OSError as e:
        pytest.skip(f"this file system refuses a folder name that is not UTF-8: {e}")
    return Path(os.fsdecode(path))


def test_folder_name_not_utf8_is_read_and_named_escaped(tmp_path):
    """prepare-latin1-folder-name-aborts: a Latin-1 folder name (`Jos\\xe9_Maria`, from a zip made on Windows)
    is an identity; its photos are read by their real path, and its name is valid UTF-8 text, escaped."""
    import json

    folder = _non_utf8_folder(tmp_path, b"Jos\xe9_Maria")
    write_face = lambda p: Image.fromarray(person(1, 0)).save(p)  # noqa: E731
    write_face(folder / "a.png")
    _touch(tmp_path / "Tony" / "b.jpg")
    ids, skipped = list_identity_tree(tmp_path)
    assert [n for n, _ in ids] == ["Jos\\xe9_Maria", "Tony"] and skipped == []
    json.dumps([n for n, _ in ids], ensure_ascii=False).encode("utf-8")  # valid text: no surrogate escapes
    photo = ids[0][1][0]
    assert load_image_rgb(photo).shape == (112, 112, 3)  # opened by its real name
    from mobiface_tf.images import printable

    assert printable(photo.relative_to(tmp_path)) == "Jos\\xe9_Maria/a.png"
    assert printable(os.fsencode(photo)).endswith("Jos\\xe9_Maria/a.png")
    assert printable("Renée") == "Renée"  # valid text is unchanged
    with pytest.raises(ImageError, match=r"Jos\\xe9_Maria/missing\.png"):
        load_image_rgb(folder / "missing.png")


def test_find_image_every_extension_any_case(tmp_path):
    for i, ext in enumerate(IMAGE_EXTENSIONS):
        for name in (f"P_{i:04d}{ext}", f"Q_{i:04d}{ext.upper()}"):
            _touch(tmp_path / name)
        assert find_image(tmp_path, f"P_{i:04d}") == tmp_path / f"P_{i:04d}{ext}"
        assert find_image(tmp_path, f"Q_{i:04d}") == tmp_path / f"Q_{i:04d}{ext.upper()}"
    assert find_image(tmp_path, "missing") is None
    _touch(tmp_path / "R_0001.txt")
    assert find_image(tmp_path, "R_0001") is None


# ----------------------------------------------------------------------------------------------- every reader
def test_export_calibration_faces_are_upright(tmp_path):
    from mobiface_tf.export.faces import load_faces

    up = _upright(112, 112)
    (tmp_path / "faces").mkdir()
    for o in range(1, 9):
        (tmp_path / "faces" / f"{o}.png").write_bytes(_encode(STORED[o](up), o))
    (tmp_path / "faces" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "faces" / ".ipynb_checkpoints" / "9.png").write_bytes(b"not read")  # hidden: never a face
    faces = load_faces(tmp_path / "faces", limit=20)
    assert faces.shape == (8, 112, 112, 3)
    for f in faces:
        np.testing.assert_array_equal(f, up)


@pytest.fixture(scope="module")
def real(reference_tflite):
    from mobiface_tf.align import FaceAligner
    from mobiface_tf.faces import load_model

    return reference_tflite, load_model(reference_tflite), FaceAligner()


def _rotated_copies(src: Path, out: Path) -> list[Path]:
    """The photo stored as a camera would for each of the eight EXIF orientations (JPEG, quality 95)."""
    up = np.asarray(Image.open(src).convert("RGB"))
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for o in range(1, 9):
        p = out / f"face_o{o}.jpg"
        p.write_bytes(_encode(STORED[o](up), o, "JPEG", quality=95))
        paths.append(p)
    return paths


@pytest.mark.shared_data
def test_verify_identify_and_realign_read_every_orientation_upright(real, lfw_dir, tmp_path):
    """Real MTCNN and the reference TFLite: a sideways-stored photo answers as its upright original does."""
    from mobiface_tf import identify as ident
    from mobiface_tf.gallery import enroll, model_key
    from mobiface_tf import verify as ver
    from mobiface_tf.evaluate import embed_paths
    from mobiface_tf.faces import DEFAULT_THRESHOLD

    model, emb, aligner = real
    d = case("exif-orientation")
    upright = ver.verify(model, d / "face_upright.jpg", d / "face_b.jpg", embedder=emb, aligner=aligner)
    case6 = ver.verify(model, d / "face_exif6.jpg", d / "face_b.jpg", embedder=emb, aligner=aligner)
    assert upright.same and case6.same and case6.similarity == pytest.approx(upright.similarity, abs=0.03)
    rotated = _rotated_copies(d / "face_upright.jpg", tmp_path / "rot")
    for p in rotated:
        v = ver.verify(model, p, d / "face_b.jpg", embedder=emb, aligner=aligner)
        assert v.same and v.similarity == pytest.approx(upright.similarity, abs=0.05), (p.name, v.similarity)

    # identify: a rotated photo as a gallery photo and as a query.
    gallery = tmp_path / "gallery"
    (gallery / "subject").mkdir(parents=True)
    (gallery / "subject" / "portrait.jpg").write_bytes((d / "face_exif6.jpg").read_bytes())
    (gallery / "Tony_Blair").mkdir()
    (gallery / "Tony_Blair" / "1.jpg").write_bytes((lfw_dir / "Tony_Blair" / "Tony_Blair_0001.jpg").read_bytes())
    warnings = []
    g = enroll(gallery, emb, model_key(model, emb, aligned=False), aligner=aligner,
               warn=warnings.append)
    assert warnings == [] and sorted(g.names) == ["Tony_Blair", "subject"]
    results = ident.identify(g, emb, [d / "face_b.jpg", rotated[5], rotated[7]], 1, DEFAULT_THRESHOLD, aligner)
    assert [r.get("error") for r in results] == [None] * 3
    assert [r["identity"] for r in results] == ["subject"] * 3, results

    # evaluate --realign reads through the same decoder.
    e, failures = embed_paths(emb, [d / "face_upright.jpg", *rotated], flip=False, aligner=aligner, progress=False)
    assert failures == 0 and (e[1:] @ e[0]).min() > 0.9
