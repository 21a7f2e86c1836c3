"""LFW pairs.txt parsing and the restricted .bin unpickler (including a malicious pickle that must not run)."""
import os
import pickle

import numpy as np
import pytest

from mobiface_tf.data.verification import list_identities, read_bin, read_lfw_pairs


def _fake_lfw(root, names_counts):
    for name, count in names_counts.items():
        (root / name).mkdir(parents=True)
        for i in range(1, count + 1):
            (root / name / f"{name}_{i:04d}.jpg").write_bytes(b"x")
    return root


def _write_pairs(path, folds, per_class, same_line="A\t1\t2", diff_line="A\t1\tB\t1"):
    lines = [f"{folds}\t{per_class}"]
    for _ in range(folds):
        lines += [same_line] * per_class + [diff_line] * per_class
    path.write_text("\n".join(lines) + "\n")
    return path


def test_pairs_folds_and_paths(tmp_path):
    lfw = _fake_lfw(tmp_path / "lfw", {"A": 2, "B": 1})
    pairs = read_lfw_pairs(_write_pairs(tmp_path / "pairs.txt", 3, 2), lfw)
    assert len(pairs) == 12
    assert [p.fold for p in pairs] == [0] * 4 + [1] * 4 + [2] * 4
    assert [p.issame for p in pairs[:4]] == [True, True, False, False]
    assert pairs[0].path_b == lfw / "A" / "A_0002.jpg"
    assert pairs[2].path_b == lfw / "B" / "B_0001.jpg"


def test_pairs_errors(tmp_path):
    lfw = _fake_lfw(tmp_path / "lfw", {"A": 2, "B": 1})
    bad_header = tmp_path / "h.txt"
    bad_header.write_text("ten folds\nA\t1\t2\n")
    with pytest.raises(ValueError, match="header"):
        read_lfw_pairs(bad_header, lfw)
    short = _write_pairs(tmp_path / "short.txt", 2, 2)
    short.write_text(short.read_text().replace("2\t2", "3\t2", 1))
    with pytest.raises(ValueError, match="announces 12 pair lines but the file has 8"):
        read_lfw_pairs(short, lfw)
    swapped = _write_pairs(tmp_path / "swapped.txt", 1, 1, same_line="A\t1\tB\t1")
    with pytest.raises(ValueError, match=r"swapped.txt:2: expected a same-person line"):
        read_lfw_pairs(swapped, lfw)
    bad_index = _write_pairs(tmp_path / "idx.txt", 1, 1, same_line="A\tone\t2")
    with pytest.raises(ValueError, match="'one' is not a positive integer"):
        read_lfw_pairs(bad_index, lfw)
    missing = _write_pairs(tmp_path / "missing.txt", 1, 1, same_line="A\t1\t7")
    with pytest.raises(FileNotFoundError, match=r"1 image.*A/A_0007' \(tried extensions \.jpg, \.jpeg, \.png, "
                                                r"\.bmp, \.pgm, \.ppm, \.webp, \.jfif, .*\.avif"):
        read_lfw_pairs(missing, lfw)
    with pytest.raises(FileNotFoundError, match="pairs file not found"):
        read_lfw_pairs(tmp_path / "nope.txt", lfw)


def test_list_identities(tmp_path):
    lfw = _fake_lfw(tmp_path / "lfw", {"A": 5, "B": 1, "C": 3})
    people = list_identities(lfw, min_images=2, max_per_identity=4)
    assert [(n, len(f)) for n, f in people] == [("A", 4), ("C", 3)]
    assert [(n, len(f)) for n, f in list_identities(lfw, max_images=6)] == [("A", 5)]


def test_pairs_find_photos_in_folders_of_the_same_name(tmp_path):
    """prepare-case-variant-folders-two-classes, evaluate's folders: a person's photos split over `Colin_Powell/`
    and `colin_powell/` (or `Tony Blair/`) are found by the name rule, as --exclude_names and prepare see them."""
    lfw = tmp_path / "lfw"
    for rel in ["Colin_Powell/Colin_Powell_0001.jpg", "colin_powell/Colin_Powell_0005.jpg",
                "Tony Blair/Tony Blair_0001.jpg"]:
        (lfw / rel).parent.mkdir(parents=True, exist_ok=True)
        (lfw / rel).write_bytes(b"x")
    pairs = read_lfw_pairs(_write_pairs(tmp_path / "pairs.txt", 1, 1, same_line="Colin_Powell\t1\t5",
                                        diff_line="Colin_Powell\t1\tTony_Blair\t1"), lfw)
    assert [(p.path_a.relative_to(lfw).as_posix(), p.path_b.relative_to(lfw).as_posix()) for p in pairs] == [
        ("Colin_Powell/Colin_Powell_0001.jpg", "colin_powell/Colin_Powell_0005.jpg"),
        ("Colin_Powell/Colin_Powell_0001.jpg", "Tony Blair/Tony Blair_0001.jpg")]
    people = list_identities(lfw, min_images=1)
    assert [(n, len(f)) for n, f in people] == [("Colin_Powell", 2), ("Tony Blair", 1)]


