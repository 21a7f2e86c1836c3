"""tools/bench_identify.py with real distractor faces: the MegaFace Challenge 1 layout on a tiny synthetic fixture
(checked against a brute-force reference), the embedding cache, random:N as a speed-only mode, and LFW faces."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mobiface_tf.megaface import features
from mobiface_tf.megaface.layout import read_megaface_layout
from mobiface_tf.megaface.search import far_key

from conftest import REPO  # noqa: E402  (the repo root, one definition for every test file)
FARS = (1e-6, 1e-3, 1e-2)


def _run(tmp_path, *args, name="report.json"):
    out = tmp_path / name
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "bench_identify.py"), f"--output={out}", *args],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A small random conv net saved as .keras: real embeddings of real pixels, in a second."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((112, 112, 3))
    x = keras.layers.Rescaling(1 / 128.0, offset=-127.5 / 128.0)(inputs)
    x = keras.layers.Conv2D(16, 5, strides=4, activation="relu")(x)
    x = keras.layers.MaxPooling2D(4)(x)
    x = keras.layers.Flatten()(x)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    keras.Model(inputs, keras.layers.Dense(32)(x)).save(path)
    return path


def _write(path: Path, image):
    from mobiface_tf.data.tfrecord import encode_jpeg

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_jpeg(image))


@pytest.fixture(scope="module")
def megaface_root(tmp_path_factory):
    """The MegaFace Challenge 1 layout in miniature: 6 FaceScrub-like identities x 4 synthetic faces, 110
    synthetic distractors of other identities in MegaFace-style folders, set lists for 10 and 100 (the 10 set
    inside the 100 set, as in the devkit) and one noise list per side."""
    from mobiface_tf.data.synthetic import render_identity

    root = tmp_path_factory.mktemp("megaface")
    probe_paths, probe_ids = [], []
    for i in range(6):
        name = f"Person_{i}"
        for k, img in enumerate(render_identity(7, i, 4)):
            rel = f"{name}/{name}_{k}.png"
            _write(root / "facescrub_images" / rel, img)
            probe_paths.append(rel)
            probe_ids.append(name)
    distractors = []
    for j in range(55):  # 55 other identities x 2 faces; identity j sits in group j % 5
        for k, img in enumerate(render_identity(8, 100 + j, 2)):
            rel = f"{j % 5}/{1000 + j}@N00/{k}_{j}.jpg"
            _write(root / "megaface_images" / rel, img)
            distractors.append(rel)
    lists = root / "devkit" / "templatelists"
    lists.mkdir(parents=True)
    (lists / "facescrub_features_list.json").write_text(json.dumps({"path": probe_paths, "id": probe_ids}))
    for n in (10, 100):
        (lists / f"megaface_features_list.json_{n}_1").write_text(json.dumps({"path": distractors[:n]}))
    # Noise lists name images by path or by file name; one noisy distractor sits in both sets.
    (root / "megaface_noises.txt").write_text(f"# noisy\n{distractors[3]}\n0_40.jpg\n")
    (root / "facescrub_noises.txt").write_text("Person_2_1.png\n")
    return root


def _reference(probes, labels, distractors, fars, max_rank):
    """Direct formulation of the MegaFace protocol: loops over every (probe, mate) trial, full score lists."""
    ranks, positives = [], []
    for p in range(len(probes)):
        dist_scores = distractors @ probes[p]
        for g in range(len(probes)):
            if p != g and labels[p] == labels[g]:
                mate = float(probes[p] @ probes[g])
                ranks.append(1 + int(np.sum(dist_scores >= mate)))  # a tie with a distractor loses
                if p < g:
                    positives.append(mate)
    ranks, positives = np.array(ranks), np.array(positives)
    negatives = np.sort((probes @ distractors.T).ravel())[::-1]
    tars = {}
    for far in fars:
        k = int(np.floor(far * negatives.size + 1e-9))
        tars[far_key(far)] = None if k < 1 else float(np.mean(positives > negatives[k]))
    return [float(np.mean(ranks <= r)) for r in range(1, max_rank + 1)], tars


@pytest.fixture(scope="module")
def megaface_runs(megaface_root, tiny_model, tmp_path_factory):
    """The CLI on the layout, twice with one cache folder."""
    tmp = tmp_path_factory.mktemp("runs")
    args = [f"--model={tiny_model}", f"--megaface={megaface_root}", f"--cache_dir={tmp / 'cache'}",
            f"--far={','.join(map(str, FARS))}", "--max_rank=5", "--chunk_size=7"]
    return _run(tmp, *args, name="first.json"), _run(tmp, *args, name="second.json")


def test_megaface_layout_matches_direct_reference(megaface_runs, megaface_root, tiny_model):
    from mobiface_tf.embedder import load_embedder
    from mobiface_tf.images import load_image_rgb

    (report, stdout), _ = megaface_runs
    assert report["distractors_kind"] == "real"
    assert report["removed_probes"] == ["Person_2/Person_2_1.png"]
    assert report["removed_distractors"] == ["0/1040@N00/0_40.jpg", "1/1001@N00/1_1.jpg"]
    assert sorted(report["megaface"]) == ["10", "100"]
    assert report["megaface"]["10"]["num_distractors"] == 9 and report["megaface"]["100"]["num_distractors"] == 98
    assert report["num_probes"] == 23 and report["num_distractors"] == 98  # top level: the largest set

    embedder = load_embedder(tiny_model)
    lists = megaface_root / "devkit" / "templatelists"
    probe_list = json.loads((lists / "facescrub_features_list.json").read_text())
    keep = [p != "Person_2/Person_2_1.png" for p in probe_list["path"]]
    probes = embedder.embed(np.stack([load_image_rgb(megaface_root / "facescrub_images" / p)
                                      for p, k in zip(probe_list["path"], keep) if k]))
    labels = np.array([i for i, k in zip(probe_list["id"], keep) if k])
    for n in (10, 100):
        rels = [r for r in json.loads((lists / f"megaface_features_list.json_{n}_1").read_text())["path"]
                if r not in ("1/1001@N00/1_1.jpg", "0/1040@N00/0_40.jpg")]
        dist = embedder.embed(np.stack([load_image_rgb(megaface_root / "megaface_images" / r) for r in rels]))
        cmc, tars = _reference(probes, labels, dist, FARS, 5)
        got = report["megaface"][str(n)]
        np.testing.assert_allclose(got["cmc"], cmc, atol=1e-6)
        assert got["rank1"] == pytest.approx(cmc[0])
        assert got["tar_at_far"].keys() == tars.keys()
        for key, tar in tars.items():
            assert (got["tar_at_far"][key] is None) == (tar is None)
            if tar is not None:
                assert got["tar_at_far"][key] == pytest.approx(tar)
        assert "needs >= 1000000 negative pairs" in got["reason_at_far"]["1e-06"]
    assert 0.0 < report["megaface"]["100"]["rank1"] < 1.0  # a non-trivial case for the reference to check
    assert "rank-1" in stdout and "set       100" in stdout


def test_cache_second_run_embeds_nothing(megaface_runs, megaface_root, tiny_model, tmp_path):
    (first, _), (second, stdout) = megaface_runs
    assert first["num_embedded_probe"] == 23 and first["num_embedded_distractor"] == 98
    assert second["num_embedded_probe"] == 0 and second["num_embedded_distractor"] == 0
    assert "from cache" in stdout
    assert second["megaface"]["100"]["cmc"] == first["megaface"]["100"]["cmc"]
    assert second["distractor_embed_img_per_s"] == first["distractor_embed_img_per_s"] > 0
    # The key holds the preprocess: the same model with another pixel convention embeds again.
    from mobiface_tf.embedder import load_embedder

    cache = Path(first["distractor_cache_file"]).parents[1]
    again = features.embed_image_folder(load_embedder(tiny_model), megaface_root / "facescrub_images", cache)
    other = features.embed_image_folder(load_embedder(tiny_model, preprocess="bgr"), megaface_root / "facescrub_images",
                                     cache)
    assert again.num_embedded == 24 and other.num_embedded == 24  # a folder listing is its own entry
    assert features.embed_image_folder(load_embedder(tiny_model), megaface_root / "facescrub_images",
                                    cache).num_embedded == 0
    assert not np.allclose(again.features, other.features)


def test_random_distractors_print_no_accuracy(tmp_path):
    report, stdout = _run(tmp_path, "--distractors=random:5000", "--dim=32", "--max_probes=40")
    assert report["distractors_kind"] == "random" and report["num_distractors"] == 5000
    assert report["rank1"] is None and report["tar_at_far"] == {}
    assert "cmc" not in report and "threshold_at_far" not in report
    assert report["search_seconds"] > 0 and report["gflops_per_s"] > 0 and report["peak_rss_mb"] > 0
    assert "rank" not in stdout.lower() and "tar" not in stdout.lower()
    assert "of sgemm" in stdout and "peak RSS" in stdout


def test_folder_shards_and_features_sources(tiny_model, tmp_path):
    """Probes and distractors from one synthetic tree (probe identities dropped from the distractors), then the
    cache's own features file and TFRecord shards of the same faces as sources."""
    from mobiface_tf.data.synthetic import write_synthetic_folder, write_synthetic_tfrecords

    tree = write_synthetic_folder(tmp_path / "faces", num_identities=12, images_per_identity=3, seed=5)
    report, stdout = _run(tmp_path, f"--model={tiny_model}", f"--probes={tree}", f"--distractors={tree}",
                          "--max_probes=12", "--max_per_identity=3", f"--cache_dir={tmp_path / 'c'}", "--far=1e-2")
    assert report["num_probes"] == 12 and report["probe_identities"] == 4
    assert report["num_distractors"] == 24 and report["num_distractors_dropped_probe_identities"] == 12
    assert report["distractors_kind"] == "real" and "random_baseline" in report
    assert report["num_embedded_probe"] == 36 and report["num_embedded_distractor"] == 0  # one tree, embedded once
    assert "random, same N" in stdout and "not a face figure" in stdout

    npy = report["distractor_cache_file"]
    assert Path(npy).with_suffix(".txt").read_text().splitlines()[0] == "synthetic_id0000/0000.jpg"
    again, _ = _run(tmp_path, f"--model={tiny_model}", f"--probes={npy}", f"--distractors={npy}", "--max_probes=12",
                    "--max_per_identity=3", "--far=1e-2", "--nocompare_random", name="again.json")
    assert again["distractor_source_kind"] == "features"
    assert again["cmc"] == pytest.approx(report["cmc"]) and again["tar_at_far"] == report["tar_at_far"]

    from mobiface_tf.embedder import load_embedder

    write_synthetic_tfrecords(tmp_path / "shards", num_identities=12, images_per_identity=3, seed=5, shards=2)
    shards = features.embed_tfrecords(load_embedder(tiny_model), tmp_path / "shards", tmp_path / "c")
    folder = features.read_features_file(npy)
    assert sorted(shards.identities()) == sorted(folder.identities())
    by_name = {}
    for name, row in zip(shards.names, shards.features):
        by_name.setdefault(name.split("/")[0], []).append(row)
    for ident_name in ("synthetic_id0000", "synthetic_id0011"):  # same pixels through JPEG and tf.data
        rows = [r for n, r in zip(folder.names, folder.features) if n.startswith(ident_name + "/")]
        np.testing.assert_allclose(np.sort(np.stack(rows), axis=0), np.sort(np.stack(by_name[ident_name]), axis=0),
                                   atol=2e-2)


