"""Knowledge distillation: ONNX teachers, teacher embeddings stored in the shards, the held-out LFW protocol
(fold exclusion, --folds), and distillation in the trainer (learning, mirror targets, resume, Mirrored)."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import (checkpoint_float_vars, kill_after_first_checkpoint, make_onnx_embedder, onnx_reference,
                      train_config)

from conftest import REPO  # noqa: E402  (the repo root, one definition for every test file)
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def synthetic_faces(n, seed=0):
    from mobiface_tf.data import synthetic

    return np.concatenate([synthetic.render_identity(seed, i, 2) for i in range((n + 1) // 2)])[:n]


# ----------------------------------------------------------------------------------------------- ONNX
@pytest.mark.parametrize("layout,batch", [("nchw", None), ("nhwc", None), ("nchw", 1), ("nhwc", 3)])
def test_onnx_embedder_matches_numpy_reference(tmp_path, layout, batch):
    from mobiface_tf.embedder import PREPROCESS, l2_normalize, load_embedder

    path, w = make_onnx_embedder(tmp_path / "t.onnx", dim=12, layout=layout, batch=batch)
    emb = load_embedder(path, "arcface", batch_size=4)
    assert emb.embedding_dim == 12 and emb.input_hwc == (112, 112, 3)
    images = synthetic_faces(5)
    want = l2_normalize(onnx_reference(images, w, PREPROCESS["arcface"]))
    np.testing.assert_allclose(emb.embed(images), want, atol=1e-5)
    flipped = l2_normalize(onnx_reference(images, w, PREPROCESS["arcface"]) +
                           onnx_reference(images[:, :, ::-1], w, PREPROCESS["arcface"]))
    np.testing.assert_allclose(emb.embed(images, flip=True), flipped, atol=1e-5)


def test_onnx_pixel_convention_stated_by_the_model(tmp_path):
    """metadata_props["preprocess"] wins; otherwise InsightFace's rule: Sub+Mul first = normalises inside."""
    import onnx
    from onnx import helper

    from mobiface_tf.embedder import PREPROCESS, l2_normalize, load_embedder, stated_preprocess

    stated, w = make_onnx_embedder(tmp_path / "stated.onnx", preprocess="bgr")
    plain, _ = make_onnx_embedder(tmp_path / "plain.onnx")
    assert stated_preprocess(stated) == "bgr" and stated_preprocess(plain) == "minus1to1"
    images = synthetic_faces(3)
    np.testing.assert_allclose(load_embedder(stated).embed(images),
                               l2_normalize(onnx_reference(images, w, PREPROCESS["bgr"])), atol=1e-5)
    np.testing.assert_allclose(load_embedder(stated, "raw").embed(images),  # an explicit flag overrides
                               l2_normalize(onnx_reference(images, w)), atol=1e-5)
    # A graph that starts by normalising (Sub, Mul) takes raw pixels.
    model = onnx.load(str(plain))
    g = model.graph
    g.initializer.extend([onnx.numpy_helper.from_array(np.array(127.5, np.float32), "mean"),
                          onnx.numpy_helper.from_array(np.array(1 / 128, np.float32), "scale")])
    first = g.node[0]
    first.input[0] = "scaled"
    g.node.insert(0, helper.make_node("Mul", ["centred", "scale"], ["scaled"]))
    g.node.insert(0, helper.make_node("Sub", ["image", "mean"], ["centred"]))
    onnx.save(model, str(tmp_path / "norm.onnx"))
    assert stated_preprocess(tmp_path / "norm.onnx") == "raw"
    np.testing.assert_allclose(load_embedder(tmp_path / "norm.onnx").embed(images),
                               l2_normalize(onnx_reference(images, w, PREPROCESS["arcface"])), atol=1e-5)


