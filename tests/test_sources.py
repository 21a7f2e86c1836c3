"""Sources: image-folder listing and the native MXNet RecordIO reader (both layouts, corrupt files)."""
import struct

import pytest

from mobiface_tf.data.sources import (RECORDIO_MAGIC, IRHeader, RecordIOError, RecordIOReader, list_image_folder,
                                      pack_ir, recordio_class_names, unpack_ir, write_recordio)


def test_image_folder_labels_from_sorted_names(tmp_path):
    for name, files in {"bob": ["2.jpg", "1.PNG", "notes.txt"], "alice": ["a.pgm", "b.webp"], "empty": ["x.txt"],
                        "carol": ["c.bmp"]}.items():
        (tmp_path / name).mkdir()
        for f in files:
            (tmp_path / name / f).write_bytes(b"x")
    (tmp_path / "stray.jpg").write_bytes(b"x")  # not inside an identity folder: not an input
    items, names = list_image_folder(tmp_path)
    assert names == ["alice", "bob", "carol"]
    assert [(p.split("/")[-1], label) for p, label in items] == [
        ("a.pgm", 0), ("b.webp", 0), ("1.PNG", 1), ("2.jpg", 1), ("c.bmp", 2)]


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        list_image_folder(tmp_path / "nope")
    with pytest.raises(ValueError, match="no <identity>/<image> files"):
        list_image_folder(tmp_path)


def _records(n=6, with_header=False, classes=3):
    recs = [(k, pack_ir(IRHeader(0, (float(k % classes),), k, 0), b"IMG%03d" % k)) for k in range(1, n + 1)]
    if with_header:
        # InsightFace faces_emore layout: record 0 says images are keys 1..n, identity records n+1..n+classes,
        # each identity record holding its [start, end) image-key range.
        recs.insert(0, (0, pack_ir(IRHeader(2, (float(n + 1), float(n + 1 + classes)), 0, 0), b"")))
        for c in range(classes):
            recs.append((n + 1 + c, pack_ir(IRHeader(2, (1.0, float(n + 1)), 0, 0), b"")))
    return recs


@pytest.mark.parametrize("with_header", [False, True])
def test_recordio_both_layouts(tmp_path, with_header):
    rec = tmp_path / "train.rec"
    write_recordio(rec, _records(with_header=with_header))
    with RecordIOReader(rec) as r:
        keys = r.image_keys()
        assert keys == [1, 2, 3, 4, 5, 6]  # identity records are never taken for images
        got = [(int(r.read(k)[0].label[0]), r.read(k)[1]) for k in keys]
    assert got == [(k % 3, b"IMG%03d" % k) for k in keys]


def test_recordio_label_array_and_multipart(tmp_path):
    # flag>0 image records carry a label array (label[0] is the class); a record may be split in parts.
    payload = pack_ir(IRHeader(2, (7.0, 1.0), 5, 0), b"J" * 50)
    rec = tmp_path / "a.rec"
    body = b""
    parts = [payload[:20], payload[20:41], payload[41:]]
    for i, part in enumerate(parts):
        cflag = 1 if i == 0 else (3 if i == len(parts) - 1 else 2)
        body += struct.pack("<II", RECORDIO_MAGIC, (cflag << 29) | len(part)) + part + b"\0" * (-len(part) % 4)
    rec.write_bytes(body)
    (tmp_path / "a.idx").write_text("5\t0\n")
    with RecordIOReader(rec) as r:
        header, img = r.read(5)
    assert header.label == (7.0, 1.0) and img == b"J" * 50


def test_recordio_bad_magic(tmp_path):
    rec = tmp_path / "bad.rec"
    write_recordio(rec, _records())
    data = bytearray(rec.read_bytes())
    off = int((tmp_path / "bad.idx").read_text().splitlines()[2].split()[1])
    data[off:off + 4] = b"\xde\xad\xbe\xef"
    rec.write_bytes(bytes(data))
    with RecordIOReader(rec) as r:
        with pytest.raises(RecordIOError, match=rf"bad\.rec: bad magic 0xefbeadde at offset {off}"):
            r.read(3)


def test_recordio_truncated_record(tmp_path):
    rec = tmp_path / "cut.rec"
    write_recordio(rec, _records())
    data = rec.read_bytes()
    off = int((tmp_path / "cut.idx").read_text().splitlines()[-1].split()[1])
    rec.write_bytes(data[:off + 12])
    with RecordIOReader(rec) as r:
        with pytest.raises(RecordIOError, match=rf"cut\.rec: truncated record at offset {off}"):
            r.read(6)


def test_recordio_idx_offset_past_eof(tmp_path):
    rec = tmp_path / "x.rec"
    write_recordio(rec, _records())
    size = rec.stat().st_size
    (tmp_path / "x.idx").write_text(f"1\t0\n2\t{size + 100}\n")
    with pytest.raises(RecordIOError, match=rf"x\.idx:2: key 2 has offset {size + 100}, past the end of .*x\.rec"):
        RecordIOReader(rec)


def test_recordio_missing_idx(tmp_path):
    (tmp_path / "y.rec").write_bytes(b"")
    with pytest.raises(ValueError, match="y.idx"):
        RecordIOReader(tmp_path / "y.rec")


def test_unpack_short_payload():
    with pytest.raises(RecordIOError, match="too short"):
        unpack_ir(b"abc")


def test_real_recordio_sample_matches_lst(recordio_dir):
    lst = {}
    for line in (recordio_dir / "validation.lst").read_text().splitlines():
        key, label, path = line.split("\t")
        lst[int(key)] = (int(float(label)), path)
    with RecordIOReader(recordio_dir / "validation.rec") as r:
        keys = r.image_keys()  # no header record 0 in this sample
        labels = {k: int(r.read(k)[0].label[0]) for k in keys}
        first = r.read(keys[0])[1]
    assert len(keys) == 229 and len(set(labels.values())) == 25
    assert labels == {k: v[0] for k, v in lst.items()}
    assert first[:2] == b"\xff\xd8"  # the payload after the IR header is a JPEG
    names = recordio_class_names(recordio_dir / "validation.rec", sorted(set(labels.values())))
    assert len(names) == 25 and names[lst[keys[0]][0]] == lst[keys[0]][1].split("/")[0]
