"""Training-image sources: an image-folder tree `<identity>/<image>` and InsightFace MXNet RecordIO (.rec + .idx).

RecordIO is read natively (no mxnet). Layout of one record, as MXNet's dmlc-core writes it:
  uint32 magic 0xced7230a | uint32 lrecord (upper 3 bits: continuation flag, lower 29: length) | payload | pad to 4
dmlc-core's writer splits a record wherever its payload holds the magic word at a 4-byte-aligned offset, and
drops that word (flag 1 = first part, 2 = middle, 3 = last); its reader joins the parts with the magic word put
back between them, and so does this one. The payload starts with the image
record header "IRHeader": uint32 flag, float32 label, uint64 id, uint64 id2; when flag > 0, `flag` more float32
labels follow (label[0] is then the class). InsightFace's faces_emore puts a header record at key 0 (flag > 0,
label = [first id-record key, end]): image keys are then 1 .. label[0]-1. The small validation sample has no
such record, so every key in the .idx is an image.
"""
from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path, PurePosixPath

from mobiface_tf.identity_folders import list_identity_tree, log_merge
from mobiface_tf.images import IMAGE_EXTENSIONS, printable

RECORDIO_MAGIC = 0xCED7230A
_IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2


class RecordIOError(ValueError):
    """A malformed .rec/.idx; the message names the file and the byte offset."""


