"""Names across datasets (mobiface_tf.data.people) and `tools/prepare_data.py --exclude_names`."""
import json
import subprocess
import sys
import unicodedata

import pytest

from mobiface_tf.data import people

from conftest import REPO  # noqa: E402  (the repo root, one definition for every test file)


def test_canonical_name_spaces_underscores_case_and_nfc():
    decomposed = unicodedata.normalize("NFD", "José Núñez")
    assert decomposed != "José Núñez"
    assert people.canonical_name(decomposed) == people.canonical_name("Jose\u0301_Nu\u0301n\u0303ez") \
        == people.canonical_name("JOSÉ_NÚÑEZ") == "josé_núñez"
    assert people.canonical_name("  Leonardo   Dicaprio ") == people.canonical_name("Leonardo_DiCaprio")
    assert people.canonical_name("Tom__Hanks") == people.canonical_name("Tom _ Hanks") == "tom_hanks"
    assert people.canonical_name("Robert_Downey_Jr") != people.canonical_name("Robert Downey Jr.")  # punctuation kept
    assert people.canonical_name("Jay-Z") != people.canonical_name("Jay Z")
    with pytest.raises(TypeError):
        people.canonical_name(None)


def test_read_names_file_and_exclude(tmp_path):
    f = tmp_path / "names.txt"
    f.write_bytes("\ufeff# CFP-style list\r\n50 Cent\r\nLeonardo Dicaprio\r\n\r\nJose\u0301 Nu\u0301n\u0303ez\r\n".encode())
    names = people.read_names_file(f)
    assert names == {"50_cent", "leonardo_dicaprio", "josé_núñez"}
    split = people.exclude(["Ann_Smith", "50_Cent", "Leonardo_DiCaprio", "José_Núñez", "Tom_Hanks"], names)
    assert split.keep == [0, 4]
    assert split.excluded == ["50_Cent", "Leonardo_DiCaprio", "José_Núñez"]
    (tmp_path / "empty.txt").write_text("# nobody\n\n")
    with pytest.raises(ValueError, match="names nobody"):
        people.read_names_file(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match="names file not found"):
        people.read_names_file(tmp_path / "missing.txt")
    (tmp_path / "latin1.txt").write_bytes("Jos\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        people.read_names_file(tmp_path / "latin1.txt")


def test_identity_folders_follow_the_exclude_names_rule(tmp_path):
    """prepare-case-variant-folders-two-classes: the folders --exclude_names drops together for one listed name
    are the folders one identity is made of (mobiface_tf.identity_folders), in prepare, identify and evaluate."""
    from mobiface_tf.identity_folders import list_identity_tree

    folders = ["Colin_Powell", "colin_powell", "Tony Blair", "Tony_Blair", unicodedata.normalize("NFD", "José_Núñez"),
               "JOSÉ NÚÑEZ", "Serena_Williams", "Jay-Z", "Jay Z"]
    for k, name in enumerate(folders):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{k}.jpg").write_bytes(b"x")
    ids, _ = list_identity_tree(tmp_path, on_merge=None)
    assert len(ids) == 6 and sum(len(files) for _, files in ids) == len(folders)
    for name, files in ids:  # each identity holds exactly the folders the names file rule calls this person
        assert sorted(f.parent.name for f in files) == sorted(f for f in folders if people.exclude([f], [name]).excluded)
        assert {people.canonical_name(f.parent.name) for f in files} == {people.canonical_name(name)}
    names = [name for name, _ in ids]
    split = people.exclude(names, ["Colin Powell", "tony blair", "José Núñez"])
    assert len(split.excluded) == 3 and [names[i] for i in split.keep] == ["Jay Z", "Jay-Z", "Serena_Williams"]


@pytest.mark.slow  # a prepare_data subprocess (TensorFlow start-up): about 35 s on 2 shared cores
def test_prepare_data_exclude_names_with_spaces(tmp_path):
    """A CFP-style names file (spaces, other capitals) leaves those people out of the shards; the manifest says who."""
    import cv2

    from mobiface_tf.data.synthetic import render_identity
    from mobiface_tf.data.tfrecord import read_examples

    tree = tmp_path / "in"
    folders = ["Ann_Smith", "Leonardo_DiCaprio", "Tom_Hanks", "Queen_Elizabeth_II"]
    for k, name in enumerate(folders):
        (tree / name).mkdir(parents=True)
        for j, face in enumerate(render_identity(k, 0, 2)):
            cv2.imwrite(str(tree / name / f"{j}.png"), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    names = tmp_path / "list_name.txt"
    names.write_text("Leonardo Dicaprio\nQueen Elizabeth Ii\nSomeone Else\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "tools/prepare_data.py", "--progress=false", f"--input={tree}",
                           f"--output={out}", "--align=none", "--workers=1", f"--exclude_names={names}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "excluded 4 images of 2 people listed in" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["class_names"] == ["Ann_Smith", "Tom_Hanks"]
    assert manifest["num_images"] == 4
    record = manifest["excluded_names"]
    assert record["identities"] == ["Leonardo_DiCaprio", "Queen_Elizabeth_II"]
    assert record["num_identities"] == 2 and record["num_images"] == 4 and record["people_in_file"] == 3
    assert "names file" in record["reason"]
    labels = sorted({int(ex["label"]) for p in out.glob("*.tfrecord") for ex in read_examples(p)})
    assert labels == [0, 1]

    bad = subprocess.run([sys.executable, "tools/prepare_data.py", "--progress=false", f"--input={tree}",
                          f"--output={tmp_path / 'out2'}", "--align=none", f"--exclude_names={tmp_path / 'nope.txt'}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "error: names file not found" in bad.stderr and "Traceback" not in bad.stderr


def test_cfp_names_against_lfw_folders(cfp_dir, lfw_dir):
    """CFP's list_name.txt (spaces, its own capitals) against LFW's folder names: 176 shared people, 172 of them
    spelt with the same capitals (the data README's count)."""
    names = people.read_names_file(cfp_dir / "Data" / "list_name.txt")
    folders = sorted(d.name for d in lfw_dir.iterdir() if d.is_dir())
    shared = people.exclude(folders, names).excluded
    assert len(names) == 500 and len(shared) == 176
    assert {"Leonardo_DiCaprio", "LeBron_James", "Queen_Elizabeth_II", "John_McEnroe"} <= set(shared)
    raw = {line.strip().replace(" ", "_") for line in (cfp_dir / "Data" / "list_name.txt").read_text().splitlines()}
    assert len(raw & set(folders)) == 172
