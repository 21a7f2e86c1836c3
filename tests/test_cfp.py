"""CFP (Celebrities in Frontal-Profile): the protocol reader, the 10-fold evaluation with AUC/EER, the aligned-crop
cache, and `.bin` files made from a protocol (tools/make_bin.py)."""
import json
import pickle
import pickletools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, write_cfp_layout

from mobiface_tf import evaluate as ev
from mobiface_tf import evaluate_cfp as ecfp
from mobiface_tf.data.verification import read_bin, read_cfp_pairs
from mobiface_tf.embedder import Embedder

# ------------------------------------------------------------------ a synthetic CFP with known answers
# Six people, one solid colour each; person 6 has person 5's colour (an impostor pair that looks the same).
# Embedding = mean colour - 128, so different people score cos <= 0 and the same person 1.0.
COLOURS = {1: (255, 128, 128), 2: (1, 128, 128), 3: (128, 255, 128), 4: (128, 1, 128), 5: (128, 128, 255),
           6: (128, 128, 255)}


class MeanColour(Embedder):
    """A real Embedder (batching, flip, L2 normalisation) whose network is the mean colour minus 128."""

    def __init__(self):
        super().__init__(Path("mean_colour"), "raw", 8, (112, 112, 3), 3)

    def _forward(self, batch):
        return batch.mean(axis=(1, 2)) - 128.0


def np_png(image) -> bytes:
    import cv2

    return cv2.imencode(".png", image)[1].tobytes()


def _solid(who, h, w):
    return np.broadcast_to(np.array(COLOURS[who], np.uint8), (h, w, 3)).copy()


@pytest.fixture
def synthetic_cfp(tmp_path):
    """3 folds, 2 people each; frontal photos 2p-1 and 2p and profile photo p belong to person p."""
    frontal = [(p, _solid(p, 120, 100)) for p in range(1, 7) for _ in range(2)]
    profile = [(p, _solid(p, 150, 130)) for p in range(1, 7)]
    ff, fp = [], []
    for k in range(3):
        a, b = 2 * k + 1, 2 * k + 2
        ff.append(([(2 * a - 1, 2 * a), (2 * b - 1, 2 * b)], [(2 * a - 1, 2 * b - 1), (2 * a, 2 * b)]))
        fp.append(([(2 * a - 1, a), (2 * b - 1, b)], [(2 * a - 1, b), (2 * b - 1, a)]))
    return write_cfp_layout(tmp_path / "cfp", frontal, profile, {"FF": ff, "FP": fp})


def test_reader_maps_numbers_through_pair_lists(synthetic_cfp):
    fp = read_cfp_pairs(synthetic_cfp, "fp")
    assert [p.fold for p in fp] == [0] * 4 + [1] * 4 + [2] * 4
    assert [p.issame for p in fp] == [True, True, False, False] * 3
    rel = lambda p: p.relative_to(synthetic_cfp).as_posix()  # noqa: E731
    assert (rel(fp[0].path_a), rel(fp[0].path_b)) == ("Data/Images/001/frontal/01.jpg", "Data/Images/001/profile/01.jpg")
    assert (rel(fp[7].path_a), rel(fp[7].path_b)) == ("Data/Images/004/frontal/01.jpg", "Data/Images/003/profile/01.jpg")
    ff = read_cfp_pairs(synthetic_cfp, "FF")
    assert (rel(ff[9].path_a), rel(ff[9].path_b)) == ("Data/Images/006/frontal/01.jpg", "Data/Images/006/frontal/02.jpg")
    assert (rel(ff[10].path_a), rel(ff[10].path_b)) == ("Data/Images/005/frontal/01.jpg", "Data/Images/006/frontal/01.jpg")


