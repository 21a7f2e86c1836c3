"""Image files: which files are photos, how a folder tree is listed, and how one file is decoded.

The one owner of image listing and decoding. Every reader (prepare_data, verify, identify, evaluate, export,
bench) goes through it, so a rule holds everywhere or nowhere:

- What is a photo is decided by Pillow, in one place (`image_reason`): a file whose extension is one of the
  photo formats this Pillow build decodes (IMAGE_EXTENSIONS, any letter case: JPEG and its .jfif/.jpe names,
  PNG, BMP, PGM/PPM, WebP, TIFF, GIF, AVIF, JPEG 2000, and HEIC/HEIF once pillow-heif is installed), or a file
  with any other name whose header Pillow identifies (a JPEG saved without an extension). Everything else is
  skipped with its reason, and every caller counts and reports what it skipped. `.heic`/`.heif` without
  pillow-heif is skipped with "pip install pillow-heif".
- Hidden entries are never identities or photos: names starting with '.' (`.ipynb_checkpoints`, `.DS_Store`,
  macOS `._x.jpg` resource forks) and OS litter folders (`__MACOSX`, Windows `$RECYCLE.BIN`, Synology `@eaDir`).
- An identity is a folder directly under the root; photos in its sub-folders belong to it (that layout is
  listed by mobiface_tf.identity_folders, with these rules).
- Symlinks: a symlinked folder is followed once, unless it leads back up (to the folder being listed or one
  of its ancestors: a loop) or, in an identity tree, into another folder of the tree (its photos would be
  filed under two identities). Those, links that loop or lead nowhere, and a folder reached a second time
  through another link are skipped with their reason, so callers count them. Symlinked files are read.
- A file or folder name that is not UTF-8 (Latin-1 bytes from a zip made on Windows) is read as it is;
  wherever it is printed or stored as text it is shown escaped (`printable`: `Jos\\xe9_Maria`).
- Decoding checks the header first (size limit before any pixel is decoded), applies the EXIF Orientation tag
  (all eight values: phones store portrait photos sideways) and converts every mode to uint8 RGB: grey, 16-bit
  (scaled by the bits its data really uses, `significant_bits`), alpha (composited on black, the aligned crops'
  border colour), palette, CMYK.

Also the aligned-crop format (size and the ArcFace landmark template), which the data package needs without
pulling in the MTCNN aligner.
"""
from __future__ import annotations

import errno
import io
import os
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

# ----------------------------------------------------------------------------------------------- crop format
# The ArcFace / InsightFace 112x112 template, (x, y) for: left eye, right eye, nose tip, left and right mouth
# corner, where "left" means the image's left (smaller x). One source of truth for the whole project.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32)
CROP_SIZE = 112

# ----------------------------------------------------------------------------------------------- policy
# A guard against decompression bombs (a few KB that claim gigapixels), not a photo size: phones save 48-50 Mpx
# (8160x6120) and 200 Mpx (16320x12240 = 199.8 Mpx) photos. Detection runs on a downscaled copy of a large photo
# (mobiface_tf.align), so only the decode itself grows with the photo (3 bytes a pixel: 600 MB at this limit).
DEFAULT_MAX_PIXELS = 200_000_000
# Camera sensors of machine-vision, NIR and thermal cameras give 10, 12 or 14 bits and save their frames as 16-bit
# PNG or TIFF with the values in the low bits (OpenCV writes no sBIT chunk to say so). 16-bit data that never
# exceeds 2**b - 1 is read as b-bit data (8: 8-bit values widened into a 16-bit file); see significant_bits.
SAMPLE_BITS = (8, 10, 12, 14, 16)
# Photo formats, in the order find_image tries them. Those this Pillow build can decode are IMAGE_EXTENSIONS.
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".webp", ".jfif", ".jpe", ".tif", ".tiff",
                    ".gif", ".avif", ".heic", ".heif", ".jp2", ".pbm", ".pnm")
HEIF_EXTENSIONS = (".heic", ".heif")