@pytest.mark.shared_data
def test_lfw_real_distractors_crowd_the_probes(reference_tflite, lfw_dir, tmp_path):
    """Reference model on a small LFW subset: real distractor faces score far higher against a probe than
    random directions do, so the FAR threshold rises and rank-1 cannot beat the random-distractor figure."""
    from mobiface_tf.identity_folders import list_identity_tree

    sub = tmp_path / "lfw_subset"
    people, _ = list_identity_tree(lfw_dir)
    probes = [(n, f) for n, f in people if len(f) >= 2][:10]
    others = [(n, f) for n, f in people if len(f) == 1][:300]
    for name, files in probes + others:
        (sub / name).mkdir(parents=True)
        for f in files[:4]:
            os.symlink(f, sub / name / f.name)
    report, stdout = _run(tmp_path, f"--model={reference_tflite}", f"--probes={sub}", f"--distractors={sub}",
                          "--max_probes=40", "--max_per_identity=4", "--far=1e-3", f"--cache_dir={tmp_path / 'c'}")
    assert report["distractors_kind"] == "real" and report["dim"] == 128
    assert report["num_distractors"] == 300 and report["probe_identities"] == 10
    rnd = report["random_baseline"]
    assert rnd["num_distractors"] == 300
    # Real faces: the 1e-3 tail of probe-distractor cosines is well above random 128-d directions' (0.25).
    assert report["threshold_at_far"]["0.001"] > rnd["threshold_at_far"]["0.001"] + 0.05  # 0.34 vs 0.25
    assert report["rank1"] <= rnd["rank1"] and report["rank1"] > 0.8
    assert report["probe_embed_img_per_s"] > 0 and "real distractors" in stdout


