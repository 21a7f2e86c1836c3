"""tf.data pipeline: each op eagerly and inside tf.data, determinism, checkpointed iterator, sharding, corruption."""
import hashlib
import shutil

import numpy as np
import pytest
import tensorflow as tf

from mobiface_tf.data.pipeline import (batch_to_float, decode_eval, decode_train, make_dataset, match_files,
                                       random_flip, read_manifest, to_float)
from mobiface_tf.data.synthetic import render_identity, write_synthetic_tfrecords
from mobiface_tf.data.tfrecord import encode_jpeg, make_example, parse_example

N_IDS, PER_ID, SHARDS = 6, 10, 4  # 60 images


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    write_synthetic_tfrecords(d, N_IDS, PER_ID, seed=5, shards=SHARDS)
    return d


def _hash(img):
    return hashlib.md5(np.asarray(img).tobytes()).hexdigest()


def test_ops_eager_and_in_tf_data():
    img = render_identity(0, 1, 1)[0]
    rec = make_example(encode_jpeg(img), 3)
    seed = tf.constant([7, 9], tf.int64)
    eager = [parse_example(rec), decode_eval(rec), decode_train(rec, seed)]
    ds = tf.data.Dataset.from_tensors(rec)
    in_ds = [next(iter(ds.map(parse_example))), next(iter(ds.map(decode_eval))),
             next(iter(tf.data.Dataset.zip((ds, tf.data.Dataset.from_tensors(seed))).map(decode_train)))]
    for (xe, ye), (xd, yd) in zip(eager, in_ds):
        np.testing.assert_array_equal(xe.numpy(), xd.numpy())
        assert int(ye) == int(yd) == 3
    x, y = eager[0]
    assert x.dtype == tf.uint8 and x.shape == (112, 112, 3) and y.dtype == tf.int64
    assert np.abs(x.numpy().astype(int) - img).mean() < 8  # JPEG q95 round trip
    assert eager[1][0].dtype == tf.uint8 and eager[1][1].dtype == tf.int32
    np.testing.assert_array_equal(to_float(x).numpy(), x.numpy().astype(np.float32))
    batch = tf.stack([x, x])
    eager_b = batch_to_float(batch, tf.constant([3, 3]))[0]
    in_ds_b = next(iter(tf.data.Dataset.from_tensors((batch, tf.constant([3, 3]))).map(batch_to_float)))[0]
    assert eager_b.dtype == in_ds_b.dtype == tf.float32
    np.testing.assert_array_equal(eager_b.numpy(), in_ds_b.numpy())


def test_random_flip_flips_half_eager_and_in_tf_data():
    img = tf.constant(np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3))
    outs = [random_flip(img, tf.constant([s, 0], tf.int64)).numpy() for s in range(40)]
    flipped = [np.array_equal(o, img.numpy()[:, ::-1]) for o in outs]
    same = [np.array_equal(o, img.numpy()) for o in outs]
    assert all(f or s for f, s in zip(flipped, same)) and 8 < sum(flipped) < 32
    seeds = tf.data.Dataset.from_tensor_slices(tf.constant([[s, 0] for s in range(40)], tf.int64))
    in_ds = [o.numpy() for o in seeds.map(lambda s: random_flip(img, s))]
    for a, b in zip(outs, in_ds):
        np.testing.assert_array_equal(a, b)


def test_shapes_eval_once_train_drops_remainder(shards):
    ev = list(make_dataset(shards, 16, training=False))
    assert [int(y.shape[0]) for _, y in ev] == [16, 16, 16, 12]
    x, y = ev[0]
    assert x.dtype == tf.float32 and x.shape == (16, 112, 112, 3) and y.dtype == tf.int32
    assert 0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 255 and float(tf.reduce_max(x)) > 1
    labels = np.concatenate([y.numpy() for _, y in ev])
    assert sorted(np.bincount(labels).tolist()) == [PER_ID] * N_IDS
    tr = make_dataset(shards, 16, training=True, seed=1, repeat=1)
    assert [int(y.shape[0]) for _, y in tr] == [16, 16, 16]
    assert tr.element_spec[0].shape == (16, 112, 112, 3)
    # Training repeats forever by default.
    it = iter(make_dataset(shards, 16, training=True, seed=1))
    assert sum(int(next(it)[1].shape[0]) for _ in range(8)) == 128


def test_deterministic_with_seed(shards):
    def first(seed):
        it = iter(make_dataset(shards, 8, training=True, seed=seed, deterministic=True))
        return [next(it) for _ in range(4)]
    a, b, c = first(3), first(3), first(4)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa.numpy(), xb.numpy())
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())
    assert any(not np.array_equal(ya.numpy(), yc.numpy()) for (_, ya), (_, yc) in zip(a, c))


