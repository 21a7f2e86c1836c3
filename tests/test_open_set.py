"""open_set: near-duplicate identities, impostor scores without them, and the --far tail estimate (issue 25).

Synthetic embeddings (identity centres on the sphere + per-photo noise, unit rows) for the statistics; the
tiny real Keras model of conftest on synthetic aligned crops for the identify CLI's warning lines and JSON.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import person, save_tiny_model, write_png

from mobiface_tf import identify as ident
from mobiface_tf.gallery import Gallery
from mobiface_tf import open_set


def synthetic_gallery(num_ids, per_id=2, dim=128, noise=1.0, seed=0, duplicate_of=None, duplicate_noise=0.6):
    """An identify.Gallery of random people (genuine cosines ~0.5, impostor ~0 +- 0.09, as 128-d face
    embeddings). duplicate_of=i adds one more identity, 'dup_of_<i>', with i's centre: one person enrolled under
    two names, from sharper photos (duplicate_noise), drawn from another stream so the other photos are the
    same as without it."""
    r = np.random.default_rng(seed)
    centres = r.normal(size=(num_ids, dim))
    names = [f"id{i:04d}" for i in range(num_ids)]
    emb = np.repeat(centres, per_id, axis=0) + noise * r.normal(size=(num_ids * per_id, dim))
    if duplicate_of is not None:
        extra = centres[duplicate_of] + duplicate_noise * np.random.default_rng(seed + 1).normal(size=(per_id, dim))
        emb = np.concatenate([emb, extra])
        names.append(f"dup_of_{duplicate_of}")
    k = len(names)
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    labels = np.repeat(np.arange(k), per_id)
    means = np.stack([emb[labels == i].mean(0) for i in range(k)])
    templates = (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)
    return Gallery(names, templates, [per_id] * k, 0, 0, 0, [], Path("x"), False, emb, labels)


# ----------------------------------------------------------------------------------------------- the tail
def test_gpd_pwm_recovers_known_parameters():
    """PWM on exact GPD draws (inverse CDF: y = sigma / xi (U^-xi - 1)) gives back the shape and scale."""
    r = np.random.default_rng(0)
    for sigma, xi in ((0.05, -0.2), (0.03, 0.1), (0.04, -0.45)):
        u = r.uniform(size=20000)
        y = sigma / xi * (u ** -xi - 1)
        s_hat, xi_hat = open_set.fit_gpd_pwm(y)
        assert xi_hat == pytest.approx(xi, abs=0.05) and s_hat == pytest.approx(sigma, rel=0.06)


def _impostor_draws(rng, n, k=64):
    """A stranger's best score against k impostor templates: max of k cosines ~ N(0.05, 0.1) (float64)."""
    return (0.05 + 0.1 * rng.standard_normal((n, k))).max(axis=1)


def test_tail_estimate_against_brute_force_far():
    """Thresholds from 2,000 impostor scores at FAR 1e-3 (N * far = 2: too few to count, so the GPD tail is
    used) let through about 1e-3 of a brute-force set of 400,000 impostor scores from the same distribution.
    Each fit alone is uncertain (200 exceedances extrapolated 100-fold); over 12 galleries the geometric mean
    of measured / requested is within a factor 1.5, and no single one is off by more than 5x."""
    far = 1e-3
    big = _impostor_draws(np.random.default_rng(1), 400_000)
    ratios = []
    for seed in range(12):
        ft = open_set.far_threshold(_impostor_draws(np.random.default_rng(100 + seed), 2000), far)
        assert ft.method == "gpd_tail" and ft.num_scores == 2000 and ft.tail.exceedances == 200
        ratios.append(np.mean(big > ft.threshold) / far)
    ratios = np.array(ratios)
    assert 1 / 1.5 < math.exp(np.mean(np.log(ratios))) < 1.5, ratios
    assert ratios.min() > 0.2 and ratios.max() < 5, ratios
    assert ft.far_expected == pytest.approx(far, rel=1e-6)  # the fitted tail's rate at its own threshold


def test_far_threshold_counts_when_scores_suffice():
    """N * far >= 10: the (k+1)-th highest score, k = floor(far N); at most k scores above it, counted on the
    very array it came from (no second computation of the scores)."""
    s = _impostor_draws(np.random.default_rng(3), 5000)
    for far in (0.002, 0.01, 0.1):
        ft = open_set.far_threshold(s, far)
        k = int(math.floor(far * 5000))
        assert ft.method == "empirical" and ft.threshold == np.sort(s)[::-1][k]
        assert ft.false_accepts == int(np.sum(s > ft.threshold)) <= k
        assert ft.far_expected == ft.far_observed == ft.false_accepts / 5000
    few = open_set.far_threshold(s[:50], 1e-3)
    assert few.method == "highest_score" and few.threshold == s[:50].max() and few.far_expected is None
    with pytest.raises(ValueError, match="far must be in"):
        open_set.far_threshold(s, 1.5)