def test_onnx_models_that_are_not_112_face_embedders_are_refused(tmp_path):
    from mobiface_tf.embedder import load_embedder

    path, _ = make_onnx_embedder(tmp_path / "small.onnx", size=96)
    with pytest.raises(ValueError, match=r"takes 96x96 images .*112x112"):
        load_embedder(path)
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        load_embedder(tmp_path / "junk.onnx")
    r = subprocess.run([sys.executable, "tools/evaluate.py", f"--model={path}", "--bin=nowhere.bin"], cwd=REPO,
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode != 0 and "96x96" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


# ----------------------------------------------------------------------------------------------- teacher in shards
def _prepare(args, timeout=300):
    r = subprocess.run([sys.executable, "tools/prepare_data.py", "--noprogress", *map(str, args)], cwd=REPO,
                       capture_output=True, text=True, env=ENV, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def _assert_stored_equal_direct(out_dir, teacher, preprocess=None, atol=1e-5):
    import tensorflow as tf

    from mobiface_tf.data.tfrecord import read_examples
    from mobiface_tf.embedder import load_embedder

    manifest = json.loads((out_dir / "manifest.json").read_text())
    emb = load_embedder(teacher, preprocess)
    assert manifest["teacher"]["embedding_dim"] == emb.embedding_dim
    assert manifest["teacher"]["preprocess"] == emb.preprocess
    n = 0
    for shard in sorted(out_dir.glob("*.tfrecord")):
        ex = read_examples(shard)
        images = np.stack([tf.io.decode_jpeg(e["jpeg"], channels=3).numpy() for e in ex])
        np.testing.assert_allclose(np.stack([e["teacher"] for e in ex]), emb.embed(images), atol=atol)
        np.testing.assert_allclose(np.stack([e["teacher_flip"] for e in ex]), emb.embed(images[:, :, ::-1]),
                                   atol=atol)
        n += len(ex)
    assert n == manifest["num_images"] > 0
    return manifest


def test_stored_teacher_embeddings_equal_direct_output_and_add_teacher_resumes(tmp_path):
    from mobiface_tf.data import synthetic
    from mobiface_tf.fingerprint import model_fingerprint

    src = synthetic.write_synthetic_folder(tmp_path / "photos", 4, 3, seed=3)
    teacher, _ = make_onnx_embedder(tmp_path / "teacher.onnx", dim=24, preprocess="arcface")
    out = tmp_path / "shards"
    stdout = _prepare([f"--input={src}", f"--output={out}", "--shards=2", "--workers=1", f"--teacher={teacher}"])
    assert "teacher teacher.onnx: 24-d" in stdout
    m = _assert_stored_equal_direct(out, teacher)
    assert m["teacher"]["sha256"] == model_fingerprint(teacher) and m["teacher"]["file"] == "teacher.onnx"
    assert m["version"] == 2
    assert m["teacher"]["images_per_s"] > 0

    # The same teacher again: nothing rewritten. Another teacher: every shard replaced, sizes in the manifest.
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.tfrecord")}
    _prepare([f"--add_teacher={teacher}", f"--output={out}"])
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.tfrecord")} == mtimes
    other, _ = make_onnx_embedder(tmp_path / "other.onnx", dim=8, seed=5, preprocess="raw")
    _prepare([f"--add_teacher={other}", f"--output={out}"])
    m = _assert_stored_equal_direct(out, other)
    assert {s["file"]: s["bytes"] for s in m["shards"]} == {p.name: p.stat().st_size for p in out.glob("*.tfrecord")}
    # ...and the pipeline's size check and prepare's own resume accept the rewritten shards.
    from mobiface_tf.data.pipeline import make_dataset

    x, y, t = next(iter(make_dataset(out, 4, training=True, seed=0, teacher_dim=8)))
    assert x.shape == (4, 112, 112, 3) and t.shape == (4, 8)
    stdout = _prepare([f"--input={src}", f"--output={out}", "--shards=2", "--workers=1", f"--teacher={other}"])
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.tfrecord")} != mtimes  # (rewritten once, above)


@pytest.mark.shared_data
def test_reference_tflite_teacher_stored_within_1e5(lfw_dir, reference_tflite, tmp_path):
    src = tmp_path / "lfw_subset"
    for name in sorted(p.name for p in lfw_dir.iterdir())[:6]:
        (src / name).mkdir(parents=True)
        for f in sorted((lfw_dir / name).iterdir())[:2]:
            (src / name / f.name).symlink_to(f)
    out = tmp_path / "shards"
    _prepare([f"--input={src}", f"--output={out}", "--shards=2", "--workers=1", f"--teacher={reference_tflite}"])
    m = _assert_stored_equal_direct(out, reference_tflite)
    assert m["teacher"]["preprocess"] == "raw" and m["teacher"]["embedding_dim"] == 128


def _names_in_folds_by_hand(pairs_file, folds):
    """An independent reading of LFW View 2: fold k holds lines 1 + 600k .. 600(k+1) of the 300-per-class file."""
    lines = Path(pairs_file).read_text().splitlines()
    nf, per = map(int, lines[0].split())
    names = set()
    for i, line in enumerate(lines[1:]):
        if i // (2 * per) + 1 in folds:
            f = line.split("\t")
            names |= {f[0]} if len(f) == 3 else {f[0], f[2]}
    return names


@pytest.mark.shared_data
def test_exclude_folds_removes_exactly_the_people_of_those_folds(lfw_dir, lfw_pairs, tmp_path):
    from mobiface_tf.data.verification import lfw_fold_identities

    held = _names_in_folds_by_hand(lfw_pairs, {1, 2, 3})
    rest = _names_in_folds_by_hand(lfw_pairs, set(range(4, 11)))
    assert lfw_fold_identities(lfw_pairs, [1, 2, 3]) == held and len(held) == 1241
    assert not held & rest  # View 2's folds are identity-disjoint
    # A small tree: 5 held-out people, 5 people of other folds, 5 people in no pair at all.
    everyone = sorted(p.name for p in lfw_dir.iterdir())
    pick = sorted(held)[:5] + sorted(rest)[:5] + [n for n in everyone if n not in held | rest][:5]
    src = tmp_path / "tree"
    counts = {}
    for name in pick:
        (src / name).mkdir(parents=True)
        for f in sorted((lfw_dir / name).iterdir())[:3]:
            (src / name / f.name).symlink_to(f)
        counts[name] = len(list((src / name).iterdir()))
    out = tmp_path / "shards"
    stdout = _prepare([f"--input={src}", f"--output={out}", "--shards=1", "--workers=1",
                       f"--exclude_pairs={lfw_pairs}", "--exclude_folds=1,2,3"])
    m = json.loads((out / "manifest.json").read_text())
    assert m["class_names"] == sorted(set(pick) - held)
    assert m["excluded"]["num_identities"] == 5 and m["excluded"]["folds"] == [1, 2, 3]
    assert m["excluded"]["num_images"] == sum(counts[n] for n in pick if n in held)
    assert m["num_images"] == sum(counts[n] for n in pick if n not in held) == sum(m["class_counts"])
    assert f"excluded {m['excluded']['num_images']} images of 5 people" in stdout


# ----------------------------------------------------------------------------------------------- --folds
def _lfw_like(root, people=6, images=4, folds=3, per=3, seed=0):
    from mobiface_tf.data import synthetic
    from mobiface_tf.data.tfrecord import encode_jpeg

    names = [f"P{i:02d}" for i in range(people)]
    for i, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for k, img in enumerate(synthetic.render_identity(seed, i, images)):
            (root / name / f"{name}_{k + 1:04d}.jpg").write_bytes(encode_jpeg(img))
    rng = np.random.default_rng(seed)
    lines = [f"{folds}\t{per}"]
    for _ in range(folds):
        lines += [f"{names[rng.integers(people)]}\t1\t2" for _ in range(per)]
        lines += ["{}\t1\t{}\t2".format(*rng.choice(names, 2, replace=False)) for _ in range(per)]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root, root / "pairs.txt"


def test_evaluate_folds_restricts_cross_validation(tmp_path):
    from mobiface_tf import evaluate as ev
    from mobiface_tf.embedder import load_embedder

    lfw, pairs = _lfw_like(tmp_path / "lfw")
    teacher, _ = make_onnx_embedder(tmp_path / "t.onnx", preprocess="arcface")
    emb = load_embedder(teacher)
    full, scores, issame = ev.evaluate_lfw(emb, pairs, lfw, progress=False)
    part, pscores, _ = ev.evaluate_lfw(emb, pairs, lfw, folds=[1, 3], progress=False)
    assert full["folds"] == [1, 2, 3] and part["folds"] == [1, 3] and part["num_pairs"] == 12
    keep = np.r_[0:6, 12:18]  # folds 1 and 3 of the 3x(3+3) pairs
    np.testing.assert_allclose(pscores, scores[keep])
    want = ev.ten_fold_verification(scores[keep], issame[keep], [0] * 6 + [2] * 6)
    assert part["accuracy"] == pytest.approx(want["accuracy"])
    for bad, msg in (([1], "at least 2 folds"), ([1, 5], r"\[5\] not in the pairs file")):
        with pytest.raises(ValueError, match=msg):
            ev.evaluate_lfw(emb, pairs, lfw, folds=bad, progress=False)
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "tools/evaluate.py", f"--model={teacher}", f"--lfw_dir={lfw}",
                        f"--pairs={pairs}", "--folds=1,3", f"--output={out}", "--nowrite_sidecar", "--noprogress"],
                       cwd=REPO, capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(out.read_text())
    assert rep["folds"] == [1, 3] and rep["num_pairs"] == 12 and rep["preprocess"] == "arcface"


# ----------------------------------------------------------------------------------------------- training
def test_mirror_target_follows_the_flip(tmp_path):
    import tensorflow as tf

    from mobiface_tf.data import synthetic
    from mobiface_tf.data.pipeline import make_dataset
    from mobiface_tf.data.prepare import prepare
    from mobiface_tf.data.tfrecord import read_examples

    src = synthetic.write_synthetic_folder(tmp_path / "photos", 3, 4, seed=1)
    teacher, _ = make_onnx_embedder(tmp_path / "t.onnx", dim=8, preprocess="raw")
    prepare(str(src), str(tmp_path / "d"), shards=1, workers=1, progress=False, teacher=str(teacher))
    stored = read_examples(next((tmp_path / "d").glob("*.tfrecord")))
    images = [tf.io.decode_jpeg(e["jpeg"], channels=3).numpy() for e in stored]
    flips = 0
    for x, _, t in make_dataset(tmp_path / "d", 4, training=True, seed=3, repeat=3, teacher_dim=8):
        for img, target in zip(x.numpy().astype(np.uint8), t.numpy()):
            k = int(np.argmin([min(np.abs(target - e["teacher"]).max(), np.abs(target - e["teacher_flip"]).max())
                               for e in stored]))
            mirrored = bool(np.abs(target - stored[k]["teacher_flip"]).max() < 1e-6)
            want = images[k][:, ::-1] if mirrored else images[k]
            assert np.array_equal(img, want), "the target is the mirror embedding exactly when the image is mirrored"
            flips += mirrored
    assert 0 < flips < 36


def test_distillation_alone_on_unlabelled_faces_learns(tmp_path):
    """Unlabelled folder -> prepare --unlabelled --teacher -> train --margin=none with a projection (16 -> 24):
    the student-teacher cosine rises well above its start."""
    import tensorflow as tf

    from mobiface_tf.data.tfrecord import encode_jpeg, read_examples
    from mobiface_tf.training.loop import train_model

    flat = tmp_path / "faces"
    flat.mkdir()
    for i, img in enumerate(synthetic_faces(48, seed=4)):
        (flat / f"face_{i:03d}.jpg").write_bytes(encode_jpeg(img))
    (flat / ".DS_Store").write_bytes(b"\0\0")
    teacher, _ = make_onnx_embedder(tmp_path / "t.onnx", dim=24, preprocess="arcface")
    _prepare([f"--input={flat}", f"--output={tmp_path / 'd'}", "--unlabelled", "--shards=2", "--workers=1",
              f"--teacher={teacher}"])
    m = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert m["num_classes"] == 1 and m["num_images"] == 48 and m["source"] == "unlabelled_folder"

    with pytest.raises(ValueError, match="--margin=none trains on distillation alone"):
        train_model(train_config(tmp_path / "d", tmp_path / "bad", margin="none"))
    with pytest.raises(ValueError, match="needs labelled data"):
        train_model(train_config(tmp_path / "d", tmp_path / "bad", margin="arcface", distill_weight=1.0))

    result = train_model(train_config(tmp_path / "d", tmp_path / "m", backbone="mobiface", head="gdc",
                                      embedding_dim=16, margin="none", distill_weight=1.0, batch_size=16, steps=60,
                                      lr=0.1, lr_schedule="cosine", warmup_steps=5, nesterov=True, weight_decay=5e-5,
                                      log_every=10, ckpt_every=60, seed=0, shuffle_buffer=64))
    s, parts = result.metrics, result.parts
    assert parts.projection is not None and parts.head is None
    ex = [e for f in sorted((tmp_path / "d").glob("*.tfrecord")) for e in read_examples(f)]
    x = np.stack([tf.io.decode_jpeg(e["jpeg"], channels=3).numpy() for e in ex]).astype(np.float32)
    t = np.stack([e["teacher"] for e in ex])
    student = parts.projection(parts.backbone(x, training=False)).numpy()
    cos = np.sum(student / np.linalg.norm(student, axis=1, keepdims=True) * t, axis=1)
    start = 1 - np.mean(s["distill_losses"][:3])
    print(f"student-teacher cosine: start {start:.3f}, after 60 steps {cos.mean():.3f}")
    assert cos.mean() > start + 0.3, (start, cos.mean())  # measured: 0.08 -> 0.40 after 40 steps at lr 0.05
    # The exported embedding model has no projection: it outputs the student's own 16-d embedding.
    import keras

    assert keras.models.load_model(s["embedding_model"], compile=False).output_shape == (None, 16)


def _distill_data(root):
    from mobiface_tf.data.teacher_shards import add_teacher
    from mobiface_tf.data.synthetic import write_synthetic_tfrecords

    write_synthetic_tfrecords(root, num_identities=5, images_per_identity=8, seed=1, shards=2)
    teacher, _ = make_onnx_embedder(root.parent / "teacher.onnx", dim=32, preprocess="arcface")
    add_teacher(root, teacher, progress=False)
    return root


@pytest.mark.slow
def test_distillation_sigkill_resume_matches_uninterrupted(tmp_path):
    import tensorflow as tf

    data = _distill_data(tmp_path / "data")
    steps = 8

    def cmd(model_dir):
        return [sys.executable, "-m", "mobiface_tf.train", f"--data={data}", f"--model_dir={model_dir}",
                "--backbone=mobiface", "--head=gdc", "--embedding_dim=16", "--margin=arcface", "--distill_weight=0.5",
                "--distill_loss=mse", "--batch_size=4", f"--steps={steps}", "--lr=0.05", "--ckpt_every=2",
                "--log_every=1", "--deterministic", "--seed=3", "--shuffle_buffer=64"]

    full, killed = tmp_path / "full", tmp_path / "killed"
    ref = subprocess.Popen(cmd(full), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    at_kill = kill_after_first_checkpoint(cmd(killed), killed, ENV)
    assert at_kill is not None and int(at_kill.rsplit("-", 1)[1]) < steps
    resumed = subprocess.run(cmd(killed), capture_output=True, text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-3000:]
    a = checkpoint_float_vars(tf.train.latest_checkpoint(str(full / "checkpoints")))
    b = checkpoint_float_vars(tf.train.latest_checkpoint(str(killed / "checkpoints")))
    assert a.keys() == b.keys() and any(n.startswith("projection/") for n in a) and any("centres" in n for n in a)
    for n in a:
        np.testing.assert_allclose(a[n], b[n], atol=1e-5, err_msg=n)


MIRRORED = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from mobiface_tf.training.config import TrainConfig
    from mobiface_tf.training.loop import train_model
    from mobiface_tf.training.model import build_backbone
    data, out = sys.argv[1], sys.argv[2]
    common = dict(embedding_dim=16, margin="none", distill_weight=1.0, batch_size=8, steps=1, lr=0.1, log_every=1,
                  ckpt_every=100, seed=5, deterministic=True, shuffle_buffer=64, sync_bn=True)
    res = {}
    for name, strategy in (("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
                           ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
        r = train_model(TrainConfig(data=data, model_dir=out + "/" + name, **common), strategy=strategy)
        keras.utils.set_random_seed(5)  # train() seeds the same way: these are both runs' initial weights
        init = build_backbone("mobiface", 16, "gdc").trainable_weights
        after = r.parts.backbone.trainable_weights
        res[name] = dict(kd=r.metrics["distill_losses"], replicas=r.metrics["replicas"],
                         update=[(a.numpy() - i.numpy()).tolist() for a, i in zip(after, init)],
                         projection=r.parts.projection.kernel.numpy().tolist())
    print("RESULT", json.dumps(res))
""")


@pytest.mark.slow
def test_distillation_mirrored_two_cpus_equals_one_device(tmp_path):
    data = _distill_data(tmp_path / "data")
    r = subprocess.run([sys.executable, "-c", MIRRORED, str(data), str(tmp_path / "out")], capture_output=True,
                       text=True, env=ENV, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    assert res["one"]["replicas"] == 1 and res["two"]["replicas"] == 2
    np.testing.assert_allclose(res["one"]["kd"], res["two"]["kd"], atol=1e-5)
    # One step: the same update of every weight on 1 or 2 replicas, and the same projection.
    biggest = max(np.abs(np.array(a)).max() for a in res["one"]["update"])
    assert biggest > 1e-4  # a real update: a halved one would miss the tolerance below by 25x
    for a, b in zip(res["one"]["update"], res["two"]["update"]):  # every backbone weight's update
        np.testing.assert_allclose(np.array(b), np.array(a), atol=0.02 * biggest)
    np.testing.assert_allclose(res["two"]["projection"], res["one"]["projection"], atol=1e-5)