def test_reader_errors_name_file_and_line(synthetic_cfp, tmp_path):
    with pytest.raises(ValueError, match="must be FF .* or FP"):
        read_cfp_pairs(synthetic_cfp, "PP")
    with pytest.raises(FileNotFoundError, match="no Protocol/ folder"):
        read_cfp_pairs(synthetic_cfp / "Data", "FF")
    same = synthetic_cfp / "Protocol" / "Split" / "FP" / "02" / "same.txt"
    same.write_text("5,3\n5;3\n")
    with pytest.raises(ValueError, match=r"02/same.txt:2: expected a pair of image numbers"):
        read_cfp_pairs(synthetic_cfp, "FP")
    same.write_text("5,3\n7,99\n")
    with pytest.raises(ValueError, match=r"same.txt:2: second image number 99 is not in its Pair_list file"):
        read_cfp_pairs(synthetic_cfp, "FP")
    same.write_text("5,3\n7,4\n")
    (synthetic_cfp / "Data" / "Images" / "004" / "profile" / "01.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) named by the CFP FP protocol are missing"):
        read_cfp_pairs(synthetic_cfp, "FP")
    read_cfp_pairs(synthetic_cfp, "FF")  # FF does not use the profile photo


def test_ten_fold_protocol_known_answers(synthetic_cfp):
    """Folds 1 and 2 are separable; fold 3 holds two impostor pairs scoring 1.0. Thresholds come from the other
    folds, so the accuracies are [1, 1, 0.5]; AUC = (6*4 + 6*2/2)/36; EER = 0.25 (between FAR 0 and FAR 1/3)."""
    results = ecfp.evaluate_cfp(MeanColour(), synthetic_cfp, ["FF", "FP"], flip=True, crops=None, progress=False)
    assert set(results) == {"FF", "FP"}
    for protocol, (report, scores, issame) in results.items():
        assert report["num_pairs"] == 12 and report["num_folds"] == 3 and report["folds"] == [1, 2, 3]
        np.testing.assert_allclose(report["fold_accuracies"], [1.0, 1.0, 0.5])
        assert report["accuracy"] == pytest.approx(5 / 6)
        assert report["accuracy_std"] == pytest.approx(np.std([1, 1, 0.5]))
        assert report["auc"] == pytest.approx(30 / 36)
        assert report["eer"] == pytest.approx(0.25)
        assert report["align"]["no_face_images"] == 0 and report["dataset"].startswith(f"cfp-{protocol.lower()}:")
        assert report["num_images"] == (12 if protocol == "FF" else 12)
    two = ecfp.evaluate_cfp(MeanColour(), synthetic_cfp, ["FF"], crops=None, folds=[1, 3], progress=False)["FF"][0]
    assert two["num_pairs"] == 8 and two["folds"] == [1, 3]
    np.testing.assert_allclose(two["fold_accuracies"], [1.0, 0.5])


def test_auc_eer_by_hand():
    r = ev.auc_eer([0.9, 0.3, 0.5, 0.2], [True, True, False, False])
    assert r["auc"] == pytest.approx(0.75) and r["eer"] == pytest.approx(0.5) and r["eer_threshold"] == pytest.approx(0.5)
    r = ev.auc_eer([0.9, 0.8, 0.1, 0.2], [True, True, False, False])
    assert r["auc"] == pytest.approx(1.0) and r["eer"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="both same and different"):
        ev.auc_eer([0.1, 0.2], [True, True])


@pytest.mark.slow  # MTCNN is built: about 30 s on 2 shared cores
def test_crop_cache_key_reuse_and_fallback(tmp_path):
    """A photo MTCNN cannot read gets the centre-square fallback, marked and cached; the key is the content."""
    from mobiface_tf.crop_cache import CropCache

    cache = CropCache(tmp_path / "cache")
    flat = np.zeros((90, 150, 3), np.uint8)
    flat[:, 30:120] = 200  # the centre square is bright, the sides dark
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(__import__("cv2").imencode(".png", flat)[1].tobytes())
    first = cache.crop_many([tmp_path / "a.png"])[0]
    assert not first.aligned and first.image.shape == (112, 112, 3)
    assert first.image[:, 10:100].min() >= 190  # the centre square, resized
    again = CropCache(tmp_path / "cache").crop_many([tmp_path / "b.png", (tmp_path / "a.png").read_bytes()])
    assert [c.aligned for c in again] == [False, False]
    assert len(list((tmp_path / "cache").rglob("*.fallback.png"))) == 1  # same bytes, one entry
    other = cache.crop_many([np_png(255 - flat)])[0]  # other bytes: its own entry and crop
    assert other.image[:, 10:100].max() <= 65 and len(list((tmp_path / "cache").rglob("*.fallback.png"))) == 2
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is not a folder"):
        CropCache(tmp_path / "file")
    with pytest.raises(ValueError, match="cannot be written"):
        CropCache(tmp_path / "file" / "below")


