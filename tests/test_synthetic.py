"""SYNTHETIC identities: stable per identity, varied per image, distinguishable, labelled synthetic."""
import json

import numpy as np

from mobiface_tf.data.pipeline import make_dataset
from mobiface_tf.data.synthetic import render_identity, write_synthetic_folder, write_synthetic_tfrecords


def test_stable_identity_varied_images():
    a, b = render_identity(1, 3, 4), render_identity(1, 3, 4)
    np.testing.assert_array_equal(a, b)  # same seed, same identity: same images
    assert a.shape == (4, 112, 112, 3) and a.dtype == np.uint8
    assert not np.array_equal(a[0], a[1])  # pose / light / noise differ per image
    assert not np.array_equal(render_identity(2, 3, 1), a[:1])


def test_identities_are_distinguishable():
    # Nearest class mean on 28x28 pixels, train on 6 images per identity, test on 4 others: far above chance.
    ids, n_train, n_test = 12, 6, 4
    feats = lambda x: x[:, ::4, ::4].reshape(len(x), -1).astype(np.float32) / 255  # noqa: E731
    imgs = [render_identity(0, c, n_train + n_test) for c in range(ids)]
    means = np.stack([feats(im[:n_train]).mean(0) for im in imgs])
    correct = 0
    for c, im in enumerate(imgs):
        d = ((feats(im[n_train:])[:, None] - means[None]) ** 2).sum(-1)
        correct += int((d.argmin(1) == c).sum())
    acc = correct / (ids * n_test)
    assert acc > 0.8, acc  # chance is 1/12


def test_folder_labelled_synthetic(tmp_path):
    root = write_synthetic_folder(tmp_path / "syn", 3, 2, seed=0)
    assert sorted(p.name for p in root.iterdir()) == ["SYNTHETIC.txt", "synthetic_id0000", "synthetic_id0001",
                                                      "synthetic_id0002"]
    assert len(list(root.glob("synthetic_id*/*.jpg"))) == 6
    assert "SYNTHETIC" in (root / "SYNTHETIC.txt").read_text()


def test_tfrecords_manifest_and_readable(tmp_path):
    m = write_synthetic_tfrecords(tmp_path, 5, 4, seed=0, shards=2)
    assert m == json.loads((tmp_path / "manifest.json").read_text())
    assert m["synthetic"] is True and m["num_images"] == 20 and m["num_classes"] == 5 and m["skipped"] == []
    assert m["class_names"][0] == "synthetic_id0000"
    assert sum(s["num_images"] for s in m["shards"]) == 20
    labels = np.concatenate([y.numpy() for _, y in make_dataset(tmp_path, 8, training=False)])
    assert sorted(labels.tolist()) == sorted([c for c in range(5) for _ in range(4)])