def test_bad_sources_fail_with_one_line(tmp_path, megaface_root):
    assert features.parse_random("random:1_000") == 1000
    for bad in ("random:0", "random:x"):
        with pytest.raises(ValueError, match="random:N with N >= 1"):
            features.parse_random(bad)
    with pytest.raises(FileNotFoundError, match="face source not found"):
        features.source_kind(tmp_path / "nothing")
    np.save(tmp_path / "f.npy", np.ones((3, 4), np.float32))
    with pytest.raises(FileNotFoundError, match="no name list beside it"):
        features.read_features_file(tmp_path / "f.npy")
    (tmp_path / "f.txt").write_text("a/1\nb/2\n")
    with pytest.raises(ValueError, match=r"holds \(3, 4\) but .* lists 2 names"):
        features.read_features_file(tmp_path / "f.npy")
    with pytest.raises(FileNotFoundError, match="1 of 2 listed images are missing"):
        features.embed_image_files(None, megaface_root / "facescrub_images", ["Person_0/Person_0_0.png", "nope.png"])
    with pytest.raises(FileNotFoundError, match="facescrub_features_list.json' not found"):
        read_megaface_layout(tmp_path)
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "bench_identify.py"), f"--megaface={tmp_path}"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: MegaFace layout")


def test_progress_bar_on_by_default_and_off_with_noprogress(megaface_root, tiny_model, tmp_path):
    """Embedding real distractors shows a progress bar on stderr unless --noprogress."""
    def run(*extra):
        cmd = [sys.executable, str(REPO / "tools" / "bench_identify.py"), f"--model={tiny_model}",
               f"--probes={megaface_root / 'facescrub_images'}", f"--distractors={megaface_root / 'megaface_images'}",
               "--nocompare_random", *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr

    assert "embedding megaface_images" in run(f"--cache_dir={tmp_path / 'c1'}")
    assert "embedding" not in run(f"--cache_dir={tmp_path / 'c2'}", "--noprogress")