# ------------------------------------------------------------------ the real benchmark
@pytest.mark.parametrize("protocol", ["FF", "FP"])
def test_real_protocol_mapping_matches_an_independent_parse(cfp_dir, protocol):
    proto = cfp_dir / "Protocol"

    def table(name):
        rows = (line.split(" ", 1) for line in (proto / name).read_text().splitlines() if line.strip())
        return {int(n): (proto / rel.strip()).resolve() for n, rel in rows}

    first = table("Pair_list_F.txt")
    second = first if protocol == "FF" else table("Pair_list_P.txt")
    assert len(first) == 5000 and len(table("Pair_list_P.txt")) == 2000
    expected = []
    for fold, folder in enumerate(sorted((proto / "Split" / protocol).iterdir())):
        for name, same in (("same.txt", True), ("diff.txt", False)):
            for line in (folder / name).read_text().split():
                i, j = (int(x) for x in line.split(","))
                expected.append((first[i], second[j], same, fold))
    got = [(p.path_a.resolve(), p.path_b.resolve(), p.issame, p.fold) for p in read_cfp_pairs(cfp_dir, protocol)]
    assert len(got) == 7000 and got == expected
    kinds = {("frontal", "profile" if protocol == "FP" else "frontal")} 
    assert {(a.parent.name, b.parent.name) for a, b, _, _ in got} == kinds


@pytest.mark.slow
def test_real_ff_fold1_with_reference_model(cfp_dir, reference_tflite, tmp_path):
    """CFP-FF fold 1 (700 pairs of 50 people) through MTCNN and the InsightFace MobileFaceNet."""
    from mobiface_tf.crop_cache import CropCache
    from mobiface_tf.embedder import load_embedder

    pairs = [p for p in read_cfp_pairs(cfp_dir, "FF") if p.fold == 0]
    unique = sorted({x for p in pairs for x in (p.path_a, p.path_b)})
    index = {x: i for i, x in enumerate(unique)}
    images, fallback = ecfp.cfp_crops(unique, CropCache(tmp_path / "cache"), progress=False)
    emb = load_embedder(reference_tflite).embed(np.stack(images), flip=True)
    scores = ev.cosine_scores(emb[[index[p.path_a] for p in pairs]], emb[[index[p.path_b] for p in pairs]])
    issame = np.array([p.issame for p in pairs])
    assert len(pairs) == 700 and issame.sum() == 350
    assert sum(fallback) <= 5, f"MTCNN found no face in {sum(fallback)} frontal photos"
    r = ev.auc_eer(scores, issame)
    _, acc = ev.best_threshold(scores, issame)
    assert r["auc"] > 0.99 and r["eer"] < 0.04 and acc > 0.97, (r, acc)


