"""tools/prepare_data.py end to end, as a user runs it (subprocess): bad inputs, RecordIO, SIGKILL, AT&T."""
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import png_header_only

from mobiface_tf.align import ARCFACE_TEMPLATE, FaceAligner, decode_image_rgb
from mobiface_tf.atomic import leftover_temps
from mobiface_tf.data.sources import IRHeader, pack_ir, write_recordio
from mobiface_tf.data.synthetic import render_identity, write_synthetic_folder
from mobiface_tf.data.tfrecord import read_examples

from conftest import REPO  # noqa: E402  (the repo root, one definition for every test file)
TOOL = str(REPO / "tools" / "prepare_data.py")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def run_tool(*args, check=True):
    proc = subprocess.run([sys.executable, TOOL, "--progress=false", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"prepare_data failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}")
    return proc


def all_examples(out):
    return [ex for p in sorted(Path(out).glob("*.tfrecord")) for ex in read_examples(p)]


def test_bad_inputs_skipped_with_reasons_good_ones_kept(tmp_path):
    from PIL import Image
    faces = render_identity(0, 0, 6)
    bgr = lambda a: cv2.cvtColor(a, cv2.COLOR_RGB2BGR)  # noqa: E731
    good, bad = tmp_path / "in" / "good", tmp_path / "in" / "bad"
    good.mkdir(parents=True)
    bad.mkdir()
    cv2.imwrite(str(good / "plain.jpg"), bgr(faces[0]))
    rgba = np.dstack([bgr(faces[1]), np.full((112, 112), 255, np.uint8)])
    cv2.imwrite(str(good / "alpha.png"), rgba)
    cv2.imwrite(str(good / "deep16.png"), bgr(faces[2]).astype(np.uint16) * 257)
    cv2.imwrite(str(good / "gray.pgm"), cv2.cvtColor(faces[3], cv2.COLOR_RGB2GRAY))
    buf = io.BytesIO()
    Image.fromarray(faces[4]).convert("CMYK").save(buf, format="JPEG")
    (good / "cmyk.jpg").write_bytes(buf.getvalue())
    (bad / "zero.jpg").write_bytes(b"")
    jpg = cv2.imencode(".jpg", bgr(faces[5]))[1].tobytes()
    (bad / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    (bad / "text.png").write_text("not an image at all\n")
    (bad / "huge.png").write_bytes(png_header_only(20000, 12000))  # 240 Mpx, over the 200 Mpx bomb guard
    cv2.imwrite(str(bad / "noface.jpg"), np.full((200, 160, 3), 127, np.uint8))  # auto -> mtcnn: no face

    out = tmp_path / "out"
    proc = run_tool(f"--input={tmp_path / 'in'}", f"--output={out}", "--align=auto", "--shards=2", "--workers=1")
    m = json.loads((out / "manifest.json").read_text())
    assert m["num_inputs"] == 10 and m["num_images"] + len(m["skipped"]) == 10
    reasons = {s["path"]: s["reason"] for s in m["skipped"]}
    assert set(reasons) == {"bad/zero.jpg", "bad/truncated.jpg", "bad/text.png", "bad/huge.png", "bad/noface.jpg"}
    assert "zero-byte" in reasons["bad/zero.jpg"] and "truncated JPEG" in reasons["bad/truncated.jpg"]
    assert "not an image" in reasons["bad/text.png"] and "too large" in reasons["bad/huge.png"]
    assert "or raise --max_pixels: bad/huge.png" in reasons["bad/huge.png"]  # prepare has that flag
    assert "no face" in reasons["bad/noface.jpg"]
    assert m["class_names"] == ["bad", "good"] and m["class_counts"] == [0, 5]
    exs = all_examples(out)
    assert sorted(e["source"] for e in exs) == sorted(f"good/{f}" for f in
                                                      ["plain.jpg", "alpha.png", "deep16.png", "gray.pgm", "cmyk.jpg"])
    for e in exs:  # every kept image is a decodable 112x112 RGB JPEG, close to what was written
        img = decode_image_rgb(e["jpeg"])
        assert img.shape == (112, 112, 3) and e["label"] == 1
    plain = next(e for e in exs if e["source"] == "good/plain.jpg")
    assert plain["jpeg"] == (good / "plain.jpg").read_bytes()  # an RGB 112x112 JPEG is kept byte for byte
    assert "skipped 5 of 10" in proc.stdout


def test_align_none_refuses_uncropped(tmp_path):
    d = tmp_path / "in" / "a"
    d.mkdir(parents=True)
    cv2.imwrite(str(d / "big.jpg"), np.zeros((150, 120, 3), np.uint8))
    run_tool(f"--input={tmp_path / 'in'}", f"--output={tmp_path / 'out'}", "--align=none", "--workers=1")
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["num_images"] == 0 and "not 112x112 (120x150)" in m["skipped"][0]["reason"]


def test_recordio_with_header_record(tmp_path):
    # faces_emore layout: record 0 is a header (flag>0) and identity records follow the images.
    faces = np.concatenate([render_identity(0, c, 3) for c in range(2)])
    recs = [(0, pack_ir(IRHeader(2, (7.0, 9.0), 0, 0), b""))]
    recs += [(k + 1, pack_ir(IRHeader(0, (float(k // 3),), k + 1, 0), cv2.imencode(".jpg", f)[1].tobytes()))
             for k, f in enumerate(faces)]
    recs += [(7, pack_ir(IRHeader(2, (1.0, 4.0), 0, 0), b"")), (8, pack_ir(IRHeader(2, (4.0, 7.0), 0, 0), b""))]
    write_recordio(tmp_path / "train.rec", recs)
    run_tool(f"--input={tmp_path / 'train.rec'}", f"--output={tmp_path / 'out'}", "--workers=1")
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (m["num_images"], m["num_classes"], m["skipped"]) == (6, 2, [])
    assert sorted((e["source"], e["label"]) for e in all_examples(tmp_path / "out")) == [
        (f"train.rec#{k}", (k - 1) // 3) for k in range(1, 7)]


def test_recordio_with_two_workers_matches_one(tmp_path):
    """RecordIO preparation with --workers=2: the same examples (source, label, JPEG bytes) and the same manifest
    counts as --workers=1 (faces_emore layout: a header record, then 4 identities x 5 images)."""
    faces = np.concatenate([render_identity(1, c, 5) for c in range(4)])
    recs = [(0, pack_ir(IRHeader(2, (21.0, 25.0), 0, 0), b""))]
    recs += [(k + 1, pack_ir(IRHeader(0, (float(k // 5),), k + 1, 0), cv2.imencode(".jpg", f)[1].tobytes()))
             for k, f in enumerate(faces)]
    write_recordio(tmp_path / "train.rec", recs)
    got = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        run_tool(f"--input={tmp_path / 'train.rec'}", f"--output={out}", "--shards=3", f"--workers={workers}")
        m = json.loads((out / "manifest.json").read_text())
        assert (m["num_images"], m["num_classes"], m["skipped"]) == (20, 4, [])
        got[workers] = sorted((e["source"], e["label"], e["jpeg"]) for e in all_examples(out))
    assert len(got[2]) == 20 and got[2] == got[1]


def test_corrupt_recordio_fails_with_file_and_offset(tmp_path):
    write_recordio(tmp_path / "c.rec", [(k, pack_ir(IRHeader(0, (0.0,), k, 0), b"x" * 40)) for k in range(4)])
    data = bytearray((tmp_path / "c.rec").read_bytes())
    off = int((tmp_path / "c.idx").read_text().splitlines()[2].split()[1])
    data[off] ^= 0xFF
    (tmp_path / "c.rec").write_bytes(bytes(data))
    proc = run_tool(f"--input={tmp_path / 'c.rec'}", f"--output={tmp_path / 'out'}", "--workers=1", check=False)
    assert proc.returncode != 0
    assert "c.rec: bad magic" in proc.stderr and f"at offset {off}" in proc.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not list((tmp_path / "out").glob("*.tmp-*")) and not leftover_temps(tmp_path / "out")


def test_real_recordio_sample(tmp_path, recordio_dir):
    run_tool(f"--input={recordio_dir / 'validation.rec'}", f"--output={tmp_path}", "--shards=3", "--workers=1")
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert (m["num_images"], m["num_classes"], m["skipped"]) == (229, 25, [])
    lst = {}
    for line in (recordio_dir / "validation.lst").read_text().splitlines():
        key, label, path = line.split("\t")
        lst[int(key)] = (int(float(label)), path.split("/")[0])
    exs = all_examples(tmp_path)
    assert len(exs) == 229
    for e in exs:
        label, name = lst[int(e["source"].split("#")[1])]
        assert e["label"] == label and m["class_names"][label] == name


@pytest.mark.slow
def test_sigkill_then_rerun_completes_without_duplicates(tmp_path):
    src = write_synthetic_folder(tmp_path / "in", num_identities=60, images_per_identity=50, seed=3)  # 3000
    out = tmp_path / "out"
    args = [sys.executable, TOOL, "--progress=false", f"--input={src}", f"--output={out}", "--shards=12",
            "--workers=2", "--align=none"]
    proc = subprocess.Popen(args, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while not list(out.glob("*.tfrecord")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)  # the tool and its worker processes, all at once
    finally:
        proc.wait()
    done = list(out.glob("*.tfrecord"))
    if (out / "manifest.json").exists() or len(done) == 12:
        pytest.fail("the run finished before it could be killed; make the input larger")
    assert done, "no shard was complete when killed"
    finished = {p.name: p.stat().st_mtime_ns for p in done if Path(str(p) + ".done.json").exists()}
    # No half shard under a final name: every visible shard is complete and readable.
    for p in done:
        assert len(read_examples(p)) == 250
    run_tool(f"--input={src}", f"--output={out}", "--shards=12", "--workers=2", "--align=none")
    m = json.loads((out / "manifest.json").read_text())
    assert m["num_images"] == 3000 and m["skipped"] == [] and m["synthetic"] is True
    sources = [e["source"] for e in all_examples(out)]
    assert len(sources) == 3000 and len(set(sources)) == 3000
    assert not list(out.glob("*.tmp-*")) and not leftover_temps(out)
    # Shards recorded as finished before the kill were kept, not redone.
    for name, mtime in finished.items():
        assert (out / name).stat().st_mtime_ns == mtime, name


# ----------------------------------------------------------------------------------------------- AT&T, real faces
@pytest.fixture(scope="module")
def att_prepared(att_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("att")
    t = time.time()
    proc = run_tool(f"--input={att_dir}", f"--output={out}", "--align=mtcnn", "--shards=4", "--workers=2")
    return out, json.loads((out / "manifest.json").read_text()), time.time() - t, proc.stdout


@pytest.mark.slow
def test_att_all_inputs_accounted_nearly_all_aligned(att_prepared):
    out, m, seconds, stdout = att_prepared
    print(f"AT&T: {m['num_images']}/390 aligned by MTCNN in {seconds:.1f}s; skipped: {m['skipped']}")
    assert m["num_inputs"] == 390 and m["num_images"] + len(m["skipped"]) == 390
    assert m["num_classes"] == 39 and m["aligned_by"]["mtcnn"] == m["num_images"]
    assert m["num_images"] >= 380  # "nearly all"; the exact count is printed above and in the README
    counts = Counter(e["label"] for e in all_examples(out))
    assert len(counts) == 39 and sum(counts.values()) == m["num_images"]


@pytest.mark.slow
def test_att_aligned_eyes_on_template(att_prepared):
    out, m, _, _ = att_prepared
    exs = all_examples(out)[::13]  # 30 crops spread over the identities
    aligner = FaceAligner()
    errs = []
    for e in exs:
        _, _, marks = aligner.detect(decode_image_rgb(e["jpeg"]))
        assert len(marks), f"no face re-detected in aligned crop {e['source']}"
        errs.append(np.abs(marks[0, :2] - ARCFACE_TEMPLATE[:2]).max())
    print(f"eye offset from template: mean {np.mean(errs):.2f}px, max {np.max(errs):.2f}px")
    assert np.mean(errs) < 3.0 and np.max(errs) < 6.0


# ----------------------------------------------------------------------------------------------- issue 10 inputs
def _copy_tree(src: Path, dst: Path):
    """Copies a read-only case folder file by file (hidden entries included), so the copy stays writable."""
    for f in src.rglob("*"):
        if f.is_file():
            (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (dst / f.relative_to(src)).write_bytes(f.read_bytes())
    return dst


def _exif_jpeg(stored_rgb, orientation) -> bytes:
    from PIL import Image
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(stored_rgb)).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.shared_data
def test_hidden_entries_subfolders_and_exif_photos(tmp_path):
    """hidden-dir-becomes-class + exif-orientation: hidden entries are never classes, photos in sub-folders
    belong to their identity, everything left out is counted with a reason, and EXIF-rotated photos are stored
    upright (a 112x112 crop re-encoded, a phone photo aligned by the real MTCNN)."""
    from test_images import case

    src = _copy_tree(case("hidden-dir-becomes-class", "photos"), tmp_path / "in")
    assert (src / ".ipynb_checkpoints" / "0000-checkpoint.jpg").is_file()
    for rel in ["synthetic_id0000/.DS_Store", "synthetic_id0000/._0001.jpg", "__MACOSX/synthetic_id0000/._0000.jpg",
                "synthetic_id0002/notes.txt", "stray.jpg"]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b"\x00\x05\x16\x07 not a photo")
    crop = render_identity(0, 2, 1)[0]
    (src / "synthetic_id0002" / "rotated.jpg").write_bytes(_exif_jpeg(np.rot90(crop, 1), 6))
    exif_case = case("exif-orientation")
    (src / "phone_person").mkdir()
    for name in ("face_upright.jpg", "face_exif6.jpg"):
        (src / "phone_person" / name).write_bytes((exif_case / name).read_bytes())

    out = tmp_path / "out"
    run_tool(f"--input={src}", f"--output={out}", "--shards=1", "--workers=1")
    m = json.loads((out / "manifest.json").read_text())
    assert m["class_names"] == ["phone_person", "synthetic_id0000", "synthetic_id0001", "synthetic_id0002"]
    reasons = {s["path"]: s["reason"] for s in m["skipped"]}
    assert set(reasons) == {".ipynb_checkpoints", "__MACOSX", "synthetic_id0000/.DS_Store",
                            "synthetic_id0000/._0001.jpg", "synthetic_id0002/notes.txt", "stray.jpg"}
    assert "hidden" in reasons[".ipynb_checkpoints"] and "not an image" in reasons["synthetic_id0002/notes.txt"]
    assert "not inside an identity folder" in reasons["stray.jpg"]
    assert m["num_images"] == 3 + 4 + 4 + 2 and m["num_images"] + len(m["skipped"]) == m["num_inputs"] == 19
    exs = {e["source"]: e for e in all_examples(out)}
    assert exs["synthetic_id0001/2019/extra.jpg"]["label"] == 2
    assert {e["label"] for s, e in exs.items() if s.startswith("synthetic_id0000/")} == {1}
    rotated = decode_image_rgb(exs["synthetic_id0002/rotated.jpg"]["jpeg"])
    err_upright, err_sideways = (np.abs(rotated.astype(int) - c).mean() for c in (crop, np.rot90(crop, 1)))
    assert err_upright < 10 and err_upright < err_sideways / 2, (err_upright, err_sideways)  # stored upright
    up, side = (decode_image_rgb(exs[f"phone_person/{n}"]["jpeg"]) for n in ("face_upright.jpg", "face_exif6.jpg"))
    assert np.abs(up.astype(int) - side).mean() < 8  # the same aligned face from both


@pytest.mark.shared_data
def test_recordio_split_record_stored_whole(tmp_path):
    from test_images import case

    d = case("recordio-split-record-corrupted")
    run_tool(f"--input={d / 'train.rec'}", f"--output={tmp_path}", "--shards=1", "--workers=1")
    exs = {e["source"]: e for e in all_examples(tmp_path)}
    assert len(exs) == 3 and exs["train.rec#0"]["jpeg"] == (d / "record0_true_image.jpg").read_bytes()


@pytest.mark.shared_data
def test_lst_absolute_paths_give_folder_names(tmp_path):
    from test_images import case

    d = case("lst-absolute-paths-empty-names")
    run_tool(f"--input={d / 'train.rec'}", f"--output={tmp_path}", "--shards=1", "--workers=1")
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["class_names"] == ["Alice_Example", "Bob_Example", "Carol_Example"]


# ----------------------------------------------------------------------------------------------- reliability
def test_nfc_nfd_folders_are_one_class_and_every_pillow_format_is_read(tmp_path):
    """identify-nfc-nfd-same-name-split and identify-drops-avif-jfif-photos, for training data: an identity folder
    written in NFC and in NFD is one class (and the tool says it merged them); .avif / .jfif / .tif / .gif crops
    are images (Pillow reads them); a .heic without pillow-heif is skipped with the plugin to install, counted."""
    import unicodedata

    from PIL import Image

    nfc = unicodedata.normalize("NFC", "Renée_Williams")
    nfd = unicodedata.normalize("NFD", nfc)
    inp = tmp_path / "in"
    faces = render_identity(0, 0, 4)
    for (folder, name), face in zip(((nfc, "0.avif"), (nfc, "1.jfif"), (nfd, "2.tif"), ("Tony", "0.gif")), faces):
        (inp / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(face).save(inp / folder / name, format="JPEG" if name.endswith(".jfif") else None)
    (inp / "Tony" / "iphone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    out = tmp_path / "out"
    proc = run_tool(f"--input={inp}", f"--output={out}", "--align=none", "--shards=1", "--workers=1")
    m = json.loads((out / "manifest.json").read_text())
    assert m["class_names"] == [nfc, "Tony"] and m["class_counts"] == [3, 1], m
    assert m["version"] == 2 and m["num_inputs"] == 5
    assert [s["path"] for s in m["skipped"]] == ["Tony/iphone.heic"]
    assert "pip install pillow-heif" in m["skipped"][0]["reason"]
    assert "merged into one identity" in proc.stderr and ascii(nfd) in proc.stderr


def _jpeg(face) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(face, cv2.COLOR_RGB2BGR))[1].tobytes()


@pytest.mark.slow  # a prepare_data subprocess (TensorFlow start-up): about 35 s on 2 shared cores
def test_case_variant_folders_are_one_class_and_a_symlink_to_the_root_is_skipped(tmp_path):
    """prepare-case-variant-folders-two-classes: `Colin_Powell/` and `colin_powell/`, `Tony Blair/` and
    `Tony_Blair/` are one class each (the name rule of --exclude_names), with a warning naming both folders and
    the merge in the manifest. prepare-symlink-loop-duplicates-classes: `Tony_Blair/all -> ..` is not followed,
    so no class gets other people's photos; it is skipped with its reason and counted."""
    from mobiface_tf.data.people import canonical_name

    inp = tmp_path / "in"
    colin, tony, serena = render_identity(0, 0, 4), render_identity(0, 1, 3), render_identity(0, 2, 2)
    for folder, faces in (("Colin_Powell", colin[:2]), ("colin_powell", colin[2:]), ("Tony Blair", tony[:1]),
                          ("Tony_Blair", tony[1:]), ("Serena", serena)):
        (inp / folder).mkdir(parents=True)
        for k, face in enumerate(faces):
            (inp / folder / f"{folder}_{k}.jpg").write_bytes(_jpeg(face))
    try:
        os.symlink("..", inp / "Tony_Blair" / "all")  # a link back to the root (a loop)
    except (OSError, NotImplementedError) as e:
        pytest.skip(f"cannot make symlinks here: {e}")
    out = tmp_path / "out"
    proc = run_tool(f"--input={inp}", f"--output={out}", "--align=none", "--shards=1", "--workers=1")
    m = json.loads((out / "manifest.json").read_text())
    assert m["class_names"] == ["Colin_Powell", "Serena", "Tony Blair"] and m["class_counts"] == [4, 2, 3], m
    assert m["merged_identities"] == [{"identity": "Colin_Powell", "folders": ["Colin_Powell", "colin_powell"]},
                                      {"identity": "Tony Blair", "folders": ["Tony Blair", "Tony_Blair"]}]
    assert "'Colin_Powell' and 'colin_powell'" in proc.stderr and "'Tony Blair' and 'Tony_Blair'" in proc.stderr
    assert "merged into one identity" in proc.stderr
    reasons = {s["path"]: s["reason"] for s in m["skipped"]}
    assert set(reasons) == {"Tony_Blair/all"} and "symlink to an ancestor folder" in reasons["Tony_Blair/all"]
    assert m["num_inputs"] == 10 and m["num_images"] == 9 and "skipped 1 of 10 inputs" in proc.stdout
    exs = all_examples(out)
    assert sorted(Counter(e["source"] for e in exs).values()) == [1] * 9  # every photo once, under one label
    for e in exs:
        assert canonical_name(m["class_names"][e["label"]]) == canonical_name(e["source"].split("/")[0]), e["source"]


@pytest.mark.slow  # a prepare_data subprocess (TensorFlow start-up), twice
def test_folder_name_not_utf8_is_read_and_stored_escaped(tmp_path):
    """prepare-latin1-folder-name-aborts: a folder named in Latin-1 (`Jos\\xe9_Maria`, a zip made on Windows)
    no longer aborts the run: its photos are written, and its name is stored as valid UTF-8 text, escaped, in the
    class names, the shards' sources, the skipped list and the done-files; a rerun keeps the finished shard."""
    inp = tmp_path / "in"
    raw = os.path.join(os.fsencode(inp), b"Jos\xe9_Maria")
    try:
        os.makedirs(raw)
    except OSError as e:
        pytest.skip(f"this file system refuses a folder name that is not UTF-8: {e}")
    jose, tony = render_identity(0, 0, 2), render_identity(0, 1, 2)
    for k, face in enumerate(jose):
        with open(os.path.join(raw, b"%d.jpg" % k), "wb") as f:
            f.write(_jpeg(face))
    with open(os.path.join(raw, b"notes.txt"), "wb") as f:
        f.write(b"not a photo")
    (inp / "Tony_Blair").mkdir()
    for k, face in enumerate(tony):
        (inp / "Tony_Blair" / f"{k}.jpg").write_bytes(_jpeg(face))
    out = tmp_path / "out"
    args = (f"--input={inp}", f"--output={out}", "--align=none", "--shards=1", "--workers=1")
    proc = run_tool(*args)
    assert "wrote 4 images of 2 classes" in proc.stdout and "skipped 1 of 5 inputs" in proc.stdout
    for path in [out / "manifest.json", *out.glob("*.done.json")]:
        text = path.read_bytes().decode("utf-8")  # strict: valid UTF-8
        assert "\\udc" not in text, (path.name, text)  # no surrogate escape stored as a name
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert m["class_names"] == ["Jos\\xe9_Maria", "Tony_Blair"] and m["class_counts"] == [2, 2]
    assert [s["path"] for s in m["skipped"]] == ["Jos\\xe9_Maria/notes.txt"]
    assert sorted((e["source"], e["label"]) for e in all_examples(out)) == [
        ("Jos\\xe9_Maria/0.jpg", 0), ("Jos\\xe9_Maria/1.jpg", 0), ("Tony_Blair/0.jpg", 1), ("Tony_Blair/1.jpg", 1)]
    rerun = run_tool(*args)
    assert "rebuilding" not in rerun.stderr and json.loads((out / "manifest.json").read_text())["rebuilt"] == []


def test_manifest_version_is_written_and_old_manifests_are_read(tmp_path):
    """The manifest carries a version (2: the teacher's sha256 is mobiface_tf.fingerprint's); a manifest from
    before the field existed is still read, and one from a newer version is refused with one line."""
    from mobiface_tf.data.manifest import MANIFEST_VERSION, ManifestError, read_manifest, write_manifest

    base = {"num_images": 0, "num_classes": 0, "class_names": [], "skipped": [], "shards": []}
    write_manifest(tmp_path, dict(base))
    assert read_manifest(tmp_path)["version"] == MANIFEST_VERSION == 2
    (tmp_path / "manifest.json").write_text(json.dumps(base))  # an old manifest: no version
    assert "version" not in read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps(dict(base, version=3)))
    with pytest.raises(ManifestError, match="version 3"):
        read_manifest(tmp_path)