def test_checkpoint_resumes_iterator_at_same_element(shards, tmp_path):
    ds = make_dataset(shards, 8, training=True, seed=2, deterministic=True, shuffle_buffer=32)
    it = iter(ds)
    for _ in range(3):
        next(it)
    ckpt = tf.train.Checkpoint(iterator=it)
    path = ckpt.save(str(tmp_path / "it"))
    after = [next(it) for _ in range(5)]  # crosses an epoch boundary (7 batches per epoch)
    it2 = iter(make_dataset(shards, 8, training=True, seed=2, deterministic=True, shuffle_buffer=32))
    tf.train.Checkpoint(iterator=it2).restore(path).assert_consumed()
    for (xa, ya), (xb, yb) in zip(after, [next(it2) for _ in range(5)]):
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())
        np.testing.assert_array_equal(xa.numpy(), xb.numpy())


def test_sharding_by_file_under_distribute(shards):
    seen = []
    for i in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i, num_replicas_in_sync=2)
        seen.append({_hash(img) for x, _ in make_dataset(shards, 8, training=False, input_context=ctx) for img in x})
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == N_IDS * PER_ID
    ctx = tf.distribute.InputContext(num_input_pipelines=8, input_pipeline_id=0)
    with pytest.raises(ValueError, match="4 shards cannot feed 8 input pipelines"):
        make_dataset(shards, 8, training=False, input_context=ctx)


def test_with_mirrored_strategy(shards):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    dist = strategy.distribute_datasets_from_function(
        lambda ctx: make_dataset(shards, ctx.get_per_replica_batch_size(8), training=True, seed=0,
                                 input_context=ctx))
    x, y = next(iter(dist))
    assert x.shape == (8, 112, 112, 3)


def _copy(shards, dst):
    shutil.copytree(shards, dst)
    return dst


def test_truncated_shard_named_before_reading(shards, tmp_path):
    d = _copy(shards, tmp_path / "s")
    victim = d / "train-00002-of-00004.tfrecord"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt TFRecord shard .*train-00002-of-00004.tfrecord"):
        make_dataset(d, 8, training=False)
    n = sum(int(y.shape[0]) for _, y in make_dataset(d, 8, training=False, skip_corrupt=True))
    assert 45 < n < 60  # the readable half of the shard is kept


def test_corrupt_record_names_shard_or_is_skipped(shards, tmp_path, capfd):
    d = _copy(shards, tmp_path / "s")
    victim = d / "train-00001-of-00004.tfrecord"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, bad CRC in the middle
    victim.write_bytes(bytes(data))
    with pytest.raises(tf.errors.InvalidArgumentError, match="train-00001-of-00004.tfrecord"):
        for _ in make_dataset(d, 8, training=False):
            pass
    n = sum(int(y.shape[0]) for _, y in make_dataset(d, 8, training=False, skip_corrupt=True))
    assert 45 < n < 60
    assert "skipping the unreadable rest of corrupt TFRecord shard" in capfd.readouterr().err


def test_skip_corrupt_without_manifest(shards, tmp_path):
    d = _copy(shards, tmp_path / "s")
    (d / "manifest.json").unlink()
    victim = d / "train-00000-of-00004.tfrecord"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(tf.errors.DataLossError):
        for _ in make_dataset(d, 8, training=False):
            pass
    n = sum(int(y.shape[0]) for _, y in make_dataset(d, 8, training=False, skip_corrupt=True))
    assert 45 < n < 60


def test_no_files_and_manifest(shards, tmp_path):
    with pytest.raises(ValueError, match="matched no files.*Run mobiface-prepare"):
        make_dataset(str(tmp_path / "*.tfrecord"), 8, training=True)
    with pytest.raises(ValueError, match="batch_size"):
        make_dataset(shards, 0, training=True)
    m = read_manifest(shards)
    assert m["num_images"] == 60 and m["num_classes"] == N_IDS and m["synthetic"] is True
    assert read_manifest(str(shards / "*.tfrecord")) == m
    assert len(match_files(shards)) == SHARDS


def test_manifest_has_one_owner_and_checks_its_invariants(tmp_path):
    """Every writer goes through mobiface_tf.data.manifest, which refuses a manifest that breaks the schema."""
    import json

    import pytest

    from mobiface_tf.data import manifest as mf
    from mobiface_tf.data.synthetic import write_synthetic_tfrecords

    m = write_synthetic_tfrecords(tmp_path / "d", 3, 2, seed=0, shards=2)
    assert mf.read_manifest(tmp_path / "d") == m == mf.read_manifest(tmp_path / "d" / "train-00000-of-00002.tfrecord")
    bad = dict(m, num_images=m["num_images"] + 1)
    with pytest.raises(mf.ManifestError, match="shards hold 6 examples but num_images is 7"):
        mf.write_manifest(tmp_path / "d", bad)
    assert json.loads((tmp_path / "d" / mf.MANIFEST).read_text()) == m  # nothing written
    (tmp_path / "d" / mf.MANIFEST).write_text(json.dumps(dict(m, class_counts=[2, 2, 1])))
    with pytest.raises(ValueError, match="class_counts"):
        mf.read_manifest(tmp_path / "d")
    (tmp_path / "d" / mf.MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        mf.read_manifest(tmp_path / "d")
    # No module other than the owner writes or parses manifest.json itself.
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    for path in [*root.glob("mobiface_tf/**/*.py"), *root.glob("tools/**/*.py")]:
        text = path.read_text()
        if path.name != "manifest.py":
            assert "write_json_atomic(manifest_path" not in text and "MANIFEST), {" not in text, path