@pytest.mark.slow
def test_bin_round_trip_matches_cfp_dir(lfw_dir, reference_tflite, tmp_path):
    """make_bin on a CFP-layout set of real faces (10 folds), then one evaluate run scores it both through
    --cfp_dir and through --bin: the same accuracy (within 0.001) and nearly the same scores."""
    people = sorted(d for d in lfw_dir.iterdir() if len(list(d.glob("*.jpg"))) >= 2)[:20]
    frontal = [(k + 1, f) for k, d in enumerate(people) for f in sorted(d.glob("*.jpg"))[:2]]
    profile = [(k + 1, sorted(d.glob("*.jpg"))[0]) for k, d in enumerate(people)]
    folds = []
    for k in range(10):
        a, b = 2 * k + 1, 2 * k + 2  # persons; frontal photos 2p-1, 2p
        folds.append(([(2 * a - 1, 2 * a), (2 * b - 1, 2 * b)], [(2 * a - 1, 2 * b), (2 * b - 1, 2 * a)]))
    cfp = write_cfp_layout(tmp_path / "cfp", frontal, profile, {"FF": folds})
    cache, out = tmp_path / "cache", tmp_path / "ff.bin"
    common = ["--progress=false", f"--align_cache={cache}"]
    made = subprocess.run([sys.executable, "tools/make_bin.py", *common, f"--cfp_dir={cfp}", "--cfp_protocol=FF",
                           f"--output={out}"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-2000:]
    assert "40 pairs, 40 distinct photos, folds 1..10 (4 pairs each)" in made.stdout
    data = out.read_bytes()
    assert data[:2] == b"\x80\x04"  # pickle protocol 4
    ops = {op.name for op, _, _ in pickletools.genops(data)}
    assert not ops & {"GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "INST", "OBJ", "NEWOBJ"}, ops
    images, issame = pickle.loads(data)
    assert all(type(x) is bytes for x in images) and all(type(x) is bool for x in issame)
    assert issame == [True, True, False, False] * 10 and len(read_bin(out)[0]) == 80

    report = tmp_path / "report.json"
    run = subprocess.run([sys.executable, "tools/evaluate.py", *common, f"--model={reference_tflite}", "--flip",
                          f"--cfp_dir={cfp}", "--cfp_protocol=FF", f"--bin={out}", f"--output={report}",
                          "--nowrite_sidecar"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    r = json.loads(report.read_text())
    assert r["dataset"].startswith("cfp-ff:") and r["bin"]["dataset"].startswith("bin:")
    assert r["num_pairs"] == r["bin"]["num_pairs"] == 40 and r["num_folds"] == 10
    assert abs(r["accuracy"] - r["bin"]["accuracy"]) <= 0.001
    assert abs(r["threshold"] - r["bin"]["threshold"]) < 0.02
    assert "AUC" in run.stdout and "EER" in run.stdout and Path(r["roc_png"]).is_file()


def test_cli_rejects_bad_protocol_before_loading(synthetic_cfp, tmp_path):
    run = subprocess.run([sys.executable, "tools/evaluate.py", f"--model={tmp_path / 'none.tflite'}",
                          f"--cfp_dir={synthetic_cfp}", "--cfp_protocol=FF,XP"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 2 and "error: --cfp_protocol must be FF" in run.stderr and "Traceback" not in run.stderr
    made = subprocess.run([sys.executable, "tools/make_bin.py", f"--cfp_dir={synthetic_cfp}", "--cfp_protocol=FF",
                           f"--output={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert made.returncode == 2 and "is a folder" in made.stderr


def test_make_bin_from_lfw_pairs_keeps_folds(tmp_path):
    """LFW View 2 -> .bin without realignment: pairs in fold order, each photo's bytes the encoded crop."""
    import cv2

    from conftest import person

    from mobiface_tf.data.verification import read_lfw_pairs
    from mobiface_tf.make_bin import build_bin, protocol_pairs

    root = tmp_path / "lfw"
    names = [f"held{i}" for i in range(4)]
    for i, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for k in range(1, 4):
            cv2.imwrite(str(root / name / f"{name}_{k:04d}.jpg"), cv2.cvtColor(person(i, k), cv2.COLOR_RGB2BGR))
    lines = ["2\t3"]
    for f in range(2):
        lines += [f"{names[(f + j) % 4]}\t1\t{2 + j % 2}" for j in range(3)]
        lines += [f"{names[j]}\t1\t{names[(j + 1 + f) % 4]}\t2" for j in range(3)]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    pairs = protocol_pairs(lfw_dir=root, pairs_file=root / "pairs.txt")
    assert pairs == read_lfw_pairs(root / "pairs.txt", root)
    summary = build_bin(pairs, tmp_path / "lfw.bin", crops=None, quality=90, progress=False)
    assert summary["num_pairs"] == 12 and summary["folds"] == [1, 2] and summary["pairs_per_fold"] == [6]
    images, issame = read_bin(tmp_path / "lfw.bin")
    assert issame.tolist() == [True] * 3 + [False] * 3 + [True] * 3 + [False] * 3
    first = cv2.imdecode(np.frombuffer(images[0], np.uint8), cv2.IMREAD_COLOR)
    original = cv2.imread(str(pairs[0].path_a))
    assert first.shape == (112, 112, 3) and np.abs(first.astype(int) - original).mean() < 6
    second_fold = protocol_pairs(lfw_dir=root, pairs_file=root / "pairs.txt", folds=[2])
    assert len(second_fold) == 6 and {p.fold for p in second_fold} == {1}
    with pytest.raises(ValueError, match="either --cfp_dir"):
        protocol_pairs(cfp_dir=root, lfw_dir=root)