def test_real_pairs_file(lfw_pairs, lfw_dir):
    pairs = read_lfw_pairs(lfw_pairs, lfw_dir)
    assert len(pairs) == 6000
    for fold in range(10):
        in_fold = [p for p in pairs if p.fold == fold]
        assert len(in_fold) == 600 and sum(p.issame for p in in_fold) == 300
    assert pairs[0].path_a.name == "Abel_Pacheco_0001.jpg" and pairs[0].path_b.name == "Abel_Pacheco_0004.jpg"
    assert len({p for pair in pairs for p in (pair.path_a, pair.path_b)}) > 7000


# ---------------------------------------------------------------- .bin


def test_bin_roundtrip_plain_and_numpy(tmp_path):
    images = [bytes([i]) * 10 for i in range(4)]
    for issame in ([True, False], np.array([True, False])):
        for protocol in (2, 4):
            path = tmp_path / f"ok_{type(issame).__name__}_{protocol}.bin"
            path.write_bytes(pickle.dumps((images, issame), protocol=protocol))
            got_images, got_issame = read_bin(path)
            assert got_images == images
            assert got_issame.dtype == bool and got_issame.tolist() == [True, False]


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bin_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([b"a", b"b"], [_Exploit(marker)])))
    # Sanity: the payload really is live, i.e. plain pickle would run it.
    pickle.loads(path.read_bytes())
    assert marker.exists()
    marker.unlink()
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global (posix|os|nt)\.system"):
        read_bin(path)
    assert not marker.exists()


def test_bin_refuses_object_arrays_and_bad_layout(tmp_path):
    path = tmp_path / "obj.bin"
    path.write_bytes(pickle.dumps(([b"a", b"b"], np.array([True], dtype=object))))
    with pytest.raises(pickle.UnpicklingError, match="object dtype"):
        read_bin(path)
    path.write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True])))
    with pytest.raises(ValueError, match="3 images for 1 pairs"):
        read_bin(path)
    path.write_bytes(b"10\t300\nnot a pickle\n")
    with pytest.raises(ValueError, match="is not a readable .bin pickle"):
        read_bin(path)
    path.write_bytes(pickle.dumps(([b"a", b"b"], [True]))[:-5])  # truncated
    with pytest.raises(ValueError, match="is not a readable .bin pickle"):
        read_bin(path)
    path.write_bytes(pickle.dumps({"images": []}))
    with pytest.raises(ValueError, match="expected a \\(images, issame\\) pair"):
        read_bin(path)


def test_real_bin(bin_file):
    import cv2

    images, issame = read_bin(bin_file)
    assert len(images) == 1498 and issame.shape == (749,) and issame.all()
    first = cv2.imdecode(np.frombuffer(images[0], np.uint8), cv2.IMREAD_COLOR)
    assert first.shape == (112, 112, 3)


