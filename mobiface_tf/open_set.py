"""Open-set identification on a real gallery: near-duplicate identities and a --far threshold one pair cannot set.

identify's `--far` sets the threshold from the gallery's own impostor scores: each enrolled photo (probe) is
scored against the templates of every *other* identity, and a stranger is falsely accepted at threshold t when
its best score is > t. Two things break that on a real gallery (issue 25):

1. **One person under two names** ("Bob" and "Robert", or label noise in a celebrity dataset). Their photos
   score against each other's templates like genuine pairs, and the highest "impostor" score is then a
   genuine one. `find_near_duplicates` flags identity pairs that look like one person, with a bound learned
   from the gallery's own genuine scores, and `impostor_scores` leaves flagged pairs out. Nothing is merged.

   Statistic (like compared with like): an identity pair's score is the mean cosine over all photo pairs across
   the two identities, mean_{p in a, q in b} cos(p, q); an identity's genuine score is the mean cosine over its
   own photo pairs (identities with >= 2 photos). The bound is the `quantile` (default 0.5: the median) of the
   genuine scores, so a flagged pair scores above the genuine score of at least half of the enrolled people.

2. **Too few impostor scores to resolve the rate.** With N scores, a FAR below ~10/N rests on fewer than 10
   false accepts; below 1/N the empirical threshold is simply the single highest score. `far_threshold` uses
   the empirical (k+1)-th highest score when N * far >= 10, and otherwise a peaks-over-threshold estimate: a
   generalized Pareto distribution (GPD) fitted to the excesses of the top 10% of the scores (at least 50),
   by the probability-weighted-moments estimator of Hosking & Wallis (1987, "Parameter and quantile
   estimation for the generalized Pareto distribution", Technometrics 29(3)), and the threshold is the fitted
   tail's (1 - far) quantile (Pickands 1975; Coles 2001, "An Introduction to Statistical Modeling of Extreme
   Values", ch. 4). With fewer than 100 scores there is no tail to fit: the (k+1)-th highest score when
   k = floor(far N) >= 1, else the highest score, with the rate reported as not resolved.

   The tail estimate is an estimate: on a synthetic 2,000-score gallery at FAR 1e-3 the true rate of one
   gallery's threshold is 0.6x-2.5x the asked one (10-90 %; tools/research/gpd_tail_check.py,
   docs/identification_open_set.md).

Scores are cosine similarities of unit-norm embeddings (float32 [N, D] rows).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

DUPLICATE_QUANTILE = 0.5   # a flagged pair scores above the genuine score of at least half of the people
MIN_GENUINE = 5            # identities with >= 2 photos needed to learn the bound
EMPIRICAL_MIN_ACCEPTS = 10  # N * far >= this: the empirical threshold rests on >= 10 false accepts
TAIL_FRACTION = 0.1        # the GPD is fitted to the top 10% of the impostor scores ...
TAIL_MIN_EXCEEDANCES = 50  # ... and at least this many of them
TAIL_MIN_SCORES = 100      # below this, no tail fit: counted when N * far >= 1, else the highest score


# ----------------------------------------------------------------------------------------------- duplicates
@dataclasses.dataclass
class NearDuplicates:
    """Identity pairs that look like one person.

    pairs: [(a, b, score)] identity indices a < b and their mean cross-photo cosine, highest first;
    bound: the score a pair must exceed (None when it cannot be learned, see `reason`);
    num_genuine: identities with >= 2 photos whose genuine scores gave the bound; quantile: its level.
    """

    pairs: list[tuple[int, int, float]]
    bound: float | None
    num_genuine: int
    quantile: float
    reason: str | None = None

    def rule(self) -> str:
        """The bound in words, for the warning and the JSON."""
        if self.bound is None:
            return f"no near-duplicate check: {self.reason}"
        return (f"mean cross-photo cosine > {self.bound:.4f}, the {self.quantile:.0%} quantile of the genuine "
                f"scores of the {self.num_genuine} identities with 2+ photos")

    def to_json(self, names: list[str]) -> dict:
        """{"bound", "rule", "pairs": [{"identities": [a, b], "score"}]} with scores at 4 decimals."""
        return {"bound": None if self.bound is None else round(self.bound, 4), "rule": self.rule(),
                "num_genuine": self.num_genuine,
                "pairs": [{"identities": [names[a], names[b]], "score": round(s, 4)} for a, b, s in self.pairs]}


def identity_sums(embeddings: np.ndarray, labels: np.ndarray, num_ids: int) -> tuple[np.ndarray, np.ndarray]:
    """(sums [K, D] float64 of each identity's unit embeddings, counts [K])."""
    emb = np.asarray(embeddings, np.float64)
    sums = np.zeros((num_ids, emb.shape[1]))
    np.add.at(sums, np.asarray(labels), emb)
    return sums, np.bincount(labels, minlength=num_ids)


def genuine_scores(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[M] mean cosine over the photo pairs of each identity with >= 2 unit-norm photos (M such identities).

    sum_{p != q} cos(p, q) = |sum p|^2 - n for unit p, over n (n - 1) ordered pairs.
    """
    many = counts >= 2
    n = counts[many].astype(np.float64)
    return (np.einsum("ij,ij->i", sums[many], sums[many]) - n) / (n * (n - 1))


def find_near_duplicates(embeddings, labels, num_ids: int, quantile: float = DUPLICATE_QUANTILE,
                         min_genuine: int = MIN_GENUINE, chunk: int = 2048) -> NearDuplicates:
    """Identity pairs whose mean cross-photo cosine exceeds the `quantile` of the gallery's genuine scores.

    embeddings: [N, D] unit rows; labels: [N] identity index in [0, num_ids). The pair score of a and b is
    sum_a . sum_b / (n_a n_b) (the mean of the n_a n_b cross cosines), computed in blocks of `chunk` identities,
    so memory is [chunk, K]. With fewer than `min_genuine` identities of >= 2 photos there is no bound: the
    result has no pairs and says why. Raises ValueError on mismatched shapes or a quantile outside (0, 1).
    """
    emb = np.asarray(embeddings)
    labels = np.asarray(labels)
    if emb.ndim != 2 or labels.shape != (len(emb),):
        raise ValueError(f"embeddings must be [N, D] with labels [N]; got {emb.shape} and {labels.shape}")
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    sums, counts = identity_sums(emb, labels, num_ids)
    genuine = genuine_scores(sums, counts)
    if len(genuine) < min_genuine:
        return NearDuplicates([], None, len(genuine), quantile,
                              f"only {len(genuine)} identities have 2+ photos (need {min_genuine}) to learn the "
                              "genuine-score bound")
    bound = float(np.quantile(genuine, quantile))
    means = sums / np.maximum(counts, 1)[:, None]
    pairs = []
    for start in range(0, num_ids, chunk):
        block = means[start:start + chunk] @ means.T  # [c, K]
        rows, cols = np.nonzero(block > bound)
        keep = (rows + start < cols) & (counts[rows + start] > 0) & (counts[cols] > 0)
        pairs += zip((rows[keep] + start).tolist(), cols[keep].tolist(), block[rows[keep], cols[keep]].tolist())
    pairs.sort(key=lambda p: (-p[2], p[0], p[1]))
    return NearDuplicates(pairs, bound, len(genuine), quantile)


# ----------------------------------------------------------------------------------------------- impostors
def impostor_scores(embeddings, labels, templates, exclude_pairs=(), exclude=None) -> np.ndarray:
    """[N'] each photo's best score against the templates of the other identities, flagged pairs left out.

    embeddings [N, D], labels [N], templates [K, D]: unit rows. A photo is never scored against its own
    identity (its template contains it), nor against an identity in `exclude_pairs` ((a, b) index pairs,
    either order) with its own, nor where the optional [N, K] bool mask `exclude` is True. Photos left with
    no identity to score against are dropped, so N' <= N.
    """
    emb = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels)
    scores = emb @ np.asarray(templates, np.float32).T  # [N, K]
    mask = np.zeros(scores.shape, bool) if exclude is None else np.array(exclude, bool)
    mask[np.arange(len(scores)), labels] = True
    for a, b in exclude_pairs:
        mask[labels == a, b] = True
        mask[labels == b, a] = True
    scores[mask] = -np.inf
    best = scores.max(axis=1)
    return best[np.isfinite(best)]


# ----------------------------------------------------------------------------------------------- the tail
@dataclasses.dataclass
class TailFit:
    """A generalized Pareto tail over `u`: P(S > u + y) = zeta (1 + xi y / sigma)^(-1/xi), zeta = n_u / n."""

    u: float            # the tail starts here: the (n_u + 1)-th highest score
    sigma: float        # GPD scale (> 0)
    xi: float           # GPD shape; < 0 is a bounded tail (cosines are <= 1)
    exceedances: int    # n_u: scores above u that the fit saw
    num_scores: int     # n: all impostor scores

    def far_at(self, t: float) -> float:
        """The fitted P(S > t) for t >= u (the tail's survival function, times zeta)."""
        y = max(t - self.u, 0.0)
        zeta = self.exceedances / self.num_scores
        if abs(self.xi) < 1e-9:
            return zeta * math.exp(-y / self.sigma)
        base = 1 + self.xi * y / self.sigma
        return 0.0 if base <= 0 else zeta * base ** (-1 / self.xi)

    def threshold_at(self, far: float) -> float:
        """The t with far_at(t) == far (far below zeta): u + sigma / xi ((far / zeta)^-xi - 1)."""
        r = far / (self.exceedances / self.num_scores)
        if abs(self.xi) < 1e-9:
            return self.u - self.sigma * math.log(r)
        return self.u + self.sigma / self.xi * (r ** -self.xi - 1)


def fit_gpd_pwm(excesses) -> tuple[float, float]:
    """(sigma, xi) of a generalized Pareto distribution fitted to excesses y > 0 by probability-weighted moments.

    Hosking & Wallis (1987), eqs. for the PWM estimator with a_s = E[Y (1 - F(Y))^s]:
        sigma = 2 a0 a1 / (a0 - 2 a1),  k = a0 / (a0 - 2 a1) - 2,  xi = -k,
    with a0 the mean and a1 estimated without bias from the order statistics y_(1) <= ... <= y_(n) as
    (1/n) sum_j (n - j) / (n - 1) y_(j). Valid for xi < 1/2 (a finite variance); impostor cosine tails are
    bounded (xi < 0). Raises ValueError with fewer than 3 excesses or when they are all equal.
    """
    y = np.sort(np.asarray(excesses, np.float64))
    n = len(y)
    if n < 3:
        raise ValueError(f"a GPD fit needs at least 3 excesses, got {n}")
    a0 = y.mean()
    a1 = float(np.sum((n - np.arange(1, n + 1)) / (n - 1) * y)) / n
    if a0 <= 0 or a0 - 2 * a1 <= 0:
        raise ValueError("the excesses have no spread to fit a GPD to")
    sigma = 2 * a0 * a1 / (a0 - 2 * a1)
    xi = -(a0 / (a0 - 2 * a1) - 2)
    return float(sigma), float(xi)


def fit_tail(scores, fraction: float = TAIL_FRACTION, min_exceedances: int = TAIL_MIN_EXCEEDANCES) -> TailFit:
    """Peaks over threshold: the GPD of the top max(min_exceedances, fraction * n) scores over the next one."""
    s = np.sort(np.asarray(scores, np.float64))[::-1]
    n_u = min(max(min_exceedances, int(fraction * len(s))), len(s) - 1)
    u = float(s[n_u])
    sigma, xi = fit_gpd_pwm(s[:n_u] - u)
    return TailFit(u, sigma, xi, n_u, len(s))


# ----------------------------------------------------------------------------------------------- --far
@dataclasses.dataclass
class FarThreshold:
    """A per-query threshold at a false-accept rate, and what stands behind it.

    method: "empirical" (the (k+1)-th highest of N scores, k = floor(far N): N * far >= 10, or N < 100 and
    N * far >= 1), "gpd_tail" (the fitted tail's quantile, `tail`), or "highest_score" (N < 100 and
    N * far < 1: the rate cannot be resolved, far_expected None).
    far_expected: the FAR this threshold is expected to give strangers (empirical: the observed rate; gpd_tail:
    the fitted rate, i.e. `far`). false_accepts / far_observed: impostor scores of the gallery above it.
    """

    threshold: float
    far: float
    far_expected: float | None
    method: str
    num_scores: int
    false_accepts: int
    tail: TailFit | None = None

    @property
    def far_observed(self) -> float:
        """false_accepts / num_scores."""
        return self.false_accepts / self.num_scores

    def describe(self) -> str:
        """One phrase: how the threshold was set and how many scores stand behind it (4 significant figures)."""
        n = self.num_scores
        need = math.ceil(EMPIRICAL_MIN_ACCEPTS / self.far)  # scores for 10 false accepts at this rate
        if self.method == "empirical":
            few = (f"; only {math.floor(self.far * n + 1e-9)} false accepts allowed (10 would need {need} scores)"
                   if n * self.far < EMPIRICAL_MIN_ACCEPTS else "")
            return (f"empirical: {self.false_accepts} of {n} impostor scores above it, expected FAR "
                    f"{self.far_expected:.2g}{few}")
        if self.method == "gpd_tail":
            return (f"{n} impostor scores cannot resolve {self.far:g} (need {need}"
                    f"), so a generalized Pareto tail fitted to the top {self.tail.exceedances} of them "
                    f"(shape {self.tail.xi:.3f}, scale {self.tail.sigma:.4f}) gives expected FAR "
                    f"{self.far_expected:.2g}; {self.false_accepts} of {n} above it")
        return (f"{n} impostor scores are too few for a tail fit (need {TAIL_MIN_SCORES}) or to count "
                f"{self.far:g} (need {math.ceil(1 / self.far)}): the highest of them, FAR not resolved")

    def to_json(self) -> dict:
        """The --json fields (floats at 4 significant decimals)."""
        d = {"far": self.far, "far_expected": None if self.far_expected is None else float(f"{self.far_expected:.4g}"),
             "far_method": self.method, "impostor_queries": self.num_scores, "false_accepts": self.false_accepts,
             "far_achieved": round(self.far_observed, 6)}
        if self.tail is not None:
            d["tail_fit"] = {"model": "generalized Pareto, PWM (Hosking & Wallis 1987)", "u": round(self.tail.u, 4),
                             "scale": round(self.tail.sigma, 4), "shape": round(self.tail.xi, 4),
                             "exceedances": self.tail.exceedances}
        return d


def far_threshold(scores, far: float) -> FarThreshold:
    """The threshold at a per-query false-accept rate `far` in (0, 1) from N impostor scores ([N] floats).

    N * far >= 10: the (k+1)-th highest score, k = floor(far N), so at most k scores lie above it. Else, with
    N >= 100: the fitted generalized Pareto tail's (1 - far) quantile (`fit_tail`, capped at 1). Else (fewer
    than 100 scores) the (k+1)-th highest score still when k >= 1, and the highest score when N * far < 1
    (the rate is not resolved). Raises ValueError on an empty set or a far outside (0, 1).
    """
    if not 0 < far < 1:
        raise ValueError(f"far must be in (0, 1), got {far}")
    s = np.sort(np.asarray(scores, np.float64))[::-1]
    n = len(s)
    if n == 0:
        raise ValueError("no impostor scores")
    tail = None
    if n * far < EMPIRICAL_MIN_ACCEPTS - 1e-9 and n >= TAIL_MIN_SCORES:
        try:
            tail = fit_tail(s)
        except ValueError:  # no spread in the top scores: fall back to counting
            tail = None
    if tail is not None:
        t = min(tail.threshold_at(far), 1.0)
        return FarThreshold(t, far, tail.far_at(t), "gpd_tail", n, int(np.sum(s > t)), tail)
    if n * far >= 1 - 1e-9:
        k = min(int(np.floor(far * n + 1e-9)), n - 1)
        t = float(s[k])
        accepts = int(np.sum(s > t))
        return FarThreshold(t, far, accepts / n, "empirical", n, accepts)
    t = float(s[0])
    return FarThreshold(t, far, None, "highest_score", n, 0)
