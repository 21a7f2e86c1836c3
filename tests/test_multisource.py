"""Multi-source training data: the cross-dataset exclusion removes exactly the people scored later, by name."""
import json
import subprocess
import sys

import pytest

from conftest import REPO, person, write_png
from mobiface_tf.data.multisource import Source, build_multisource, scored_people


def _tree(root, names, shots=2):
    for k, name in enumerate(names):
        for s in range(shots):
            write_png(root / name / f"{s}.png", person(hash(name) % 1000 + k, s))
    return root


def _pairs(path):
    # 2 folds; fold 1 names Ann_Lee and Bo_Kim, fold 2 names Cy_Dee and Ed_Fox.
    path.write_text("2\t1\nAnn_Lee\t1\t2\nAnn_Lee\t1\tBo_Kim\t1\nCy_Dee\t1\t2\nCy_Dee\t1\tEd_Fox\t1\n")
    return path


def test_exclusion_across_datasets_removes_exactly_the_named_people(tmp_path):
    lfw = _tree(tmp_path / "lfw", ["Ann_Lee", "Bo_Kim", "Cy_Dee", "Ed_Fox", "Jo_Ray", "Li_Wu"])
    glint = _tree(tmp_path / "glint", ["Ann_Lee", "Jo_Ray", "Mo_Tan", "Leonardo_DiCaprio", "Zed_Zu"])
    celeba = _tree(tmp_path / "celeba", ["101", "102"])
    cfp = tmp_path / "list_name.txt"
    cfp.write_text("Leonardo Dicaprio\nLi  Wu\nNot Anyone\n")  # CFP spelling: spaces, its own capitals
    rec = build_multisource([Source("lfw", str(lfw), "none"), Source("glint", str(glint), "none"),
                             Source("celeba", str(celeba), "none")], tmp_path / "out",
                            lfw_pairs=_pairs(tmp_path / "pairs.txt"), lfw_folds=[1], names_files=[cfp],
                            workers=1, progress=False)
    by = {s["name"]: s for s in rec["sources"]}
    # LFW fold 1 people (Ann_Lee, Bo_Kim) and CFP's Li Wu / Leonardo Dicaprio go; fold 2 people stay (not scored).
    assert sorted(by["lfw"]["excluded"]["identities"]) == ["Ann_Lee", "Bo_Kim", "Li_Wu"]
    assert by["lfw"]["num_classes"] == 3 and by["lfw"]["num_images"] == 6
    assert sorted(by["glint"]["excluded"]["identities"]) == ["Ann_Lee", "Leonardo_DiCaprio"]
    assert by["glint"]["num_classes"] == 3 and by["glint"]["excluded"]["num_images"] == 4
    why, = by["glint"]["excluded"]["identities"]["Leonardo_DiCaprio"]
    assert why.startswith("listed in") and why.endswith("/list_name.txt")
    assert "folds 1" in by["glint"]["excluded"]["identities"]["Ann_Lee"][0]
    assert by["celeba"]["num_classes"] == 2 and by["celeba"]["excluded"]["num_identities"] == 0
    assert "numbers" in by["celeba"]["note"]
    kept = json.loads((tmp_path / "out" / "glint" / "manifest.json").read_text())["class_names"]
    assert sorted(kept) == ["Jo_Ray", "Mo_Tan", "Zed_Zu"]
    assert json.loads((tmp_path / "out" / "sources.json").read_text()) == rec


def test_scored_people_and_bad_input(tmp_path):
    cfp = tmp_path / "names.txt"
    cfp.write_text("Ann Lee\n")
    got = scored_people(_pairs(tmp_path / "pairs.txt"), [1, 2], [cfp])
    assert sorted(got) == ["ann_lee", "bo_kim", "cy_dee", "ed_fox"] and len(got["ann_lee"]) == 2
    with pytest.raises(ValueError, match="nothing to leave out"):
        build_multisource([Source("a", str(tmp_path))], tmp_path / "o")
    r = subprocess.run([sys.executable, "tools/prepare_multisource.py", f"--output={tmp_path / 'o'}",
                        "--source=bad"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: --source='bad'")
