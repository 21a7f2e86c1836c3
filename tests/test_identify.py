"""identify: gallery enrolment with a content-hash index, top-K answers, errors; real LFW identification.

Fast tests use a tiny real Keras model (saved .keras, loaded through load_embedder) on synthetic aligned
crops (--aligned, no MTCNN). The real test enrols 20 LFW identities through MTCNN and the reference TFLite.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import person, save_tiny_model, write_png

from mobiface_tf import identify as ident
from mobiface_tf.gallery import INDEX_NAME, Gallery, model_key, read_index, write_index
from mobiface_tf.gallery import enroll as enroll_gallery
from mobiface_tf.faces import DEFAULT_THRESHOLD, FaceError, load_model

from conftest import REPO  # noqa: E402  (the repo root, one definition for every test file)


class CountingEmbedder:
    """The real embedder, counting the images it is asked to embed."""

    def __init__(self, inner):
        self.inner, self.count = inner, 0
        self.embedding_dim, self.preprocess, self.flip = inner.embedding_dim, inner.preprocess, inner.flip

    def embed(self, images, flip=None):
        self.count += len(images)
        return self.inner.embed(images, flip)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"a16": save_tiny_model(d / "a16.keras", 16, 0), "b16": save_tiny_model(d / "b16.keras", 16, 1),
            "c8": save_tiny_model(d / "c8.keras", 8, 2)}


@pytest.fixture(scope="module")
def embedder(models):
    return load_model(models["a16"])


@pytest.fixture
def gallery(tmp_path):
    g = tmp_path / "gallery"
    for i in range(3):
        for s in range(2):
            write_png(g / f"id{i}" / f"{s}.png", person(i, s))
    return g


def enroll(gallery, emb, model_path, **kw):
    return enroll_gallery(gallery, emb, model_key(model_path, emb, aligned=True), aligner=None,
                          warn=kw.pop("warn", lambda m: None), **kw)


def test_enrol_caches_by_content_hash(gallery, embedder, models):
    spy = CountingEmbedder(embedder)
    g = enroll(gallery, spy, models["a16"])
    assert (spy.count, g.embedded, g.reused, g.removed) == (6, 6, 0, 0)
    assert g.index_written and (gallery / INDEX_NAME).is_file()
    assert g.names == ["id0", "id1", "id2"] and g.num_images == [2, 2, 2]
    # Template = renormalised mean of the unit embeddings of the identity's photos.
    e = embedder.embed(np.stack([person(1, 0), person(1, 1)]))
    want = e.mean(0) / np.linalg.norm(e.mean(0))
    np.testing.assert_allclose(g.templates[1], want, atol=1e-5)

    spy.count = 0
    g = enroll(gallery, spy, models["a16"])
    assert (spy.count, g.embedded, g.reused, g.index_written) == (0, 0, 6, False)

    write_png(gallery / "id0" / "1.png", person(0, 7))          # changed content, same name
    write_png(gallery / "id3" / "0.png", person(3, 0))          # new identity
    (gallery / "id2" / "1.png").rename(gallery / "id2" / "renamed.png")  # renamed: same hash, reused
    g = enroll(gallery, spy, models["a16"])
    assert (spy.count, g.embedded, g.reused, g.removed) == (2, 2, 5, 1)
    assert g.names == ["id0", "id1", "id2", "id3"]

    os.remove(gallery / "id1" / "0.png")
    g = enroll(gallery, spy, models["a16"])
    assert (g.embedded, g.removed, g.num_images) == (0, 1, [2, 1, 2, 1])
    meta, table = read_index(gallery / INDEX_NAME)
    assert len(meta["entries"]) == len(table) == 6
    assert "id1/0.png" not in meta["paths"]
    # No temp files left behind by the atomic write, and the index is plain arrays (no pickle needed).
    assert sorted(p.name for p in gallery.iterdir() if p.is_file()) == [INDEX_NAME]
    with np.load(gallery / INDEX_NAME, allow_pickle=False) as z:
        assert sorted(z.files) == ["embeddings", "meta"] and z["embeddings"].dtype == np.float32


def test_identify_top_k_and_unknown(gallery, embedder, models, tmp_path):
    g = enroll(gallery, embedder, models["a16"])
    queries = [write_png(tmp_path / f"q{i}.png", person(i, 50)) for i in range(3)]
    results = ident.identify(g, embedder, queries, top=2, threshold=0.0)
    assert [r["identity"] for r in results] == ["id0", "id1", "id2"]
    assert all(len(r["top"]) == 2 and r["top"][0][1] >= r["top"][1][1] for r in results)
    # Above any reachable score, every answer is "unknown", but the ranking is still reported.
    results = ident.identify(g, embedder, queries, top=5, threshold=0.9999)
    assert [r["identity"] for r in results] == ["unknown"] * 3
    assert [r["top"][0][0] for r in results] == ["id0", "id1", "id2"] and len(results[0]["top"]) == 3


def test_index_of_other_embedding_size_or_model_is_an_error(gallery, models):
    a = load_model(models["a16"])
    enroll(gallery, a, models["a16"])
    c8 = load_model(models["c8"])
    with pytest.raises(FaceError, match="holds 16-d embeddings but model .* gives 8-d"):
        enroll(gallery, c8, models["c8"])
    b = load_model(models["b16"])
    with pytest.raises(FaceError, match="another sha256"):
        enroll(gallery, b, models["b16"])
    g = enroll(gallery, b, models["b16"], rebuild=True)  # --rebuild_index replaces it
    assert g.embedded == 6
    assert enroll(gallery, b, models["b16"]).reused == 6


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "wrong_rows"])
def test_corrupt_index_is_rebuilt_with_a_warning(gallery, embedder, models, damage):
    enroll(gallery, embedder, models["a16"])
    path = gallery / INDEX_NAME
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not an index at all" * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # valid npz whose header points at rows that do not exist
        meta, table = read_index(path)
        write_index(path, meta, table[:2])
    warnings = []
    spy = CountingEmbedder(embedder)
    g = enroll(gallery, spy, models["a16"], warn=warnings.append)
    assert spy.count == 6 and g.embedded == 6 and g.reused == 0
    assert len(warnings) == 1 and "corrupt" in warnings[0] and "rebuilding" in warnings[0]
    assert read_index(path) is not None  # rewritten, readable again


def _users_own_files(tmp_path, models) -> dict:
    """Files a user may point --index at by mistake: their own embeddings .npz (another tool's: 'embeddings' and
    'names', no 'meta'), the model itself, a text file, and an .npz with a 'meta' that is not our header."""
    own = tmp_path / "faces_db.npz"
    np.savez(own, embeddings=np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32),
             names=np.array([f"person_{i}" for i in range(300)]))
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    other = tmp_path / "other.npz"
    np.savez(other, meta=np.arange(3), embeddings=np.zeros((3, 16), np.float32))
    return {"npz": own, "model": Path(models["a16"]), "text": notes, "other_meta": other}


@pytest.mark.parametrize("kind", ["npz", "model", "text", "other_meta"])
def test_index_that_is_not_ours_is_refused_and_left_unchanged(gallery, embedder, models, tmp_path, kind):
    """identify-index-overwrites-user-file: --index=FILE where FILE exists and is not a mobiface index stops before
    any photo is embedded, with one line naming the file and --index, exit 2; its bytes are unchanged, even with
    --rebuild_index."""
    from io import StringIO

    from mobiface_tf.gallery import IndexNotOurs

    target = _users_own_files(tmp_path, models)[kind]
    before = target.read_bytes()
    query = write_png(tmp_path / "q.png", person(0, 9))
    for rebuild in (False, True):
        out, err = StringIO(), StringIO()
        rc = ident.run(str(models["a16"]), str(gallery), [str(query)], aligned=True, index=str(target),
                       rebuild=rebuild, out=out, err=err)
        lines = err.getvalue().strip().splitlines()
        assert rc == 2 and len(lines) == 1, err.getvalue()
        assert lines[0].startswith("error: --index") and str(target) in lines[0]
        assert "is not a mobiface gallery index" in lines[0] and "pass another --index path" in lines[0]
        assert out.getvalue() == "" and target.read_bytes() == before
        spy = CountingEmbedder(embedder)  # the library refuses too, before embedding anything
        with pytest.raises(IndexNotOurs, match="not a mobiface gallery index"):
            enroll(gallery, spy, models["a16"], index_path=target, rebuild=rebuild)
        assert spy.count == 0 and target.read_bytes() == before
    assert not (gallery / INDEX_NAME).exists()


def test_index_at_an_explicit_path_is_rebuilt_only_when_recognisably_ours(gallery, embedder, models, tmp_path):
    """A damaged index that is still recognisably ours (cut short: it starts with our 'meta' member) at a user-given
    --index is rebuilt with a warning; an empty file holds nothing to lose and is written too."""
    index = tmp_path / "cache" / "faces.npz"
    enroll(gallery, embedder, models["a16"], index_path=index)  # missing folders created
    data = index.read_bytes()
    index.write_bytes(data[:len(data) // 2])
    warnings = []
    g = enroll(gallery, embedder, models["a16"], index_path=index, warn=warnings.append)
    assert g.embedded == 6 and len(warnings) == 1 and "corrupt" in warnings[0] and "rebuilding" in warnings[0]
    assert read_index(index) is not None
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    assert enroll(gallery, embedder, models["a16"], index_path=empty).index_written
    assert read_index(empty) is not None


def test_unusable_gallery_photos_are_skipped_and_remembered(gallery, embedder, models):
    (gallery / "id0" / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    write_png(gallery / "id9" / "wide.png", np.zeros((40, 200, 3), np.uint8))  # not a square crop
    warnings = []
    g = enroll(gallery, embedder, models["a16"], warn=warnings.append)
    assert g.names == ["id0", "id1", "id2"] and len(g.skipped) == 2
    assert any("bad.jpg" in w for w in warnings) and any("'id9' has no usable photo" in w for w in warnings)
    spy = CountingEmbedder(embedder)
    g = enroll(gallery, spy, models["a16"], warn=warnings.append)
    assert spy.count == 0 and len(g.skipped) == 2  # failures are cached too, not retried each run


def test_read_only_gallery_still_answers(gallery, embedder, models):
    os.chmod(gallery, 0o555)
    try:
        warnings = []
        g = enroll(gallery, embedder, models["a16"], warn=warnings.append)
    finally:
        os.chmod(gallery, 0o755)
    assert not g.index_written and len(g.names) == 3
    assert any("cannot write index" in w and "--index" in w for w in warnings)
    assert not (gallery / INDEX_NAME).exists()


def test_run_prints_answers_and_one_line_errors(gallery, models, tmp_path, capsys):
    q = write_png(tmp_path / "q.png", person(2, 9))
    rc = ident.run(str(models["a16"]), str(gallery), [str(q)], top=2, threshold=0.0, aligned=True,
                   out=sys.stdout, err=sys.stderr)
    out = capsys.readouterr().out
    assert rc == 0 and "embedded 6 new, reused 0" in out and f"{q}: id2" in out and "  2. " in out

    rc = ident.run(str(models["a16"]), str(gallery), [str(q)], aligned=True, as_json=True,
                   out=sys.stdout, err=sys.stderr)
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["gallery"]["reused"] == 6 and doc["threshold"] == DEFAULT_THRESHOLD
    assert doc["results"][0]["top"][0][0] == "id2"

    bad = tmp_path / "empty.jpg"
    bad.write_bytes(b"")
    cases = {
        "model not found": (str(tmp_path / "nope.keras"), str(gallery), [str(q)]),
        "gallery not found": (str(models["a16"]), str(tmp_path / "nogallery"), [str(q)]),
        "image not found": (str(models["a16"]), str(gallery), [str(tmp_path / "missing.jpg")]),
        "zero-byte file": (str(models["a16"]), str(gallery), [str(bad)]),
        "holds 16-d embeddings": (str(models["c8"]), str(gallery), [str(q)]),
    }
    for message, (model, gal, queries) in cases.items():
        rc = ident.run(model, gal, queries, aligned=True, out=sys.stdout, err=sys.stderr)
        err = capsys.readouterr().err
        assert rc == 1 and message in err, (message, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")


def test_cli_subprocess_error_is_one_line(gallery, models, tmp_path):
    q = write_png(tmp_path / "q.png", person(0, 3))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-m", "mobiface_tf.identify", f"--model={tmp_path / 'missing.tflite'}",
                           f"--gallery={gallery}", f"--query={q}"], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: model not found")


# ----------------------------------------------------------------------------------------------- real LFW
def lfw_gallery_split(lfw_dir, num_ids=20, min_images=4, enrol=3, num_strangers=20):
    """First `num_ids` LFW identities (alphabetical) with >= min_images photos: `enrol` enrolled, rest queried.

    Also the first photo of the first `num_strangers` identities with a single photo: people not in the gallery.
    """
    chosen, strangers = [], []
    for d in sorted(p for p in Path(lfw_dir).iterdir() if p.is_dir()):
        photos = sorted(d.glob("*.jpg"))
        if len(photos) >= min_images and len(chosen) < num_ids:
            chosen.append((d.name, photos[:enrol], photos[enrol:]))
        elif len(photos) == 1 and len(strangers) < num_strangers:
            strangers.append(photos[0])
        if len(chosen) == num_ids and len(strangers) == num_strangers:
            return chosen, strangers
    raise AssertionError(f"fewer than {num_ids} identities with >= {min_images} photos in {lfw_dir}")


@pytest.mark.slow
@pytest.mark.shared_data
def test_lfw_identification_top1(lfw_dir, reference_tflite, tmp_path):
    import shutil

    from mobiface_tf.align import FaceAligner

    split, strangers = lfw_gallery_split(lfw_dir)
    gallery = tmp_path / "gallery"
    for name, enrolled, _ in split:
        (gallery / name).mkdir(parents=True)
        for p in enrolled:
            shutil.copy(p, gallery / name / p.name)
    # Query cap keeps the runtime bounded (George_W_Bush alone has 530 photos): at most 5 per identity.
    queries = [(name, p) for name, _, rest in split for p in rest[:5]]
    emb, aligner = load_model(reference_tflite), FaceAligner()
    key = model_key(reference_tflite, emb, aligned=False)
    g = enroll_gallery(gallery, emb, key, aligner=aligner)
    assert len(g.names) == 20 and g.embedded == 60 and not g.skipped
    results = ident.identify(g, emb, [p for _, p in queries], top=5, threshold=DEFAULT_THRESHOLD, aligner=aligner)
    assert not [r for r in results if "error" in r]
    top1 = np.mean([r["top"][0][0] == name for (name, _), r in zip(queries, results)])
    top5 = np.mean([name in [n for n, _ in r["top"]] for (name, _), r in zip(queries, results)])
    answered = np.mean([r["identity"] == name for (name, _), r in zip(queries, results)])
    # Open set: people who are not enrolled should get "unknown" at the default threshold.
    others = ident.identify(g, emb, strangers, top=1, threshold=DEFAULT_THRESHOLD, aligner=aligner)
    rejected = np.mean([r.get("identity") == "unknown" for r in others])
    print(f"\nLFW identification, 20 identities x 3 enrolled, {len(queries)} queries: top-1 {top1:.4f}, "
          f"top-5 {top5:.4f}, correct incl. 'unknown' at threshold {DEFAULT_THRESHOLD}: {answered:.4f}; "
          f"{len(strangers)} people not enrolled answered 'unknown': {rejected:.4f} "
          f"(best scores {sorted(round(r['score'], 3) for r in others)[-3:]})")
    assert top1 >= 0.9 and rejected >= 0.8

    # The real CLI once, as a subprocess: the index built above is reused, so it embeds only the queries.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    (name_a, qa), (name_b, qb) = queries[0], queries[-1]
    proc = subprocess.run([sys.executable, "-m", "mobiface_tf.identify", f"--model={reference_tflite}",
                           f"--gallery={gallery}", f"--query={qa}", f"--query={qb}", "--top=2"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "embedded 0 new, reused 60" in proc.stdout
    assert f"{qa}: {name_a}" in proc.stdout and f"{qb}: {name_b}" in proc.stdout, proc.stdout


# ----------------------------------------------------------------------------------------------- --far
def _random_gallery(num_ids, per_id, dim=32, noise=0.9, seed=0):
    """A Gallery of random people: identity centres on the sphere, photos = centre + noise, unit rows."""
    r = np.random.default_rng(seed)
    centres = r.normal(size=(num_ids, dim))
    emb = np.repeat(centres, per_id, axis=0) + noise * r.normal(size=(num_ids * per_id, dim))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    labels = np.repeat(np.arange(num_ids), per_id)
    means = np.stack([emb[labels == i].mean(0) for i in range(num_ids)])
    templates = (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)
    return Gallery([f"id{i}" for i in range(num_ids)], templates, [per_id] * num_ids, 0, 0, 0, [],
                   Path("x"), False, emb, labels)


def test_far_threshold_against_brute_force():
    """Each photo against every OTHER identity's template (never its own, which contains it); the threshold
    lets at most floor(far * N) photos above it, and the reported FAR is the fraction that are. The counts are
    taken on the very scores the threshold came from: a recomputed score can differ in its last bit (another
    summation order) and flip a tie at the threshold."""
    g = _random_gallery(12, 5)
    brute = [max(float(g.templates[j] @ e) for j in range(12) if j != lab)
             for e, lab in zip(g.image_embeddings, g.image_labels)]
    scores = ident.impostor_scores(g)
    np.testing.assert_allclose(scores, brute, atol=1e-6)
    for far in (0.05, 0.1, 0.5):  # N * far >= 1 and N < 100: counted
        ft = ident.far_threshold(g, far)
        above = int(np.sum(scores > ft.threshold))
        assert ft.method == "empirical" and ft.num_scores == 60 and ft.false_accepts == above
        assert ft.far_observed == pytest.approx(above / 60) and above <= far * 60
        assert ft.threshold == np.sort(scores)[::-1][int(far * 60)]
    strict = ident.far_threshold(g, 0.01)  # 60 photos cannot resolve 1 %: the highest score
    assert strict.method == "highest_score" and strict.threshold == scores.max() and strict.far_expected is None


def test_far_threshold_rises_with_gallery_size():
    """The issue's point: the same FAR needs a higher threshold when a query meets more identities."""
    small = ident.far_threshold(_random_gallery(10, 4), 0.05).threshold
    large = ident.far_threshold(_random_gallery(200, 4), 0.05).threshold
    assert large > small + 0.05