@pytest.mark.parametrize("ext", [".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".webp", ".PNG", ".JPG"])
def test_pairs_find_images_in_every_supported_format(tmp_path, ext):
    lfw = tmp_path / "lfw"
    for name, count in {"A": 2, "B": 1}.items():
        (lfw / name).mkdir(parents=True)
        for i in range(1, count + 1):
            (lfw / name / f"{name}_{i:04d}{ext}").write_bytes(b"x")
    pairs = read_lfw_pairs(_write_pairs(tmp_path / "pairs.txt", 2, 1), lfw)
    assert [p.path_b.name for p in pairs] == [f"A_0002{ext}", f"B_0001{ext}"] * 2


@pytest.mark.shared_data
def test_png_lfw_case_scores_like_jpg(tmp_path, reference_tflite):
    """evaluate (and training's --val_lfw_dir, which calls the same function) on an LFW folder of PNGs."""
    from test_images import case

    from mobiface_tf.embedder import load_embedder
    from mobiface_tf.evaluate import evaluate_lfw

    d = case("lfw-png-misleading-missing")
    pairs = read_lfw_pairs(d / "pairs.txt", d / "lfw_png")
    assert len(pairs) == 20 and all(p.path_a.suffix == ".png" for p in pairs)
    report, scores, issame = evaluate_lfw(load_embedder(reference_tflite), d / "pairs.txt", d / "lfw_png",
                                          progress=False)
    assert report["num_pairs"] == 20 and 0.0 <= report["accuracy"] <= 1.0
    # A truly missing image is named with the extensions tried.
    (tmp_path / "lfw").mkdir()
    with pytest.raises(FileNotFoundError, match=r"40 image\(s\).*Person_00_0001', .* \(tried extensions \.jpg"):
        read_lfw_pairs(d / "pairs.txt", tmp_path / "lfw")


@pytest.mark.parametrize("bom,eol", [(True, "\n"), (False, "\r\n"), (True, "\r\n"), (False, "\r")])
def test_pairs_bom_and_line_ends_read_the_same(tmp_path, bom, eol):
    lfw = _fake_lfw(tmp_path / "lfw", {"A": 2, "B": 1})
    plain = _write_pairs(tmp_path / "plain.txt", 2, 1)
    other = tmp_path / "other.txt"
    other.write_bytes((b"\xef\xbb\xbf" if bom else b"") + plain.read_text().replace("\n", eol).encode())
    assert read_lfw_pairs(other, lfw) == read_lfw_pairs(plain, lfw)


@pytest.mark.shared_data
def test_pairs_bom_case():
    from test_images import case

    d = case("pairs-utf8-bom")
    lfw = case("lfw-png-misleading-missing", "lfw_png")
    assert read_lfw_pairs(d / "pairs_bom.txt", lfw) == read_lfw_pairs(d / "pairs_plain.txt", lfw)


def test_bin_numpy_arrays_and_scalars_at_every_protocol(tmp_path):
    imgs = [np.frombuffer(bytes([i]) * 10, np.uint8).reshape(10, 1) for i in range(4)]  # as cv2.imencode gives
    for issame in (np.array([True, False]), [np.True_, np.False_], np.array([1, 0], np.int64),
                   [np.int32(1), np.uint8(0)]):
        for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
            path = tmp_path / f"np_{protocol}.bin"
            path.write_bytes(pickle.dumps((imgs, issame), protocol=protocol))
            got_images, got_issame = read_bin(path)
            assert got_images == [bytes([i]) * 10 for i in range(4)]
            assert got_issame.tolist() == [True, False]


@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_bin_refuses_non_numeric_numpy_at_every_protocol(tmp_path, protocol):
    path = tmp_path / "bad.bin"
    for bad, match in ((np.array([True], dtype=object), "object dtype"), (np.array(["a"]), "dtype\\('<U1'\\)"),
                       (np.zeros(1, dtype=[("a", "u1")]), "dtype"), (np.datetime64("2020-01-01"), "dtype")):
        path.write_bytes(pickle.dumps(([b"a", b"b"], bad), protocol=protocol))
        with pytest.raises(pickle.UnpicklingError, match=match):
            read_bin(path)


@pytest.mark.shared_data
def test_bin_protocol5_cases_read_like_the_control():
    from test_images import case

    d = case("bin-numpy-protocol5-refused")
    control = read_bin(d / "control_protocol4.bin")
    assert len(control[1]) == 20
    for name in ("imencode_highest.bin", "issame_ndarray_highest.bin"):
        images, issame = read_bin(d / name)
        assert images == control[0] and issame.tolist() == control[1].tolist()


def test_bin_crop_of_another_size_is_named_with_the_ways_out(tmp_path):
    """Case bin-mixed-image-sizes-numpy-error: one 100x100 crop among 112x112 ones is named by its index and pair,
    with its size, the expected size and the ways out (it used to reach numpy's "all input arrays must have the
    same shape"). Sizes come from the headers: nothing is decoded."""
    import re

    from conftest import bin_with_one_odd_crop

    from mobiface_tf.data.verification import check_image_sizes

    path = bin_with_one_odd_crop(tmp_path / "odd.bin", odd=5, odd_size=100)
    images, _ = read_bin(path)  # reading a .bin does not judge its sizes: --realign takes any
    check_image_sizes(path, images[:4], (112, 112))  # the crops before the odd one pass
    for size, basis in (((112, 112), "the model's input"), (None, "the size of image 0")):
        with pytest.raises(ValueError) as err:
            check_image_sizes(path, images, size)
        msg = str(err.value)
        assert "\n" not in msg
        assert re.match(rf"{re.escape(repr(str(path)))}: image 5 \(counting from 0; the second image of pair 2\) is "
                        rf"100x100, expected 112x112 \({re.escape(basis)}\); pass --realign .*, or rebuild the \.bin "
                        r"with 112x112 crops", msg), msg
    with pytest.raises(ValueError, match=r"image 5 .*is 100x100, expected 112x112 .*; rebuild the \.bin") as err:
        check_image_sizes(path, images, (112, 112), realign=False)  # a command without --realign does not offer it
    assert "--realign" not in str(err.value)