def _decodable_extensions() -> tuple[str, ...]:
    """PHOTO_EXTENSIONS that Pillow (with pillow-heif when it is installed) registers a decoder for."""
    from PIL import Image
    try:  # an optional plugin: iPhones save HEIC; without it those photos are skipped with a clear reason
        import pillow_heif
        pillow_heif.register_heif_opener()
    except ImportError:
        pass
    Image.init()
    # Pillow refuses an image above 2 x MAX_IMAGE_PIXELS (179 Mpx by default) inside Image.open, before the
    # caller's max_pixels is checked; lift it to our limit (_open lifts it to a caller's higher one), so that ours
    # decides. Pillow still stops what claims 2x more: a header-only file of gigapixels.
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < DEFAULT_MAX_PIXELS:
        Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS
    registered = Image.registered_extensions()
    return tuple(e for e in PHOTO_EXTENSIONS if registered.get(e) in Image.OPEN)


IMAGE_EXTENSIONS = _decodable_extensions()
# Folders operating systems and tools leave in a tree; never identities, never photos.
LITTER_NAMES = frozenset({"__MACOSX", "$RECYCLE.BIN", "System Volume Information", "@eaDir", "Thumbs.db",
                          "desktop.ini"})
# A marker the synthetic-data writer puts at a tree's root; prepare_data reads it, so it is not an input.
MARKER_FILES = frozenset({"SYNTHETIC.txt"})

EXIF_ORIENTATION_TAG = 0x0112


class ImageError(ValueError):
    """A file that cannot be used as a face photo; str(err) is the one-line reason."""


class TooLargeError(ImageError):
    """An image above the caller's max_pixels. The message names no flag (this module has none); a command with a
    flag that raises the limit adds it with `advice`."""

    def __init__(self, width: int, height: int, limit: int, name: str, advice: str = "resize it below that"):
        self.width, self.height, self.limit, self.name = width, height, limit, name
        super().__init__(f"too large: {width}x{height} = {width * height} pixels > {limit}, the limit that guards "
                         f"against decompression bombs; {advice}: {name}")


class Skipped(NamedTuple):
    """An entry of a listed tree that is not used as a photo, and why."""
    path: Path
    reason: str


def printable(text) -> str:
    """A path or name as valid UTF-8 text: undecodable bytes of a file name written as `\\xNN` escapes.

    Python reads a file name that is not UTF-8 (`Jos\\xe9_Maria`, Latin-1 from a zip made on Windows) with
    surrogate escapes, which cannot be printed to a UTF-8 stream or encoded for a TFRecord. Every place that
    prints or stores a name as text (messages, manifest.json, the gallery index, class names) uses this form;
    the file itself is still opened by its real name. A name that is valid text is returned unchanged, so the
    function is idempotent. Accepts str, bytes or os.PathLike.
    """
    text = os.fspath(text)
    if isinstance(text, bytes):
        return text.decode("utf-8", "backslashreplace")
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is not a file-name escape
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def hidden_reason(name: str) -> str | None:
    """Why a file or folder name is hidden (never an identity or a photo), or None for a normal name."""
    if name.startswith("."):
        return "hidden (name starts with '.')"
    if name in LITTER_NAMES:
        return f"operating-system litter ({name})"
    return None


def is_image_name(name: str) -> bool:
    """True for a visible file name with a decodable photo extension (any case); see image_reason for files."""
    return hidden_reason(name) is None and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _pillow_identifies(path: Path) -> bool:
    """True when Pillow recognises the file's header as an image format it can decode (no pixel is decoded)."""
    from PIL import Image
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(f) as im:
                return im.format in Image.OPEN
    except Exception:  # noqa: BLE001 - any failure to identify means "not an image"
        return False


