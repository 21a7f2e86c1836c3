"""Issue 16: faults that used to end with a wrong answer and exit 0, or fail late / misleadingly.

Each test pins the right behaviour of one fault kind (the case folder under ../shared/cases is named):
finite checkpoints and models, meaningful thresholds, fresh shards, checked labels, JPEG trailers, early
input checks, damaged checkpoints, models checked at load, full disks, signals, calibration size.
Fast tests use synthetic data and tiny real models; real-data ones are marked shared_data.
"""
import json
import logging
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import train_config
from mobiface_tf import sidecar
from mobiface_tf.data.sources import IRHeader, RecordIOReader, pack_ir, write_recordio
from mobiface_tf.embedder import EmbeddingError, load_embedder
from mobiface_tf.evaluate import verification_report

from conftest import REPO  # noqa: E402  (the repo root, one definition for every test file)
CASES = (REPO / ".." / "shared" / "cases").resolve()
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONDONTWRITEBYTECODE="1")


def _faces(folder: Path, names, n=2, seed=0, ext=".jpg"):
    """Synthetic 112x112 "faces" (seeded noise) in folder/<name>/<i>.jpg."""
    rng = np.random.default_rng(seed)
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(folder / name / f"{i}{ext}"), rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))
    return folder


def _tiny_keras(path, size=112, nan=False):
    import keras

    inp = keras.Input((size, size, 3))
    x = keras.layers.AveragePooling2D(8)(keras.layers.Rescaling(1 / 128, offset=-1)(inp))
    dense = keras.layers.Dense(8)
    out = dense(keras.layers.Flatten()(x))
    model = keras.Model(inp, out)
    if nan:
        dense.kernel.assign(np.full(dense.kernel.shape, np.nan, np.float32))
    model.save(path)
    return path