# ----------------------------------------------------------------------------------------------- duplicates
@pytest.mark.parametrize("num_ids, method", [(40, "highest_score"), (300, "gpd_tail")])
def test_duplicated_identity_is_flagged_and_cannot_set_far(num_ids, method):
    """One person under two names: that pair (and only it) is flagged, and --far at 1e-3 stays within 0.02 of
    its value on the gallery without the duplicate. Left in, the pair's genuine scores set the threshold (the
    issue's 0.836): it jumps by more than 0.2."""
    clean = synthetic_gallery(num_ids)
    dup = synthetic_gallery(num_ids, duplicate_of=7)
    near = ident.near_duplicates(dup)
    assert [(a, b) for a, b, _ in near.pairs] == [(7, num_ids)] and near.pairs[0][2] > near.bound
    assert ident.near_duplicates(clean).pairs == [] and near.num_genuine == num_ids + 1
    before = ident.far_threshold(clean, 1e-3)
    fixed = ident.far_threshold(dup, 1e-3, [(7, num_ids)])
    left_in = ident.far_threshold(dup, 1e-3)
    assert before.method == fixed.method == method
    assert abs(fixed.threshold - before.threshold) < 0.02, (fixed, before)
    assert left_in.threshold > before.threshold + 0.2, (left_in, before)


def test_impostor_scores_leave_out_flagged_pairs_only():
    """Photos of a flagged pair are not scored against each other's templates, but still against everyone
    else; the scores match a brute-force loop within float tolerance. The same for an [N, K] exclusion mask."""
    g = synthetic_gallery(12, per_id=3, dim=16)
    got = ident.impostor_scores(g, [(2, 5)])
    brute = [max(float(g.templates[j] @ e) for j in range(12) if j != lab and {lab, j} != {2, 5})
             for e, lab in zip(g.image_embeddings, g.image_labels)]
    np.testing.assert_allclose(got, brute, atol=1e-5)
    # A [N, K] mask leaves out single (photo, identity) cells (e.g. one photo file under two names); a photo
    # with nothing left to score against is dropped.
    mask = np.zeros((36, 12), bool)
    mask[0, [j for j in range(12) if j != 0]] = True
    mask[1, 4] = True
    masked = open_set.impostor_scores(g.image_embeddings, g.image_labels, g.templates, exclude=mask)
    want = [max(float(g.templates[j] @ e) for j in range(12) if j != lab and not mask[i, j])
            for i, (e, lab) in enumerate(zip(g.image_embeddings, g.image_labels)) if i != 0]
    np.testing.assert_allclose(masked, want, atol=1e-5)


def test_no_bound_without_enough_genuine_scores():
    """With fewer than MIN_GENUINE identities of 2+ photos there is no bound to learn: no pairs, and the rule
    says why (it is written into the JSON)."""
    g = synthetic_gallery(3, per_id=2, duplicate_of=1)
    near = ident.near_duplicates(g)
    assert near.bound is None and near.pairs == [] and "only 4 identities have 2+ photos" in near.rule()


# ----------------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def bob_robert(tmp_path_factory):
    """(tiny model, gallery, query): 6 people with 2 noisy photos each, and one person enrolled twice, as 'Bob'
    and as 'Robert' (the same two photos, re-saved 3 levels brighter)."""
    d = tmp_path_factory.mktemp("bob")
    r = np.random.default_rng(0)
    g = d / "gallery"
    for i in range(1, 7):
        for s in range(2):
            noisy = np.clip(person(i, s) + r.normal(0, 40, (112, 112, 3)), 0, 255).astype(np.uint8)
            write_png(g / f"id{i}" / f"{s}.png", noisy)
    for s in range(2):
        write_png(g / "Bob" / f"{s}.png", person(0, s))
        write_png(g / "Robert" / f"{s}.png", np.clip(person(0, s).astype(int) + 3, 0, 255).astype(np.uint8))
    return save_tiny_model(d / "a16.keras", 16, 0), g, write_png(d / "q.png", person(3, 9))


def test_cli_warns_and_writes_near_duplicates_and_far_fields(bob_robert):
    """One warning line names both identities and the score; --json carries the pair, the bound and its rule,
    and the --far fields (expected FAR, method, impostor scores behind it); the threshold is not set by the
    pair (its cross scores are ~0.99; the impostors here stay below 0.9)."""
    import io

    model, gallery, query = bob_robert
    out, err = io.StringIO(), io.StringIO()
    rc = ident.run(str(model), str(gallery), [str(query)], aligned=True, far=1e-3, as_json=True, out=out, err=err)
    assert rc == 0, err.getvalue()
    warns = [line for line in err.getvalue().splitlines() if "look like one person" in line]
    assert len(warns) == 1 and "'Bob' and 'Robert'" in warns[0] and warns[0].startswith("warning: identities")
    doc = json.loads(out.getvalue())
    near = doc["near_duplicates"]
    assert [p["identities"] for p in near["pairs"]] == [["Bob", "Robert"]] and near["num_genuine"] == 8
    score = near["pairs"][0]["score"]
    assert f"score {score:.4f} > bound {near['bound']:.4f}" in warns[0] and score == round(score, 4)
    assert near["rule"].startswith("mean cross-photo cosine >") and score > near["bound"]
    assert doc["far"] == 1e-3 and doc["far_method"] == "highest_score" and doc["far_expected"] is None
    assert doc["impostor_queries"] == 16 and doc["false_accepts"] == 0
    assert "1 near-duplicate pair left out" in doc["threshold_source"]
    assert doc["threshold"] < 0.9 < score


def test_cli_text_names_the_method_and_count(bob_robert, tmp_path):
    """Text mode: the threshold line says which estimate set it and how many impostor scores stand behind it."""
    import io

    model, gallery, query = bob_robert
    out, err = io.StringIO(), io.StringIO()
    assert ident.run(str(model), str(gallery), [str(query)], aligned=True, far=0.5, out=out, err=err) == 0
    line = next(x for x in out.getvalue().splitlines() if x.startswith("threshold "))
    assert "1 near-duplicate pair left out" in line and "empirical:" in line and "of 16 impostor scores" in line
