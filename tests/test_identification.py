"""MegaFace-style identification: chunked search vs a direct full-matrix reference, and the benchmark CLI."""
import json
import subprocess
import sys

import numpy as np
import pytest

from mobiface_tf.megaface import search

from conftest import REPO  # noqa: E402  (the repo root, one definition for every test file)


def _probes(rng, num_ids=10, per_id=4, dim=32, noise=1.2):
    centres = rng.standard_normal((num_ids, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(num_ids), per_id)
    emb = centres[labels] + noise / np.sqrt(dim) * rng.standard_normal((len(labels), dim)).astype(np.float32)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), labels


def _reference(emb, labels, distractors, far):
    """Direct formulation: the whole probe x distractor score matrix, explicit loops over trials."""
    scores = emb @ distractors.T
    rank1_hits, trials, positives = 0, 0, []
    for p in range(len(emb)):
        for g in range(len(emb)):
            if p != g and labels[p] == labels[g]:
                trials += 1
                rank1_hits += float(emb[p] @ emb[g]) > scores[p].max()
                if p < g:
                    positives.append(float(emb[p] @ emb[g]))
    negatives = np.sort(scores.ravel())[::-1]
    k = int(np.floor(far * negatives.size + 1e-9))
    threshold = negatives[k]
    return rank1_hits / trials, trials, float(np.mean(np.array(positives) > threshold)), float(threshold)


@pytest.mark.parametrize("chunk_size", [777, 100_000])
def test_chunked_search_matches_reference(chunk_size):
    rng = np.random.default_rng(0)
    emb, labels = _probes(rng)
    distractors = search.random_unit_vectors(5000, 32, seed=1, chunk_size=1234)
    res = search.megaface_search(emb, labels, distractors, fars=1e-3, max_rank=1, chunk_size=chunk_size)
    rank1, trials, tar, threshold = _reference(emb, labels, distractors, 1e-3)
    assert 0.05 < rank1 < 0.95 and 0.05 < tar < 0.95  # a non-trivial case
    assert res.num_rank1_trials == trials == 10 * 4 * 3
    assert res.rank1 == pytest.approx(rank1)
    assert res.threshold_at_far["0.001"] == pytest.approx(threshold, abs=1e-6)
    assert res.tar_at_far["0.001"] == pytest.approx(tar)
    assert np.mean(emb @ distractors.T > res.threshold_at_far["0.001"] + 1e-6) <= 1e-3  # the FAR it achieves
    assert res.num_negative_pairs == 40 * 5000 and res.num_positive_pairs == 10 * 6
    assert res.gflops_per_s > 0


def test_iterable_distractors_and_errors():
    rng = np.random.default_rng(3)
    emb, labels = _probes(rng, dim=16)
    array = search.random_unit_vectors(3000, 16, seed=5, chunk_size=500)
    from_array = search.megaface_search(emb, labels, array, fars=1e-3, chunk_size=500)
    streamed = search.megaface_search(emb, labels, search.random_unit_chunks(3000, 16, seed=5, chunk_size=500),
                                      fars=1e-3, chunk_size=500, num_distractors=3000)
    assert (streamed.rank1, streamed.tar_at_far) == (from_array.rank1, from_array.tar_at_far)
    np.testing.assert_allclose(np.linalg.norm(array, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="pass num_distractors"):
        search.megaface_search(emb, labels, iter([array]))
    with pytest.raises(ValueError, match=r"distractors must be \[N, 16\].*\(3000, 8\)"):
        search.megaface_search(emb, labels, array[:, :8])
    with pytest.raises(ValueError, match="got 3000 distractors but num_distractors=4000"):
        search.megaface_search(emb, labels, iter([array]), chunk_size=5000, num_distractors=4000)


def test_unmeasurable_far_is_none_with_reason():
    rng = np.random.default_rng(4)
    emb, labels = _probes(rng, dim=16)
    res = search.megaface_search(emb, labels, search.random_unit_vectors(100, 16), fars=1e-6)
    assert res.tar_at_far == {"1e-06": None} and res.threshold_at_far == {"1e-06": None}
    assert "needs >= 1000000 negative pairs, have 4000" in res.reason_at_far["1e-06"]
    assert 0.0 <= res.rank1 <= 1.0


def _bench(tmp_path, *args):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "bench_identify.py"), f"--output={out}", *args],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_bench_cli_random_speed_mode_takes_the_model_dim(tmp_path, reference_tflite):
    """random:N with the reference model: 128-d like the model, timing fields only (no face figure)."""
    result, stdout = _bench(tmp_path, "--distractors=random:10000", "--max_probes=60", f"--model={reference_tflite}")
    assert result["num_distractors"] == 10000 and result["dim"] == 128 and result["num_probes"] <= 60
    assert result["distractors_kind"] == "random" and result["rank1"] is None and result["tar_at_far"] == {}
    assert 0 < result["fraction_of_sgemm"] and result["peak_rss_mb"] > 0
    assert "rank-1" not in stdout and "of sgemm" in stdout


def test_bench_cli_memory_stays_near_the_distractor_array(tmp_path):
    """512-d synthetic probes vs 200k random distractors (390 MiB): the search adds little on top of the array."""
    result, _ = _bench(tmp_path, "--distractors=random:200000", "--dim=512", "--max_probes=200")
    assert result["probes"].startswith("synthetic") and result["dim"] == 512
    array_mb = result["distractor_bytes"] / 2**20
    assert result["peak_rss_mb"] - result["peak_rss_mb_before_distractors"] < array_mb + 150, result