# ============================================================================ 1. finite or nothing
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny real training run: 4 steps, checkpoints at 2 and 4 (nan-guard-saves-inf-bn-stats/)."""
    from mobiface_tf.data.synthetic import write_synthetic_tfrecords
    from mobiface_tf.training.loop import train_model

    root = tmp_path_factory.mktemp("train")
    write_synthetic_tfrecords(root / "data", num_identities=4, images_per_identity=4, seed=0, shards=1)
    kw = dict(embedding_dim=16, batch_size=8, steps=4, ckpt_every=2, log_every=1, lr=0.01, shuffle_buffer=16)
    result = train_model(train_config(root / "data", root / "run", **kw))
    return root, kw, result


def _write_checkpoint(result, prefix, poison=False):
    """Save the trained backbone under `prefix`; poison=True puts +Inf in a BN moving variance first."""
    import tensorflow as tf

    net = result.parts.backbone
    var = next(v for v in net.variables if "moving_variance" in v.path)
    old = var.numpy()
    if poison:
        var.assign(np.full(old.shape, np.inf, np.float32))
    try:
        tf.train.Checkpoint(backbone=net).write(str(prefix))
    finally:
        var.assign(old)
    return var.path


def test_resume_refuses_a_non_finite_checkpoint_and_names_the_finite_one(trained, tmp_path):
    import shutil

    from mobiface_tf.training.checkpoints import checkpoint_problem, pick_checkpoint
    from mobiface_tf.training.loop import train

    root, kw, result = trained
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    ckpts = run / "checkpoints"
    assert pick_checkpoint(ckpts) == str(ckpts / "ckpt-4")
    name = _write_checkpoint(result, ckpts / "ckpt-6", poison=True)
    assert checkpoint_problem(ckpts / "ckpt-6").startswith("non-finite")
    with pytest.raises(ValueError, match=r"ckpt-6 holds NaN/Inf.*newest finite checkpoint is .*ckpt-4.*--resume_from"):
        pick_checkpoint(ckpts)
    with pytest.raises(ValueError, match="ckpt-6 holds NaN/Inf"):  # the trainer itself, before step 1
        train(train_config(root / "data", run, **dict(kw, steps=8)))
    assert "moving_variance" in name
    assert pick_checkpoint(ckpts, str(ckpts / "ckpt-4")) == str(ckpts / "ckpt-4")
    with pytest.raises(ValueError, match="--resume_from=.*ckpt-6.*non-finite"):
        pick_checkpoint(ckpts, str(ckpts / "ckpt-6"))


def test_truncated_newest_checkpoint_is_named_and_an_older_one_used(trained, tmp_path, caplog):
    import shutil

    from mobiface_tf.training.checkpoints import pick_checkpoint
    from mobiface_tf.training.loop import train

    root, kw, _ = trained
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    data = run / "checkpoints" / "ckpt-4.data-00000-of-00001"
    os.truncate(data, data.stat().st_size // 2)  # a full disk during a copy
    with caplog.at_level(logging.WARNING, logger="mobiface_tf.training"):
        assert pick_checkpoint(run / "checkpoints") == str(run / "checkpoints" / "ckpt-2")
    assert any("ckpt-4 is damaged" in r.getMessage() for r in caplog.records)
    out = train(train_config(root / "data", run, **dict(kw, steps=6)))  # resumes from ckpt-2, goes on
    assert out["start_step"] == 2 and out["final_step"] == 6


def test_no_embedding_model_from_non_finite_weights(trained, tmp_path):
    from mobiface_tf.training.embedding import save_embedding_model
    from mobiface_tf.training.errors import TrainingDiverged

    _, _, result = trained
    net = result.parts.backbone
    var = next(v for v in net.variables if "moving_variance" in v.path)
    old = var.numpy()
    var.assign(np.full(old.shape, np.nan, np.float32))
    try:
        with pytest.raises(TrainingDiverged, match="NaN/Inf embeddings on a probe batch"):
            save_embedding_model(net, "mobiface", 16, "gdc", tmp_path / "embedding.keras")
    finally:
        var.assign(old)
    assert not (tmp_path / "embedding.keras").exists()
    assert save_embedding_model(net, "mobiface", 16, "gdc", tmp_path / "embedding.keras").is_file()


def test_sigterm_saves_a_checkpoint_and_stops_with_one_line(trained, tmp_path):
    from mobiface_tf.training.errors import TrainingInterrupted
    from mobiface_tf.training.loop import train

    root, kw, _ = trained

    class KillOnFirstStep(logging.Handler):  # the signal arrives while the loop runs, as from a scheduler
        def emit(self, record):
            if record.getMessage().startswith("step 1/"):
                os.kill(os.getpid(), signal.SIGTERM)

    handler = KillOnFirstStep()
    log = logging.getLogger("mobiface_tf.training")
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    try:
        with pytest.raises(TrainingInterrupted, match=r"stopped by SIGTERM at step 1; saved checkpoint .*ckpt-1"):
            train(train_config(root / "data", tmp_path / "run", **dict(kw, steps=50)))
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    assert (tmp_path / "run" / "checkpoints" / "ckpt-1.index").is_file()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_nan_model_never_answers(tmp_path, capsys):
    from mobiface_tf import verify as ver

    model = _tiny_keras(tmp_path / "nan.keras", nan=True)
    with pytest.raises(EmbeddingError, match="NaN/Inf embeddings"):
        load_embedder(model).embed(np.zeros((2, 112, 112, 3), np.uint8))
    face = tmp_path / "a.png"
    cv2.imwrite(str(face), np.full((112, 112, 3), 100, np.uint8))
    rc = ver.run(str(model), [str(face), str(face)], aligned=True, out=sys.stdout, err=sys.stderr)
    out, err = capsys.readouterr()
    assert rc == 1 and out == "" and len(err.splitlines()) == 1 and "NaN/Inf embeddings" in err
    with pytest.raises(ValueError, match="NaN/Inf"):  # evaluate: no report, so no threshold
        verification_report([0.5, float("nan")], [True, False], [0, 1])


# ============================================================================ 2. thresholds that mean something
def test_one_sided_set_gives_a_rate_and_no_threshold(tmp_path):
    report = verification_report(np.linspace(0.1, 0.9, 20), np.ones(20, bool), np.arange(20) % 10)
    assert report["accuracy"] is None and report["threshold"] is None
    assert report["true_accept_rate"] == pytest.approx(np.mean(np.linspace(0.1, 0.9, 20) > 0.275))
    assert "both same and different" in report["one_sided"]
    with pytest.raises(sidecar.SidecarError, match="20 same and 0 different"):
        sidecar.write_sidecar(tmp_path / "m.tflite", report)
    assert not sidecar.sidecar_path(tmp_path / "m.tflite").exists()
    neg = verification_report([0.1, 0.2], [False, False], [0, 1])
    assert neg["true_reject_rate"] == 1.0 and neg["threshold"] is None
    both = verification_report([0.1, 0.2, 0.8, 0.9] * 5, [False, False, True, True] * 5, np.arange(20) % 10)
    assert -1 <= both["threshold"] <= 1


def test_sidecar_threshold_range_and_counts(tmp_path, caplog):
    from mobiface_tf.faces import DEFAULT_THRESHOLD, FaceError, resolve_threshold

    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    ok = {"threshold": 0.4, "num_positive": 100, "num_negative": 100}  # sidecar.MIN_PAIRS_PER_KIND of each
    with pytest.raises(sidecar.SidecarError, match=r"not a number in \[-1, 1\]"):
        sidecar.write_sidecar(model, dict(ok, threshold=-1.17))
    assert sidecar.write_sidecar(model, ok) == sidecar.sidecar_path(model)
    assert sidecar.read_threshold(model) == 0.4
    sidecar.sidecar_path(model).write_text(json.dumps(dict(ok, threshold=-1.17)))  # an old, wrong one
    with pytest.raises(FaceError, match=r"m\.tflite\.eval\.json.*not a number in \[-1, 1\]"):
        resolve_threshold(model)
    sidecar.sidecar_path(model).write_text(json.dumps({"threshold": 0.6854}))  # no pair counts: ignored
    with caplog.at_level(logging.WARNING, logger="mobiface_tf.sidecar"):
        assert resolve_threshold(model)[0] == DEFAULT_THRESHOLD
    assert any("ignoring threshold sidecar" in r.getMessage() and "m.tflite.eval.json" in r.getMessage()
               for r in caplog.records)
    from mobiface_tf import embedder, evaluate  # the old import paths still work

    assert evaluate.write_sidecar is embedder.write_sidecar is sidecar.write_sidecar


@pytest.mark.shared_data
def test_evaluate_cli_on_all_positive_bin_writes_no_sidecar(tmp_path, reference_tflite, shared_data):
    bin_path = shared_data / "bin" / "validation.bin"
    if not bin_path.is_file():
        pytest.skip(f"{bin_path} not found")
    model = tmp_path / "ref.tflite"
    model.symlink_to(reference_tflite)
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "evaluate.py"), f"--model={model}",
                           f"--bin={bin_path}", f"--output={tmp_path / 'r.json'}", "--progress=false"],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "true accept rate" in proc.stdout and "no threshold sidecar written" in proc.stderr
    assert not sidecar.sidecar_path(model).exists()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["threshold"] is None and report["accuracy"] is None and report["sidecar"] is None


# ============================================================================ 3. fresh shards, locks, --output
def _prepare(inp, out, **kw):
    from mobiface_tf.data.prepare import prepare

    return prepare(str(inp), str(out), align="none", shards=kw.pop("shards", 2), workers=1, progress=False, **kw)


def _shard_sources(out):
    from mobiface_tf.data.tfrecord import read_examples

    return {e["source"]: e["jpeg"] for f in sorted(out.glob("*.tfrecord")) for e in read_examples(str(f))}


def _sources_by_shard(out):
    from mobiface_tf.data.tfrecord import read_examples

    return {f.name: {e["source"] for e in read_examples(str(f))} for f in sorted(out.glob("*.tfrecord"))}


def test_changed_inputs_rebuild_their_shards(tmp_path):
    """A fixed, replaced or rewritten input rebuilds exactly the shard it lands in, and no other: the changes
    are made in two different shards, and a third shard that holds neither must be reused byte for byte."""
    inp = _faces(tmp_path / "in", ["A", "B", "C"], n=4)
    (inp / "B" / "9.jpg").write_bytes(b"")  # skipped: zero bytes
    out = tmp_path / "out"
    first = _prepare(inp, out, shards=4)
    assert len(first["skipped"]) == 1 and first["rebuilt"] == []
    assert _prepare(inp, out, shards=4)["rebuilt"] == []  # unchanged: every shard reused
    by_shard = _sources_by_shard(out)
    shard_of = {src: shard for shard, srcs in by_shard.items() for src in srcs}
    replaced = "A/0.jpg"
    other = next(src for src in sorted(shard_of) if shard_of[src] != shard_of[replaced])
    untouched = sorted(set(by_shard) - {shard_of[replaced], shard_of[other]})
    assert untouched, by_shard
    before = {shard: (out / shard).read_bytes() for shard in untouched}

    cv2.imwrite(str(inp / replaced), np.full((112, 112, 3), 200, np.uint8))  # replaced: one shard only
    m = _prepare(inp, out, shards=4)
    assert {r["shard"] for r in m["rebuilt"]} == {shard_of[replaced]}, m["rebuilt"]
    assert _shard_sources(out)[replaced] == (inp / replaced).read_bytes()

    cv2.imwrite(str(inp / other), np.full((112, 112, 3), 50, np.uint8))  # rewritten, in another shard
    m = _prepare(inp, out, shards=4)
    assert {r["shard"] for r in m["rebuilt"]} == {shard_of[other]}, m["rebuilt"]
    assert all((out / shard).read_bytes() == data for shard, data in before.items())  # reused as they were

    cv2.imwrite(str(inp / "B" / "9.jpg"), np.zeros((112, 112, 3), np.uint8))  # fixed: it is read now
    m = _prepare(inp, out, shards=4)
    assert m["skipped"] == [] and m["num_images"] == 13 and m["rebuilt"]
    assert "B/9.jpg" in _shard_sources(out)
    (inp / "A" / "1.jpg").unlink()  # removed: inputs move between shards, all rebuilt
    m = _prepare(inp, out, shards=4)
    assert len(m["rebuilt"]) == 4 and "A/1.jpg" not in _shard_sources(out)


def test_output_lock_and_output_file(tmp_path):
    inp = _faces(tmp_path / "in", ["A", "B"], n=1)
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom mobiface_tf.locks import OutputLock\n"
                               "OutputLock(sys.argv[1]).acquire()\nprint('held', flush=True)\ntime.sleep(60)",
                               str(out)], stdout=subprocess.PIPE, text=True, env=ENV, cwd=REPO)
    try:  # a live process holds it
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=rf"being written by another prepare_data run \(pid {holder.pid}; "
                                             r".*\.prepare\.lock"):
            _prepare(inp, out)
    finally:
        holder.kill()
        holder.wait()
    assert (out / ".prepare.lock").exists()  # left by a killed run: taken over
    assert _prepare(inp, out)["num_images"] == 2 and not (out / ".prepare.lock").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is an existing file"):
        _prepare(inp, tmp_path / "file")


def test_full_disk_during_prepare_is_one_line_and_a_rerun_resumes(tmp_path):
    inp = _faces(tmp_path / "in", ["A", "B", "C"], n=4)
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "tools" / "prepare_data.py"), f"--input={inp}", f"--output={out}",
           "--shards=3", "--workers=1", "--align=none", "--progress=false"]
    one = len(cv2.imencode(".jpg", np.zeros((112, 112, 3), np.uint8))[1])

    def small_disk():  # files above ~5 images cannot grow: EFBIG, as a full disk gives ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (one * 4, one * 4))

    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300, preexec_fn=small_disk)
    assert proc.returncode != 0
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "cannot write shard" in err[0] and str(out) in err[0], proc.stderr[-2000:]
    assert not (out / "manifest.json").exists()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "manifest.json").read_text())["num_images"] == 12


# ============================================================================ 4. checked RecordIO labels
def _rec(tmp_path, labels, name="train.rec", header_ids=None):
    jpeg = cv2.imencode(".jpg", np.full((112, 112, 3), 90, np.uint8))[1].tobytes()
    records = []
    if header_ids is not None:  # InsightFace layout: header at key 0, images 1..n, identity records after
        n = len(labels)
        records.append((0, pack_ir(IRHeader(2, (n + 1.0, n + 1.0 + header_ids), 0, 0), b"")))
    records += [(k + (1 if header_ids is not None else 0), pack_ir(IRHeader(0, (float(lab),), k, 0), jpeg))
                for k, lab in enumerate(labels)]
    write_recordio(tmp_path / name, records)
    return tmp_path / name


@pytest.mark.parametrize("bad, why", [(-1.0, "negative"), (float("nan"), "not a number"), (1.5, "not an integer"),
                                      (3.0e7, "implausible")])
def test_bad_recordio_labels_are_skipped_with_file_and_offset(tmp_path, bad, why):
    from mobiface_tf.data.prepare import prepare

    rec = _rec(tmp_path, [0, 1, bad, 1])
    m = prepare(str(rec), str(tmp_path / "out"), align="none", workers=1, progress=False)
    assert m["num_images"] == 3 and sum(m["class_counts"]) == m["num_images"] and m["num_classes"] == 2
    (sk,) = m["skipped"]
    offset = RecordIOReader(rec).index[2]
    assert why in sk["reason"] and str(rec) in sk["reason"] and f"offset {offset}" in sk["reason"]


def test_labels_beyond_the_header_identity_range_and_upper_case_rec(tmp_path):
    from mobiface_tf.data.prepare import prepare

    rec = _rec(tmp_path, [0, 1, 2, 7], name="TRAIN.REC", header_ids=3)  # header: 3 identities
    m = prepare(str(rec), str(tmp_path / "out"), align="none", workers=1, progress=False)
    assert m["source"] == "recordio" and m["num_images"] == 3 and m["num_classes"] == 3
    assert "implausible" in m["skipped"][0]["reason"] and "< 3" in m["skipped"][0]["reason"]


# ============================================================================ 5. JPEG trailers
def test_jpeg_with_trailer_reads_and_truncated_jpeg_is_refused():
    from mobiface_tf.images import ImageError, decode_image_rgb

    image = np.random.default_rng(0).integers(0, 255, (64, 48, 3), dtype=np.uint8)
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    motion = jpeg + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40  # a "motion photo": video after EOI
    np.testing.assert_array_equal(decode_image_rgb(motion), decode_image_rgb(jpeg))
    progressive = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert decode_image_rgb(progressive + b"TRAILER").shape == (64, 48, 3)
    with pytest.raises(ImageError, match="truncated JPEG"):
        decode_image_rgb(jpeg[:len(jpeg) * 2 // 3])


@pytest.mark.shared_data
def test_jpeg_trailer_case_reads_like_the_clean_photo():
    from mobiface_tf.images import load_image_rgb

    d = CASES / "jpeg-trailer-after-eoi" / "photos" / "person"
    if not d.is_dir():
        pytest.skip(f"{d} not found")
    np.testing.assert_array_equal(load_image_rgb(d / "15_trailer_after_eoi.jpg"), load_image_rgb(d / "01_good.jpg"))


# ============================================================================ 6. early checks
def test_trainer_checks_val_files_before_step_1(trained, tmp_path):
    import pickle

    from mobiface_tf.training.config import TrainConfig, check_flagfile_paths
    from mobiface_tf.training.loop import train

    root, kw, _ = trained
    with pytest.raises(ValueError, match=r"^--val_bin='/nonexistent/lfw.bin': .*--val_bin="):
        train(train_config(root / "data", tmp_path / "r1", **dict(kw, val_bin="/nonexistent/lfw.bin", val_every=2)))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(pickle.dumps({"not": "a bin"}))
    with pytest.raises(ValueError, match="^--val_bin="):
        train(train_config(root / "data", tmp_path / "r2", **dict(kw, val_bin=str(junk), val_every=2)))
    with pytest.raises(ValueError, match="^--val_pairs="):
        train(train_config(root / "data", tmp_path / "r3", **dict(kw, val_pairs=str(tmp_path / "no_pairs.txt"),
                                                                  val_lfw_dir=str(tmp_path), val_every=2)))
    assert not (tmp_path / "r1" / "checkpoints").exists()  # nothing trained
    # A flagfile's relative path that only exists next to the flagfile gets a hint.
    (tmp_path / "cfg" / "shards").mkdir(parents=True)
    flagfile = tmp_path / "cfg" / "train.flags"
    cfg = TrainConfig(data="shards", model_dir="m")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(ValueError, match=r"--data='shards' does not exist from the current directory.*flagfile"):
            check_flagfile_paths(cfg, ["train", f"--flagfile={flagfile}"])
    finally:
        os.chdir(cwd)


# ============================================================================ 8. models checked at load
def test_models_are_checked_when_loaded(tmp_path):
    from mobiface_tf.faces import FaceError, load_model

    _tiny_keras(tmp_path / "m96.keras", size=96)
    with pytest.raises(ValueError, match=r"takes \[N, 96, 96, 3\] images; aligned faces are \[N, 112, 112, 3\]"):
        load_embedder(tmp_path / "m96.keras")
    assert load_embedder(tmp_path / "m96.keras", input_size=96).input_hwc == (96, 96, 3)
    (tmp_path / "text.keras").write_text("not a model\n")
    with pytest.raises(FaceError, match=r"not a Keras model file: .*text\.keras") as e:
        load_model(tmp_path / "text.keras")
    assert "not found" not in str(e.value)


@pytest.mark.shared_data
def test_wrong_input_size_tflite_is_refused_before_detection(tmp_path, lfw_dir, capsys):
    from mobiface_tf import verify as ver

    model = CASES / "wrong-input-size-model-traceback" / "wrong96.tflite"
    if not model.is_file():
        pytest.skip(f"{model} not found")
    photo = lfw_dir / "Colin_Powell" / "Colin_Powell_0001.jpg"
    rc = ver.run(str(model), [str(photo), str(photo)], threshold=0.3, out=sys.stdout, err=sys.stderr)
    err = capsys.readouterr().err
    assert rc == 1 and len(err.splitlines()) == 1 and "96, 96, 3" in err and "112, 112, 3" in err


# ============================================================================ 9. calibration
def test_int8_calibration_needs_enough_faces_and_skips_hidden_files(tmp_path):
    from mobiface_tf.export.faces import load_calibration_faces

    folder = _faces(tmp_path / "calib", ["a"], n=3, ext=".png")
    (folder / "a" / "._0.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # macOS litter: not a face
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    with pytest.raises(ValueError, match=r"holds only 3 faces.*--allow_few_calibration"):
        load_calibration_faces(folder, 100)
    assert load_calibration_faces(folder, 100, allow_fewer=True).shape == (3, 112, 112, 3)
