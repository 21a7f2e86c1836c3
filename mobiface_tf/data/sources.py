"""Training-image sources: an image-folder tree `<identity>/<image>` and InsightFace MXNet RecordIO (.rec + .idx).

RecordIO is read natively (no mxnet). Layout of one record, as MXNet's dmlc-core writes it:
  uint32 magic 0xced7230a | uint32 lrecord (upper 3 bits: continuation flag, lower 29: length) | payload | pad to 4
A record split in parts (flag 1 = first, 2 = middle, 3 = last) is joined. The payload starts with the image
record header "IRHeader": uint32 flag, float32 label, uint64 id, uint64 id2; when flag > 0, `flag` more float32
labels follow (label[0] is then the class). InsightFace's faces_emore puts a header record at key 0 (flag > 0,
label = [first id-record key, end]): image keys are then 1 .. label[0]-1. The small validation sample has no
such record, so every key in the .idx is an image.
"""
from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path

from mobiface_tf.align import IMAGE_EXTENSIONS

RECORDIO_MAGIC = 0xCED7230A
_IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2


class RecordIOError(ValueError):
    """A malformed .rec/.idx; the message names the file and the byte offset."""


# ----------------------------------------------------------------------------------------------- image folders
def list_image_folder(root) -> tuple[list[tuple[str, int]], list[str]]:
    """Lists `root/<identity>/<image>` files.

    Returns ([(path, label)], class_names): labels index the sorted identity names; files are sorted within an
    identity. Only files with an image extension count as inputs; identities without any are dropped.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"--input is not a directory: '{root}'. Pass an image-folder tree <identity>/<image>")
    per_class = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(str(f) for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        if files:
            per_class[d.name] = files
    if not per_class:
        raise ValueError(f"no <identity>/<image> files under '{root}' (extensions {', '.join(IMAGE_EXTENSIONS)})")
    class_names = list(per_class)
    items = [(f, label) for label, name in enumerate(class_names) for f in per_class[name]]
    return items, class_names


# ----------------------------------------------------------------------------------------------- RecordIO
@dataclasses.dataclass(frozen=True)
class IRHeader:
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


def write_recordio(rec_path, records: list[tuple[int, bytes]]) -> None:
    """Writes (key, payload) records and the .idx next to the .rec (single-part records)."""
    rec_path = Path(rec_path)
    with open(rec_path, "wb") as rec, open(rec_path.with_suffix(".idx"), "w") as idx:
        for key, payload in records:
            idx.write(f"{key}\t{rec.tell()}\n")
            rec.write(struct.pack("<II", RECORDIO_MAGIC, len(payload)))
            rec.write(payload + b"\x00" * (-len(payload) % 4))


class RecordIOReader:
    """Random access to an indexed MXNet RecordIO file."""

    def __init__(self, rec_path, idx_path=None):
        self.rec_path = str(rec_path)
        self.idx_path = str(idx_path) if idx_path else os.path.splitext(self.rec_path)[0] + ".idx"
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
            parts.append(data)
            pos += 8 + length + (-length % 4)
            if cflag in (0, 3):  # whole record, or last part
                return b"".join(parts)

    def read(self, key: int) -> tuple[IRHeader, bytes]:
        if key not in self.index:
            raise KeyError(f"key {key} not in {self.idx_path}")
        offset = self.index[key]
        return unpack_ir(self.read_at(offset), f" in {self.rec_path} at offset {offset}")

    def image_keys(self) -> list[int]:
        """Keys of image records: 1..label[0]-1 after a header record 0, else every key in .idx order."""
        if 0 in self.index:
            header, _ = self.read(0)
            if header.flag > 0:
                end = int(header.label[0])
                return [k for k in range(1, end) if k in self.index]
        return list(self.index)


def recordio_class_names(rec_path, labels: list[int]) -> list[str]:
    """Class names for RecordIO labels: identity folder names from a `.lst` next to the .rec when present
    (InsightFace's im2rec list: key, label, relative path), else 'id_00042'. The count also honours `property`
    (num_classes,h,w) so identities without any image keep their label."""
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
                if len(parts) >= 3 and "/" in parts[-1]:
                    label = int(float(parts[1]))
                    if 0 <= label < num:
                        names[label] = parts[-1].split("/")[0]
    return names
