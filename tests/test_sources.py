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
    (tmp_path / "stray.jpg").write_bytes(b"x")  # not inside an identity folder: not an input, listed as skipped
    items, names, skipped = list_image_folder(tmp_path)
    assert names == ["alice", "bob", "carol"]
    assert [(p.split("/")[-1], label) for p, label in items] == [
        ("a.pgm", 0), ("b.webp", 0), ("1.PNG", 1), ("2.jpg", 1), ("c.bmp", 2)]
    assert sorted(p.split("/")[-1] for p, _ in skipped) == ["notes.txt", "stray.jpg", "x.txt"]


def test_image_folder_hidden_entries_never_classes_subfolders_belong(tmp_path):
    for rel in ["b/1.jpg", "b/2019/extra.jpg", "a/1.jpg", ".ipynb_checkpoints/1-checkpoint.jpg", "a/.DS_Store",
                "a/._1.jpg", "__MACOSX/a/._1.jpg", "b/.ipynb_checkpoints/1-checkpoint.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    items, names, skipped = list_image_folder(tmp_path)
    assert names == ["a", "b"]
    assert [(p[len(str(tmp_path)) + 1:], label) for p, label in items] == [
        ("a/1.jpg", 0), ("b/1.jpg", 1), ("b/2019/extra.jpg", 1)]
    assert sorted(p[len(str(tmp_path)) + 1:] for p, _ in skipped) == [
        ".ipynb_checkpoints", "__MACOSX", "a/.DS_Store", "a/._1.jpg", "b/.ipynb_checkpoints"]


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


MAGIC = struct.pack("<I", RECORDIO_MAGIC)


def _dmlc_parts(payload):
    """The byte layout dmlc-core's RecordIOWriter produces, spelled out for the test: the payload is cut at
    each 4-byte-aligned magic word, which is dropped; flags 1 first, 2 middle, 3 last, 0 unsplit; the last
    part is padded to 4 bytes (earlier parts are multiples of 4 by construction)."""
    cuts = [i for i in range(0, len(payload) // 4 * 4, 4) if payload[i:i + 4] == MAGIC]
    starts, ends = [0] + [c + 4 for c in cuts], cuts + [len(payload)]
    flags = [0] if not cuts else [1] + [2] * (len(cuts) - 1) + [3]
    return b"".join(struct.pack("<II", RECORDIO_MAGIC, (f << 29) | (e - s)) + payload[s:e] + b"\0" * (-(e - s) % 4)
                    for f, s, e in zip(flags, starts, ends))


def test_recordio_label_array_and_multipart(tmp_path):
    # flag>0 image records carry a label array (label[0] is the class). dmlc-core splits a record wherever the
    # payload holds the magic word at a 4-byte-aligned offset and drops the word; the reader must put it back.
    image = b"J" * 12 + MAGIC + b"K" * 8 + MAGIC + MAGIC + b"L" * 2 + MAGIC + b"M" * 3
    payload = pack_ir(IRHeader(2, (7.0, 1.0), 5, 0), image)  # the header is 32 bytes: offsets 44, 56, 60, 66
    assert payload.count(MAGIC) == 4  # the one at offset 66 is unaligned: data, not a cut
    rec = tmp_path / "a.rec"
    write_recordio(rec, [(5, payload)])
    assert rec.read_bytes() == _dmlc_parts(payload)
    assert rec.read_bytes().count(MAGIC) == 5  # 4 part headers (3 cuts) + the unaligned word kept as data
    with RecordIOReader(rec) as r:
        header, img = r.read(5)
    assert header.label == (7.0, 1.0) and img == image
    # Magic word at the very start of the payload and at its (aligned) end.
    for payload in (MAGIC + b"abcdefgh", b"abcdefgh" + MAGIC, MAGIC):
        write_recordio(rec, [(1, payload)])
        assert rec.read_bytes() == _dmlc_parts(payload)
        with RecordIOReader(rec) as r:
            assert r.read_at(0) == payload


def test_recordio_part_flags_must_start_a_record(tmp_path):
    rec = tmp_path / "p.rec"
    write_recordio(rec, [(0, pack_ir(IRHeader(0, (0.0,), 0, 0), b"ab" * 8 + MAGIC + b"cd" * 8))])
    body = rec.read_bytes()
    second = body.index(MAGIC, 8)  # header of the last part (flag 3)
    (tmp_path / "p.idx").write_text(f"0\t{second}\n")  # an index pointing into the middle of a record
    with pytest.raises(RecordIOError, match=f"p.rec: record part at offset {second} has continuation flag 3"):
        RecordIOReader(rec).read(0)


@pytest.mark.shared_data
def test_recordio_split_record_case_reads_as_mxnet_does():
    from test_images import case

    d = case("recordio-split-record-corrupted")
    with RecordIOReader(d / "train.rec") as r:
        images = {k: r.read(k)[1] for k in r.image_keys()}
    assert len(images) == 3
    assert images[0] == (d / "record0_true_image.jpg").read_bytes()


@pytest.mark.parametrize("path", ["/data/my_faces/Alice_Example/Alice_Example_0001.jpg",
                                  "Alice_Example/Alice_Example_0001.jpg", "./faces/Alice_Example/x.png",
                                  "C:\\faces\\Alice_Example\\x.jpg"])
def test_lst_class_names_from_parent_folder(tmp_path, path):
    write_recordio(tmp_path / "t.rec", [(0, pack_ir(IRHeader(0, (0.0,), 0, 0), b"x"))])
    (tmp_path / "t.lst").write_text(f"0\t0.000000\t{path}\n1\t1.000000\tno_folder.jpg\n")
    assert recordio_class_names(tmp_path / "t.rec", [0, 1]) == ["Alice_Example", "id_00001"]


@pytest.mark.shared_data
def test_lst_absolute_paths_case():
    from test_images import case

    d = case("lst-absolute-paths-empty-names")
    assert recordio_class_names(d / "train.rec", [0, 1, 2]) == ["Alice_Example", "Bob_Example", "Carol_Example"]


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