# ----------------------------------------------------------------------------------------------- image folders
def list_image_folder(root, on_merge=log_merge) -> tuple[list[tuple[str, int]], list[str], list[tuple[str, str]]]:
    """Lists `root/<identity>/[sub-folders/]<image>` files for training (rules in mobiface_tf.images).

    Returns ([(path, label)], class_names, [(path, reason)]): labels index the sorted identity names; files are
    sorted within an identity, and photos in an identity's sub-folders belong to it. Everything not used
    (hidden or OS-litter entries such as `.ipynb_checkpoints` or `__MACOSX`, non-image files, files outside an
    identity folder) is returned with its reason, so callers can count it. Identities without any image are
    dropped. Class names are identity names (mobiface_tf.identity_folders: folders of one name under the name
    rule of --exclude_names are one class, reported through on_merge(name, folders); a name that is not UTF-8
    is escaped). Paths are returned as found (they open the file); the reasons' paths too, printed escaped by
    callers. Symlinks that loop or lead back up the tree are skipped with their reason.
    Raises ValueError when `root` is not a directory or holds no image at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"--input is not a directory: '{printable(root)}'. Pass an image-folder tree "
                         "<identity>/<image>")
    identities, skipped = list_identity_tree(root, on_merge=on_merge)
    if not identities:
        raise ValueError(f"no <identity>/<image> files under '{printable(root)}' (extensions "
                         f"{', '.join(IMAGE_EXTENSIONS)}; hidden folders such as .ipynb_checkpoints are not "
                         "identities)")
    class_names = [name for name, _ in identities]
    items = [(str(f), label) for label, (_, files) in enumerate(identities) for f in files]
    return items, class_names, [(str(sk.path), sk.reason) for sk in skipped]


# ----------------------------------------------------------------------------------------------- RecordIO
@dataclasses.dataclass(frozen=True)
class IRHeader:
    """InsightFace/MXNet RecordIO image-record header (MXNet's `recordio.IRHeader`), as `unpack_ir` reads it.

    flag: count of extra float32 labels (0: one label in the fixed header); label: the labels, label[0] the
    class (faces_emore's header record 0: [first identity-record key, end]); id, id2: uint64 record ids.
    """

    flag: int
    label: tuple[float, ...]
    id: int
    id2: int


def unpack_ir(payload: bytes, where: str = "") -> tuple[IRHeader, bytes]:
    """Splits a record payload into its IRHeader and the image bytes."""
    if len(payload) < _IR_HEADER.size:
        raise RecordIOError(f"record too short for an image header ({len(payload)} bytes){where}")
    flag, label, id1, id2 = _IR_HEADER.unpack_from(payload)
    pos = _IR_HEADER.size
    labels = (label,)
    if flag > 0:
        if len(payload) < pos + 4 * flag:
            raise RecordIOError(f"record header says {flag} labels but the record is {len(payload)} bytes{where}")
        labels = struct.unpack_from(f"<{flag}f", payload, pos)
        pos += 4 * flag
    return IRHeader(flag, tuple(labels), id1, id2), payload[pos:]


def pack_ir(header: IRHeader, image: bytes) -> bytes:
    """Inverse of unpack_ir (used to write test fixtures)."""
    if header.flag > 0:
        return _IR_HEADER.pack(header.flag, 0.0, header.id, header.id2) + struct.pack(
            f"<{header.flag}f", *header.label) + image
    return _IR_HEADER.pack(0, header.label[0], header.id, header.id2) + image


_MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)


def recordio_parts(payload: bytes) -> list[tuple[int, bytes]]:
    """[(cflag, part)] as dmlc-core's RecordIOWriter::WriteRecord splits a payload.

    Wherever the magic word sits at a 4-byte-aligned offset of the payload, the record is cut there and the word
    dropped: cflag 1 = first part, 2 = middle, 3 = last, 0 = a record in one part.
    """
    parts, start = [], 0
    for i in range(0, len(payload) - len(payload) % 4, 4):
        if payload[i:i + 4] == _MAGIC_BYTES:
            parts.append((1 if not parts else 2, payload[start:i]))
            start = i + 4
    parts.append((3 if parts else 0, payload[start:]))
    return parts


def write_recordio(rec_path, records: list[tuple[int, bytes]]) -> None:
    """Writes (key, payload) records and the .idx next to the .rec, byte for byte as dmlc-core's writer does
    (records holding the magic word are split; see recordio_parts). Used to write test fixtures."""
    rec_path = Path(rec_path)
    with open(rec_path, "wb") as rec, open(rec_path.with_suffix(".idx"), "w") as idx:
        for key, payload in records:
            idx.write(f"{key}\t{rec.tell()}\n")
            for cflag, part in recordio_parts(payload):
                rec.write(struct.pack("<II", RECORDIO_MAGIC, (cflag << 29) | len(part)))
                rec.write(part + b"\x00" * (-len(part) % 4))


class RecordIOReader:
    """Random access to an indexed MXNet RecordIO file."""

    def __init__(self, rec_path, idx_path=None):
        self.rec_path = str(rec_path)
        if idx_path is None:  # train.rec -> train.idx; train.REC -> train.IDX when that is what exists
            base, ext = os.path.splitext(self.rec_path)
            idx_path = base + ".idx"
            if not os.path.isfile(idx_path) and ext.isupper() and os.path.isfile(base + ".IDX"):
                idx_path = base + ".IDX"
        self.idx_path = str(idx_path)
        for p, what in ((self.rec_path, ".rec"), (self.idx_path, ".idx")):
            if not os.path.isfile(p):
                raise ValueError(f"RecordIO {what} file not found: '{p}' (a .rec needs its .idx next to it)")
        self.size = os.path.getsize(self.rec_path)
        self.index: dict[int, int] = {}
        with open(self.idx_path) as f:
            for n, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                try:
                    key, offset = int(parts[0]), int(parts[1])
                except (ValueError, IndexError):
                    raise RecordIOError(f"{self.idx_path}:{n}: expected 'key<TAB>offset', got {line.strip()!r}") from None
                if not 0 <= offset < self.size:
                    raise RecordIOError(f"{self.idx_path}:{n}: key {key} has offset {offset}, past the end of "
                                        f"{self.rec_path} ({self.size} bytes); the .idx does not match the .rec")
                self.index[key] = offset
        self._file = open(self.rec_path, "rb")

    def close(self):
        """Close the .rec file."""
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def read_at(self, offset: int) -> bytes:
        """The payload of the (possibly multi-part) record starting at `offset`."""
        parts = []
        pos = offset
        while True:
            self._file.seek(pos)
            head = self._file.read(8)
            if len(head) < 8:
                raise RecordIOError(f"{self.rec_path}: truncated record header at offset {pos} "
                                    f"(file is {self.size} bytes)")
            magic, lrec = struct.unpack("<II", head)
            if magic != RECORDIO_MAGIC:
                raise RecordIOError(f"{self.rec_path}: bad magic 0x{magic:08x} at offset {pos} "
                                    f"(expected 0x{RECORDIO_MAGIC:08x}); not MXNet RecordIO or corrupt")
            cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
            data = self._file.read(length)
            if len(data) < length:
                raise RecordIOError(f"{self.rec_path}: truncated record at offset {pos}: header says {length} "
                                    f"bytes, only {len(data)} left")
            if (cflag in (0, 1)) != (not parts):
                raise RecordIOError(f"{self.rec_path}: record part at offset {pos} has continuation flag {cflag}, "
                                    f"which cannot {'start' if not parts else 'continue'} a record; the .idx does "
                                    "not match the .rec, or the file is corrupt")
            parts.append(data)
            pos += 8 + length + (-length % 4)
            if cflag in (0, 3):  # whole record, or last part
                # The writer cut the record at each aligned magic word and dropped it: put it back between parts.
                return _MAGIC_BYTES.join(parts)

    def read(self, key: int) -> tuple[IRHeader, bytes]:
        """(IRHeader, image bytes) of the record at `key` of the .idx; RecordIOError naming the file and offset when it is malformed."""
        if key not in self.index:
            raise KeyError(f"key {key} not in {self.idx_path}")
        offset = self.index[key]
        return unpack_ir(self.read_at(offset), f" in {self.rec_path} at offset {offset}")

    def identity_count(self) -> int | None:
        """Identities announced by a header record at key 0 (flag > 0, label = [first identity-record key,
        end]): end - first; None without such a header."""
        if 0 not in self.index:
            return None
        header, _ = self.read(0)
        if header.flag > 0 and len(header.label) >= 2 and header.label[1] > header.label[0]:
            return int(header.label[1] - header.label[0])
        return None

    def image_keys(self) -> list[int]:
        """Keys of image records: 1..label[0]-1 after a header record 0, else every key in .idx order."""
        if 0 in self.index:
            header, _ = self.read(0)
            if header.flag > 0:
                end = int(header.label[0])
                return [k for k in range(1, end) if k in self.index]
        return list(self.index)


def label_limit(num_records: int, identities: int | None) -> int:
    """Labels must be < this: the header record's identity count when the .rec has one, else 10x the number
    of image records (an identity per image is already the extreme; far beyond it is a corrupt label)."""
    return int(identities) if identities else 10 * max(int(num_records), 1)


def check_label(value: float, limit: int, where: str) -> int:
    """A RecordIO class label as an int; RecordIOError naming `where` (file and offset) when it is NaN/Inf,
    negative, not an integer, or not below `limit`."""
    import math

    if not math.isfinite(value):
        raise RecordIOError(f"label {value} is not a number {where}")
    if value < 0:
        raise RecordIOError(f"label {value:g} is negative {where}")
    if value != int(value):
        raise RecordIOError(f"label {value:g} is not an integer {where}")
    if value >= limit:
        raise RecordIOError(f"label {value:.0f} is implausible (labels must be < {limit}: the header's identity "
                            f"count, or 10x the number of records) {where}")
    return int(value)


def recordio_class_names(rec_path, labels: list[int]) -> list[str]:
    """Class names for RecordIO labels: identity folder names from a `.lst` next to the .rec when present
    (InsightFace's im2rec list: key, label(s), path), else 'id_00042'. The identity is the image's parent folder,
    for relative and absolute paths alike ('/data/faces/Alice/1.jpg' and 'Alice/1.jpg' give 'Alice'); a path
    without a folder keeps the 'id_' name. The count also honours `property` (num_classes,h,w) so identities
    without any image keep their label."""
    base = os.path.splitext(str(rec_path))[0]
    num = max(labels) + 1 if labels else 0
    prop = os.path.join(os.path.dirname(base), "property")
    if os.path.isfile(prop):
        with open(prop) as f:
            first = f.read().split(",")[0].strip()
        if first.isdigit():
            num = max(num, int(first))
    names = [f"id_{i:05d}" for i in range(num)]
    if os.path.isfile(base + ".lst"):
        with open(base + ".lst") as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) < 3:
                    continue
                folder = PurePosixPath(parts[-1].strip().replace("\\", "/")).parent.name
                try:
                    label = int(float(parts[1]))
                except ValueError:
                    continue
                if folder and 0 <= label < num:
                    names[label] = folder
    return names