def image_reason(path) -> str | None:
    """The one rule of what is a photo: None for a file to read as one, else the one-line reason it is not.

    A photo is a visible file with an extension in IMAGE_EXTENSIONS (any case), or any other file whose header
    Pillow identifies as a format it decodes. HEIC/HEIF without pillow-heif, and a photo format this Pillow
    build lacks, get a reason that says what to install or convert. Whether the pixels decode is checked when
    the file is read (decode_image_rgb), and callers count those failures with their reasons too.
    """
    path = Path(path)
    why = hidden_reason(path.name)
    if why is not None:
        return f"{why} file, not read"
    ext = printable(path.suffix).lower()
    if ext in IMAGE_EXTENSIONS:
        return None
    if ext in HEIF_EXTENSIONS:
        return (f"HEIC/HEIF photo ({ext}): this Pillow cannot read it; pip install pillow-heif (then it is read) "
                "or convert it to JPEG")
    if ext in PHOTO_EXTENSIONS:
        return f"{ext} photo: this Pillow build has no decoder for it; convert it to JPEG or PNG"
    if _pillow_identifies(path):
        return None
    return f"not an image Pillow can read (extension {printable(path.suffix) or 'none'})"


def skipped_summary(skipped, root=None, limit: int = 3) -> str:
    """One line for a list of Skipped entries: how many, and the first `limit` with their reasons."""
    def name(p):
        return printable(Path(p).relative_to(root).as_posix() if root is not None else str(p))
    shown = "; ".join(f"{name(sk.path)}: {sk.reason}" for sk in skipped[:limit])
    return f"{len(skipped)} entries are not photos and were left out ({shown}{'; ...' if len(skipped) > limit else ''})"


def _is_within(path: str, folder: str) -> bool:
    """True when real path `path` is `folder` or lies under it (both from os.path.realpath)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _link_text(link: Path) -> str:
    """Where a symlink points, as written in it (printable)."""
    try:
        return printable(os.readlink(link))
    except OSError:
        return "?"


def symlink_reason(link: Path, current: str, root: str | None = None, identity: str | None = None) -> str | None:
    """Why the symlink `link` (in the folder whose real path is `current`) is not followed, or None to follow it.

    Not followed: a link that loops or leads nowhere; a link to `current` or to one of its ancestors (a loop:
    the walk would list the tree again, e.g. `Tony_Blair/all -> ..`); with `root` (the real path of an identity
    tree's root), a folder link into the tree outside `identity` (the real path of the identity folder being
    listed; None at the root: any folder of the tree), since its photos would be filed under two identities.
    Links to files and to folders outside the tree are followed.
    """
    try:
        os.stat(link)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink that loops (a link to itself or a chain back to it), not followed"
        return f"broken symlink (its target {_link_text(link)!r} does not exist), not followed"
    if not link.is_dir():
        return None
    target = os.path.realpath(link)
    if _is_within(current, target):
        return (f"symlink to an ancestor folder ({_link_text(link)!r}: a loop back up the tree), "
                "not followed")
    if root is not None and _is_within(target, root) and (identity is None or not _is_within(target, identity)):
        rel = os.path.relpath(target, root)
        return (f"symlink to another folder of the tree ({printable(rel)!r}), not followed: its photos belong to "
                "that folder's identity")
    return None


def list_images(folder, root=None, seen: set | None = None) -> tuple[list[Path], list[Skipped]]:
    """Every photo under `folder`, recursively, sorted by relative path; plus what was left out and why.

    Hidden files and folders (see hidden_reason) are left out whole: a hidden folder is one Skipped entry and is
    not walked. Files that are not photos by `image_reason` are Skipped with its reason. Symlinks follow
    `symlink_reason`: one that loops, leads nowhere or leads back up to an ancestor is Skipped with its reason,
    and so is a folder already listed through another link. `root`: the identity tree `folder` belongs to
    (mobiface_tf.identity_folders), so links into the tree's other identities are not followed either.
    `seen`: real paths of the folders listed so far, shared across the identities of one tree (a folder reached
    from two identities is listed once).
    Raises ValueError when `folder` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"not a directory: '{printable(folder)}'")
    images: list[Path] = []
    skipped: list[Skipped] = []
    seen = set() if seen is None else seen
    identity = os.path.realpath(folder)
    real_root = os.path.realpath(root) if root is not None else None

    def walk(d: Path):
        real = os.path.realpath(d)
        if real in seen:  # reached a second time (two links to one folder)
            skipped.append(Skipped(d, "folder already listed through another path (a symlink), not read again"))
            return
        seen.add(real)
        for entry in sorted(d.iterdir(), key=lambda p: p.name):
            why = hidden_reason(entry.name)
            is_dir = entry.is_dir()
            if why is not None:
                skipped.append(Skipped(entry, f"{why} {'folder' if is_dir else 'file'}, not read"))
                continue
            if entry.is_symlink() and (link_why := symlink_reason(entry, real, real_root, identity)) is not None:
                skipped.append(Skipped(entry, link_why))
            elif is_dir:
                walk(entry)
            elif (reason := image_reason(entry)) is None:
                images.append(entry)
            else:
                skipped.append(Skipped(entry, reason))

    walk(folder)
    return images, skipped


