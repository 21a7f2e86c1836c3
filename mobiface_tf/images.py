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
  (top 8 bits), alpha (composited on black, the aligned crops' border colour), palette, CMYK.

Also the aligned-crop format (size and the ArcFace landmark template), which the data package needs without
pulling in the MTCNN aligner.
"""
from __future__ import annotations

import errno
import io
import os
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
# 40 Mpx is above any consumer photo (a 7000x5000 camera image is 35 Mpx) but stops decompression bombs early.
DEFAULT_MAX_PIXELS = 40_000_000
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


def _open(data: bytes, name: str):
    from PIL import Image, UnidentifiedImageError
    if not data:
        raise ImageError(f"zero-byte file: {name}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own max_pixels check follows
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageError(f"too large ({e}): {name}") from None
    except UnidentifiedImageError:
        raise ImageError(f"not an image (unknown format): {name}") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL raises these on broken headers
        raise ImageError(f"unreadable image header ({e}): {name}") from None


def _orientation(im) -> int:
    try:
        value = im.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is ignored, as cameras and browsers do
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _header_of(im) -> ImageHeader:
    w, h = im.size
    o = _orientation(im)
    if o >= 5:  # 5..8 transpose or rotate by 90 degrees: the upright image has width and height swapped
        w, h = h, w
    return ImageHeader(w, h, im.format or "", im.mode, o)


def image_header(data: bytes, name: str = "<bytes>") -> ImageHeader:
    """Size (upright), format, mode and EXIF orientation from the header only: no pixel is decoded.

    Raises ImageError on zero-byte, unknown-format or broken-header data.
    """
    with _open(data, name) as im:
        return _header_of(im)


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


def _to_rgb(im, name: str):
    """Any Pillow mode -> 8-bit RGB, as Pillow converts it except where Pillow clips instead of scaling."""
    from PIL import Image
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        # 16-bit grey (PNG, PGM): Pillow's convert clips everything above 255 to white; keep the top 8 bits.
        arr = np.asarray(im)
        arr = np.clip(arr.astype(np.float64) if mode == "F" else arr.astype(np.int64) >> 8, 0, 255)
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
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
    w*h > max_pixels raise ImageError. Then the pixels are decoded (corrupt data raises ImageError), the EXIF
    Orientation (1..8) is applied, and the mode is converted to RGB (grey, 16-bit, alpha over black, palette,
    CMYK). `name` only appears in error messages.
    """
    from PIL import ImageOps
    im = _open(data, name)
    with im:
        header = _header_of(im)
        stored = im.size
        if header.width * header.height > max_pixels:
            raise ImageError(f"too large: {header.width}x{header.height} = {header.width * header.height} pixels "
                             f"> max_pixels={max_pixels} (raise --max_pixels if this is a real photo): {name}")
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
        upright = ImageOps.exif_transpose(im) if header.orientation != 1 else im
        rgb = np.asarray(_to_rgb(upright, name), dtype=np.uint8)
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