def test_run_with_far_reports_threshold_and_far(gallery, models, tmp_path, capsys):
    q = write_png(tmp_path / "q.png", person(2, 9))
    rc = ident.run(str(models["a16"]), str(gallery), [str(q)], aligned=True, far=0.1, as_json=True,
                   out=sys.stdout, err=sys.stderr)
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["far"] == 0.1 and doc["impostor_queries"] == 6 and doc["far_method"] == "highest_score"
    assert doc["far_achieved"] == 0 and doc["far_expected"] is None
    assert doc["threshold_source"].startswith("--far=0.1 on this gallery")
    rc = ident.run(str(models["a16"]), str(gallery), [str(q)], aligned=True, far=0.1, threshold=0.3,
                   out=sys.stdout, err=sys.stderr)
    assert rc == 1 and "not both" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- reliability
def _save(path: Path, image) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG" if path.suffix.lower() == ".jfif" else None, quality=95)
    return path


def test_gallery_reads_every_photo_format_and_counts_what_it_skips(models, tmp_path, capsys):
    """identify-drops-avif-jfif-photos: .avif / .jfif / .tif / .gif / .webp photos are enrolled (verify reads them);
    a .heic without pillow-heif and a text file are skipped with their reason, counted, and warned about; an
    identity left with no photo is named. "skipped 0" is never printed when files were left out."""
    g = tmp_path / "gallery"
    for ident_no, exts in enumerate(((".avif", ".jfif"), (".tif", ".gif"), (".webp", ".png"))):
        for shot, ext in enumerate(exts):
            _save(g / f"id{ident_no}" / f"{shot}{ext}", person(ident_no, shot))
    (g / "id3").mkdir()
    (g / "id3" / "iphone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    (g / "id3" / "notes.txt").write_text("who is this")
    q = write_png(tmp_path / "q.png", person(0, 7))
    rc = ident.run(str(models["a16"]), str(g), [str(q)], aligned=True, as_json=True, index=str(tmp_path / "i.npz"),
                   out=sys.stdout, err=sys.stderr)
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert rc == 0, captured.err
    assert doc["gallery"]["identities"] == 3 and doc["gallery"]["images"] == 6
    skipped = dict(doc["gallery"]["skipped"])
    heif_missing = "pillow-heif" in skipped.get("id3/iphone.heic", "")
    assert set(skipped) == ({"id3/iphone.heic", "id3/notes.txt"} if heif_missing else {"id3/notes.txt"})
    assert "skipped gallery file id3/notes.txt: not an image" in captured.err
    if heif_missing:
        assert "pip install pillow-heif" in captured.err
        assert "identity 'id3' has no usable photo" in captured.err
    assert doc["results"][0]["identity"] == "id0"
    ident.run(str(models["a16"]), str(g), [str(q)], aligned=True, index=str(tmp_path / "i.npz"),
              out=sys.stdout, err=sys.stderr)
    text = capsys.readouterr().out
    assert f"skipped {len(skipped)})" in text and "skipped 0" not in text


def test_nfc_and_nfd_folders_of_one_name_are_one_identity(models, embedder, tmp_path):
    """identify-nfc-nfd-same-name-split: 'Renée' written by macOS (NFD) and by Linux (NFC) is one person: one
    template from all her photos, one warning that says which folders were merged, and no impostor of herself."""
    import unicodedata

    nfc = unicodedata.normalize("NFC", "Renée_Williams")
    nfd = unicodedata.normalize("NFD", nfc)
    g = tmp_path / "gallery"
    for folder, (who, shot) in ((nfc, (0, 0)), (nfc, (0, 1)), (nfd, (0, 2)), ("Tony", (1, 0)), ("Tony", (1, 1)),
                                ("Colin", (2, 0)), ("Colin", (2, 1))):
        write_png(g / folder / f"{who}_{shot}.png", person(who, shot))
    warnings = []
    gal = enroll(g, embedder, models["a16"], warn=warnings.append)
    assert gal.names == ["Colin", nfc, "Tony"] and gal.num_images == [2, 3, 2]
    merged = [w for w in warnings if "merged into one identity" in w]
    assert len(merged) == 1 and ascii(nfc) in merged[0] and ascii(nfd) in merged[0]
    assert gal.merged == [(nfc, sorted([nfc, nfd]))]


def test_same_photo_under_two_identities_is_named_and_left_out_of_far(models, embedder, gallery):
    """identify-same-photo-two-identities: a byte-identical photo filed under a second identity gives one warning
    naming both paths, and --far leaves every copy out of the impostor scores (it would be scored against a
    template that holds itself, and the threshold would jump to nearly 1)."""
    (gallery / "id1" / "IMG_0001.png").write_bytes((gallery / "id0" / "0.png").read_bytes())
    warnings = []
    g = enroll(gallery, embedder, models["a16"], warn=warnings.append)
    shared = [w for w in warnings if "same photo" in w]
    assert len(shared) == 1 and "id0/0.png and id1/IMG_0001.png" in shared[0], warnings
    assert g.shared_photos == [["id0/0.png", "id1/IMG_0001.png"]]
    assert g.far_excluded.tolist() == [True, False, False, False, True, False, False]  # id0: 0, 1; id1: 0, 1, IMG
    imp = ident.impostor_scores(g)
    assert len(imp) == 5
    everything = ident.impostor_scores(g, exclude=np.zeros(7, bool))
    np.testing.assert_allclose(imp, everything[~g.far_excluded], atol=1e-6)
    t = ident.far_threshold(g, 0.01).threshold  # 7 photos cannot resolve 1%: the highest impostor score left
    assert t == float(imp.max()) and everything.max() > t + 0.05, (everything, imp)


def test_onnx_external_data_change_refuses_the_cached_index(gallery, tmp_path):
    """onnx-external-data-stale-gallery-index: new weights in face.onnx.data with the same face.onnx bytes are a
    new model: the index built with the old weights is not reused (it is an error naming --rebuild_index)."""
    from conftest import make_onnx_embedder

    pytest.importorskip("onnxruntime")
    model = tmp_path / "face.onnx"
    make_onnx_embedder(model, seed=0, external_data=True)
    first = (model.read_bytes(), (tmp_path / "face.onnx.data").read_bytes())
    index = tmp_path / "index.npz"
    g0 = enroll(gallery, load_model(model), model, index_path=index)
    assert g0.embedded == 6
    make_onnx_embedder(model, seed=1, external_data=True)  # "retrained": same graph file, other weights
    assert model.read_bytes() == first[0] and (tmp_path / "face.onnx.data").read_bytes() != first[1]
    with pytest.raises(FaceError, match="another sha256.*--rebuild_index"):
        enroll(gallery, load_model(model), model, index_path=index)
    g1 = enroll(gallery, load_model(model), model, index_path=index, rebuild=True)
    assert g1.embedded == 6


def test_json_scores_are_rounded_to_4_decimals(gallery, models, tmp_path, capsys):
    """The JSON shows scores as the text does (4 decimals): float32 sums differ in the last bits between CPUs."""
    q = write_png(tmp_path / "q.png", person(1, 5))
    assert ident.run(str(models["a16"]), str(gallery), [str(q)], aligned=True, as_json=True, far=0.2,
                     out=sys.stdout, err=sys.stderr) == 0
    doc = json.loads(capsys.readouterr().out)
    r = doc["results"][0]
    values = [doc["threshold"], r["score"], *(score for _, score in r["top"])]
    assert all(v == round(v, 4) for v in values), values
    assert any(v != 0 for v in values)


def test_gallery_folder_named_like_the_rejection_is_refused(models, embedder, tmp_path, capsys):
    """identify-folder-named-unknown-ambiguous: "unknown" is identify's answer for "no match", so a gallery folder
    named like it under the name rule (`unknown`, `Unknown`, ` UNKNOWN `) is refused at enrolment, in one line that
    says to rename it. An answer "unknown" then always means a rejection, in the text and the JSON output alike."""
    g = tmp_path / "gallery"
    for i in range(2):
        write_png(g / f"id{i}" / "0.png", person(i, 0))
    write_png(g / "Unknown" / "0.png", person(2, 0))  # photos of someone the user has not named yet
    q = write_png(tmp_path / "q.png", person(2, 1))
    for as_json in (False, True):
        rc = ident.run(str(models["a16"]), str(g), [str(q)], aligned=True, as_json=as_json,
                       index=str(tmp_path / "i.npz"), out=sys.stdout, err=sys.stderr)
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert rc == 1 and captured.out == "" and len(lines) == 1, captured
        assert lines[0].startswith("error: gallery identity folder 'Unknown'") and "rename the folder" in lines[0]
    assert not (tmp_path / "i.npz").exists()
    with pytest.raises(FaceError, match="rename the folder"):
        enroll(g, embedder, models["a16"])
    # Renamed, the person is answered by name; a query below the threshold is the only "unknown".
    (g / "Unknown").rename(g / "unnamed_person_1")
    rc = ident.run(str(models["a16"]), str(g), [str(q)], aligned=True, as_json=True, threshold=0.0,
                   index=str(tmp_path / "i.npz"), out=sys.stdout, err=sys.stderr)
    assert rc == 0 and json.loads(capsys.readouterr().out)["results"][0]["identity"] == "unnamed_person_1"


def test_case_variant_folders_of_one_name_are_one_identity(models, embedder, tmp_path):
    """prepare-case-variant-folders-two-classes, in identify's gallery: `Colin_Powell/` and `colin_powell/` (or
    `Tony Blair/` and `Tony_Blair/`) are one identity under the name rule of --exclude_names, with one warning
    naming both folders per merge; the person is not her own impostor for --far."""
    g = tmp_path / "gallery"
    for folder, (who, shot) in (("Colin_Powell", (0, 0)), ("colin_powell", (0, 1)), ("Tony Blair", (1, 0)),
                                ("Tony_Blair", (1, 1)), ("Serena", (2, 0)), ("Serena", (2, 1))):
        write_png(g / folder / f"{who}_{shot}.png", person(who, shot))
    warnings = []
    gal = enroll(g, embedder, models["a16"], warn=warnings.append)
    assert gal.names == ["Colin_Powell", "Serena", "Tony Blair"] and gal.num_images == [2, 2, 2]
    merged = [w for w in warnings if "merged into one identity" in w]
    assert len(merged) == 2, warnings
    assert "'Colin_Powell' and 'colin_powell'" in merged[0] and "'Tony Blair' and 'Tony_Blair'" in merged[1]
    assert gal.merged == [("Colin_Powell", ["Colin_Powell", "colin_powell"]),
                          ("Tony Blair", ["Tony Blair", "Tony_Blair"])]


def test_symlink_back_to_the_gallery_root_is_skipped(models, embedder, tmp_path):
    """prepare-symlink-loop-duplicates-classes, in identify's gallery: `id2/all -> ..` is not followed (id2's
    template would average three people), and it is listed as skipped with its reason."""
    g = tmp_path / "gallery"
    for i in range(3):
        for s in range(2):
            write_png(g / f"id{i}" / f"{s}.png", person(i, s))
    try:
        os.symlink("..", g / "id2" / "all")
    except (OSError, NotImplementedError) as e:
        pytest.skip(f"cannot make symlinks here: {e}")
    warnings = []
    gal = enroll(g, embedder, models["a16"], warn=warnings.append)
    assert gal.names == ["id0", "id1", "id2"] and gal.num_images == [2, 2, 2]
    assert gal.shared_photos == [] and not any("same photo" in w for w in warnings)
    reasons = dict(gal.skipped)
    assert set(reasons) == {"id2/all"} and "symlink to an ancestor folder" in reasons["id2/all"]
    assert any(w.startswith("skipped gallery file id2/all: symlink to an ancestor folder") for w in warnings)


def test_folder_name_not_utf8_is_enrolled_and_printed_escaped(models, tmp_path, capsys):
    """prepare-latin1-folder-name-aborts, in identify: a gallery folder named in Latin-1 (`Jos\\xe9_Maria`) is
    enrolled; its name is printed escaped, as valid UTF-8 text, in the text and the JSON output."""
    g = tmp_path / "gallery"
    write_png(g / "Tony" / "0.png", person(0, 0))
    raw = os.path.join(os.fsencode(g), b"Jos\xe9_Maria")
    try:
        os.makedirs(raw)
    except OSError as e:
        pytest.skip(f"this file system refuses a folder name that is not UTF-8: {e}")
    from PIL import Image

    Image.fromarray(person(1, 0)).save(Path(os.fsdecode(raw)) / "0.png")  # PIL opens the path as Python does
    q = write_png(tmp_path / "q.png", person(1, 1))
    rc = ident.run(str(models["a16"]), str(g), [str(q)], aligned=True, threshold=0.0, index=str(tmp_path / "i.npz"),
                   out=sys.stdout, err=sys.stderr)
    out = capsys.readouterr().out
    assert rc == 0 and f"{q}: Jos\\xe9_Maria" in out, out
    out.encode("utf-8")  # valid text: no surrogate escapes
    rc = ident.run(str(models["a16"]), str(g), [str(q)], aligned=True, as_json=True, threshold=0.0,
                   index=str(tmp_path / "i.npz"), out=sys.stdout, err=sys.stderr)
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["results"][0]["identity"] == "Jos\\xe9_Maria"
    assert [n for n, _ in doc["results"][0]["top"]] == ["Jos\\xe9_Maria", "Tony"]


def test_index_made_by_an_older_image_decoder_is_embedded_again(gallery, embedder, models, monkeypatch):
    """The same photo bytes decode to other pixels after a decoder fix (16-bit data, issue 29): an index made by
    another images.DECODER_VERSION is not reused; every photo is embedded again, with a warning."""
    from mobiface_tf import images

    spy = CountingEmbedder(embedder)
    enroll(gallery, spy, models["a16"])
    assert spy.count == 6
    monkeypatch.setattr(images, "DECODER_VERSION", images.DECODER_VERSION + 1)
    warnings = []
    g = enroll(gallery, spy, models["a16"], warn=warnings.append)
    assert (spy.count, g.embedded, g.reused) == (12, 6, 0)
    assert any("older image decoder" in w for w in warnings), warnings
    g = enroll(gallery, spy, models["a16"])  # the rewritten index is of the new decoder: reused
    assert (spy.count, g.reused) == (12, 6)