# ----------------------------------------------------------------------------------------------- decoding
class ImageHeader(NamedTuple):
    """What an image file's header says, read without decoding its pixels.

    width, height: upright pixels (EXIF orientation applied); format / mode: Pillow's names as stored;
    orientation: EXIF Orientation 1..8 (1 when absent or invalid).
    """

    width: int        # upright width in pixels, after the EXIF orientation is applied
    height: int       # upright height in pixels
    format: str       # Pillow format name: JPEG, PNG, ...
    mode: str         # Pillow mode as stored: RGB, L, I;16, RGBA, P, CMYK, ...
    orientation: int  # EXIF Orientation 1..8 (1 = stored upright, also when the tag is absent or invalid)


def _open(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS):
    from PIL import Image, UnidentifiedImageError
    if not data:
        raise ImageError(f"zero-byte file: {name}")
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels  # a caller's higher limit (prepare --max_pixels): ours decides
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own max_pixels check follows
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # Pillow's own guard, at 2 x the largest max_pixels used
        raise ImageError(f"too large ({e}); resize it: {name}") from None
    except UnidentifiedImageError:
        raise ImageError(f"not an image (unknown format): {name}") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL raises these on broken headers
        raise ImageError(f"unreadable image header ({e}): {name}") from None


def _png_chunk(data: bytes, kind: bytes, before_image: bool = False) -> bytes | None:
    """The payload of the first PNG chunk `kind` (b"sBIT", b"eXIf"), found by walking the chunk lengths (no
    pixel is decoded); None when absent, or, with before_image, when it is not before the image data."""
    pos = 8
    while pos + 8 <= len(data):
        length, found = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        if found == kind:
            return data[pos + 8:pos + 8 + length]
        if found == b"IEND" or (before_image and found == b"IDAT"):
            return None
        pos += 12 + length
    return None


def _orientation(im, data: bytes) -> int:
    try:
        if im.format == "PNG" and "exif" not in im.info:
            # An eXIf chunk after the image data: Pillow's getexif would decode every pixel to reach it.
            raw = _png_chunk(data, b"eXIf")
            if raw is None:
                return 1
            from PIL import Image
            exif = Image.Exif()
            exif.load(b"Exif\x00\x00" + raw)
        else:
            exif = im.getexif()
        value = exif.get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is ignored, as cameras and browsers do
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _header_of(im, data: bytes) -> ImageHeader:
    w, h = im.size
    o = _orientation(im, data)
    if o >= 5:  # 5..8 transpose or rotate by 90 degrees: the upright image has width and height swapped
        w, h = h, w
    return ImageHeader(w, h, im.format or "", im.mode, o)


def image_header(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Size (upright), format, mode and EXIF orientation from the header only: no pixel is decoded.

    Raises ImageError on zero-byte, unknown-format or broken-header data (and on more than max_pixels).
    """
    with _open(data, name, max_pixels) as im:
        return _header_of(im, data)


def image_size(data: bytes, name: str = "<bytes>") -> tuple[int, int, str, str]:
    """(width, height, format, mode) from the header only; width and height are upright (EXIF applied)."""
    return tuple(image_header(data, name)[:4])


def _jpeg_is_complete(data: bytes) -> bool:
    """True when the JPEG's end-of-image marker (FFD9) follows its first scan, wherever the file ends.

    Header segments (APPn, which may hold an EXIF thumbnail with its own FFD9) are skipped by their lengths up
    to the first start-of-scan (FFDA); in entropy-coded data an FF byte is always stuffed (FF00) or a restart
    marker, so the first FFD9 after it is the end of the image. Bytes after it (camera trailers, the video of
    a "motion photo") are allowed; a file cut before it is truncated.
    """
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:  # extraneous bytes between segments (libjpeg tolerates them): any EOI after
            return data.find(b"\xff\xd9", pos) >= 0
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: the EOI must follow
            return data.find(b"\xff\xd9", pos + 2) >= 0
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return False


# Raised whenever the same file bytes decode to other pixels (identify's gallery index then re-embeds its photos).
# 2: 16-bit data scaled by the bits it uses (issue 29); large photos detected on a downscaled copy.
DECODER_VERSION = 2


def significant_bits(peak: int, declared: int | None = None) -> int:
    """How many bits 16-bit samples really use: the one rule that scales every 16-bit image to 8 bits.

    peak: the largest sample (0..65535); declared: the bits the file says its data has (PNG sBIT, TIFF
    BitsPerSample), or None. The data's own range decides: the smallest of SAMPLE_BITS (8, 10, 12, 14, 16) that
    holds `peak`, so 12-bit camera data (0..4095) is read as 12-bit and not as 16-bit data 16 times too dark. A
    declared depth below 16 and above that wins (a dark 12-bit frame whose values stay below 1024 is still 12-bit
    data); one the data exceeds is ignored (the PNG standard scales sBIT data to the full 16 bits). Each sample
    becomes its top 8 significant bits, sample >> (bits - 8): true 16-bit data keeps its top byte, as before.
    """
    fits = next((b for b in SAMPLE_BITS if peak < 1 << b), 16)
    if declared is not None and fits < declared < 16:
        return int(declared)
    return fits


def _declared_bits(im, data: bytes) -> tuple[int | None, int | None]:
    """(colour, alpha) bits the file declares for its samples (PNG sBIT, TIFF BitsPerSample below 16), else None."""
    alpha = im.mode in ("RGBA", "LA")
    if im.format == "PNG" and (sbit := tuple(_png_chunk(data, b"sBIT", before_image=True) or ())):
        colour = sbit[:-1] if alpha and len(sbit) > 1 else sbit
        return max(colour), (sbit[-1] if alpha and len(sbit) > 1 else None)
    if im.format == "TIFF":
        bps = getattr(im, "tag_v2", {}).get(258)
        bps = bps if isinstance(bps, tuple) else (bps,) if isinstance(bps, int) else ()
        if bps and 8 < max(bps) < 16:
            return max(bps), (max(bps) if alpha else None)
    return None, None


# 16-bit grey decodes to these modes, with every bit ("I": PGM with a maxval other than 65535, signed TIFF, older
# Pillow's 16-bit PNG).
_WIDE_GREY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
_NATIVE_ORDER = "L" if sys.byteorder == "little" else "B"


def _tile(codec, extents, offset, args):
    from PIL import ImageFile
    return getattr(ImageFile, "_Tile", lambda *t: tuple(t))(codec, extents, offset, args)


def _tile_rawmode(tile) -> str | None:
    args = tile[3]
    if isinstance(args, str):
        return args
    return args[0] if isinstance(args, tuple) and args and isinstance(args[0], str) else None


def _wide_colour_plan(im):
    """How to read every bit of a 16-bit colour image, which Pillow decodes to its top 8 bits (it has no 16-bit
    colour mode). Call before im.load(), which consumes the tiles.

    Returns None (not a 16-bit colour image); or (tiles for the low bytes, the low-pass channel of each channel
    of im.mode), with im.tile switched where needed so that im.load() gives the high bytes; or a rawmode string
    when there is no way to the low bytes (the caller refuses the image if its high bytes are near-black).
    Pillow unpacks "RGB;16B" by the high byte and "RGB;16L" by the other one, with the same bytes per pixel (so
    the same PNG unfiltering): decoding once with the byte order swapped gives the low bytes.
    """
    tiles = list(im.tile or [])
    if not tiles or im.mode not in ("RGB", "RGBA"):
        return None
    if im.format == "PPM" and tiles[0][0] == "ppm" and tuple(tiles[0][3]) == ("RGB", 65535):
        # Binary PPM with maxval 65535: big-endian 16-bit samples, which Pillow's "ppm" decoder scales to 8 bits.
        t = tiles[0]
        im.tile = [_tile("raw", t[1], t[2], "RGB;16B")]
        return [_tile("raw", t[1], t[2], "RGB;16L")], (0, 1, 2)
    low, channels = [], None
    for t in tiles:
        raw = _tile_rawmode(t) or ""
        base, sep, order = raw.rpartition(";16")
        if not sep or order not in ("B", "L", "N"):  # 8 bits a sample, or packed 16-bit pixels (BMP's BGR;16)
            return None
        order = _NATIVE_ORDER if order == "N" else order
        if raw == "LA;16B":  # PNG grey + alpha, unpacked to RGBA: read its bytes (L hi, L lo, A hi, A lo) as RGBA
            swapped, channels = "RGBA", (1, 1, 1, 3)
        elif base in ("RGB", "RGBA", "RGBX"):
            swapped = f"{base};16{'L' if order == 'B' else 'B'}"
            channels = tuple(range(len(im.mode)))
        else:  # premultiplied alpha, CMYK, YCbCr: no byte-exact way to the low bytes
            return raw
        args = t[3]
        low.append(_tile(t[0], t[1], t[2], swapped if isinstance(args, str) else (swapped, *args[1:])))
    return low, channels


def _wide_to_8bit(im, data: bytes, plan, name: str):
    """A decoded 16-bit image as an 8-bit Pillow image (L, RGB or RGBA), scaled by significant_bits; `im` itself
    when it is not a 16-bit image. `plan` is what _wide_colour_plan returned before im.load().
    ImageError for a 16-bit image whose data uses at most 12 bits but cannot be read past its top 8 bits."""
    from PIL import Image
    if im.mode in _WIDE_GREY_MODES:
        wide = np.clip(np.asarray(im), 0, 65535).astype(np.uint16)[..., None]
    elif isinstance(plan, tuple):
        low_tiles, channels = plan
        try:
            with Image.open(io.BytesIO(data)) as lo_im, warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                lo_im.tile = low_tiles
                lo_im.load()
                lo = np.asarray(lo_im)
        except (OSError, ValueError, SyntaxError, EOFError) as e:  # the first pass decoded, so this is rare
            raise ImageError(f"cannot decode the low bytes of this 16-bit {im.format} image ({e}): {name}") from None
        wide = (np.asarray(im).astype(np.uint16) << 8) | lo[..., list(channels)]
    else:
        top = np.asarray(im)
        alpha_peak = top[..., 3].max() if top.shape[-1] == 4 else 255
        if isinstance(plan, str) and min(top[..., :3].max(), alpha_peak) < 16:
            raise ImageError(f"16-bit image ({plan}) whose data uses at most 12 of its 16 bits: decoded by its top 8 "
                             f"bits it would be near-black; convert it to 8-bit with its range stretched: {name}")
        return im
    alpha = wide.shape[-1] == 4
    colour_decl, alpha_decl = _declared_bits(im, data)
    colour = wide[..., :3] if alpha else wide
    out = [colour >> (significant_bits(int(colour.max(initial=0)), colour_decl) - 8)]
    if alpha:
        a = wide[..., 3:]
        out.append(a >> (significant_bits(int(a.max(initial=0)), alpha_decl) - 8))
    pixels = np.concatenate(out, axis=-1).astype(np.uint8)
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else np.ascontiguousarray(pixels))


# EXIF Orientation -> the transpose that makes the image upright (as PIL.ImageOps.exif_transpose).
_UPRIGHT = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
            7: "TRANSVERSE", 8: "ROTATE_90"}


def _to_rgb(im, name: str):
    """Any 8-bit Pillow mode (and F) -> 8-bit RGB, as Pillow converts it except where Pillow clips instead of
    scaling. 16-bit images are scaled to 8 bits first (_wide_to_8bit)."""
    from PIL import Image
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "F":  # 32-bit float (TIFF, PFM): values taken as 0..255
        arr = np.clip(np.asarray(im).astype(np.float64), 0, 255)
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        # Composite over black, the border colour of the aligned crops.
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    try:
        return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    except (ValueError, OSError) as e:
        raise ImageError(f"unsupported pixel mode {mode} ({e}): {name}") from None


def decode_image_rgb(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decodes encoded image bytes to the upright uint8 RGB image [H, W, 3].

    The header is checked before decoding: zero-byte, unknown format, broken header, truncated JPEG and
    w*h > max_pixels (TooLargeError) raise ImageError. Then the pixels are decoded (corrupt data raises
    ImageError), the mode is converted to RGB (grey; 16-bit scaled by the bits its data uses, significant_bits;
    alpha over black; palette; CMYK) and the EXIF Orientation (1..8) is applied. `name` only appears in error
    messages.
    """
    from PIL import Image
    im = _open(data, name, max_pixels)
    with im:
        plan = _wide_colour_plan(im)  # before anything loads the pixels, which consumes the tiles
        header = _header_of(im, data)
        stored = im.size
        if header.width * header.height > max_pixels:
            raise TooLargeError(header.width, header.height, max_pixels, name)
        if header.format in ("JPEG", "MPO") and not _jpeg_is_complete(data):
            raise ImageError(f"truncated JPEG (no end-of-image marker): {name}")
        try:
            im.load()
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise ImageError(f"cannot decode {header.format or 'image'} data (corrupt or truncated: {e}): "
                             f"{name}") from None
        if im.size != stored:
            raise ImageError(f"decoded size {im.size[0]}x{im.size[1]} differs from header {stored[0]}x{stored[1]} "
                             f"(corrupt file): {name}")
        rgb = _to_rgb(_wide_to_8bit(im, data, plan, name), name)
        if header.orientation in _UPRIGHT:
            rgb = rgb.transpose(getattr(Image.Transpose, _UPRIGHT[header.orientation]))
        rgb = np.asarray(rgb, dtype=np.uint8)
    if rgb.shape != (header.height, header.width, 3):
        raise ImageError(f"decoded {rgb.shape} but the header says {header.width}x{header.height} RGB "
                         f"(corrupt file): {name}")
    return np.ascontiguousarray(rgb)


def read_image_bytes(path) -> bytes:
    """The file's bytes; ImageError (one line, with the path) when it cannot be read."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ImageError(f"cannot read file ({e.strerror}): {printable(path)}") from None


def load_image_rgb(path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Reads an image file as the upright uint8 RGB image [H, W, 3]; ImageError with the reason on a bad file.

    A photo in a format this Pillow cannot read (HEIC without pillow-heif) says what to install (image_reason).
    """
    try:
        return decode_image_rgb(read_image_bytes(path), printable(path), max_pixels)
    except ImageError as e:
        ext = Path(path).suffix.lower()
        if "unknown format" in str(e) and ext in PHOTO_EXTENSIONS and ext not in IMAGE_EXTENSIONS:
            raise ImageError(f"{image_reason(path)}: {printable(path)}") from None
        raise
