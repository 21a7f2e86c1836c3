"""How far off is one gallery's --far tail estimate? Synthetic check of mobiface_tf.open_set.far_threshold.

    nice -n 5 python tools/research/gpd_tail_check.py [--galleries=40] [--gallery_size=2000] [--k=64]

Impostor scores are a stranger's best cosine against k templates, each ~ N(0.05, 0.1) (float64). A brute-force
set of 1,000,000 such scores measures the true FAR at the threshold each gallery of `gallery_size` scores sets
for FAR 1e-3 and 1e-4 (N * far < 10: the generalized Pareto tail), and at the old rule's threshold (the
(k+1)-th highest score, k = floor(far N), whatever N). Prints, per FAR and rule, the quantiles (0, 10, 50, 90,
100 %) of measured / requested FAR over the galleries, and their geometric mean.
"""
import numpy as np
from absl import app, flags

from mobiface_tf import open_set

flags.DEFINE_integer("galleries", 40, "Galleries (independent draws) per FAR.")
flags.DEFINE_integer("gallery_size", 2000, "Impostor scores per gallery.")
flags.DEFINE_integer("k", 64, "Impostor templates per stranger.")
FLAGS = flags.FLAGS


def draws(rng, n, k):
    """n scores: max over k of N(0.05, 0.1)."""
    return np.concatenate([(0.05 + 0.1 * rng.standard_normal((min(100_000, n - i), k))).max(1)
                           for i in range(0, n, 100_000)])


def main(argv):
    del argv
    big = draws(np.random.default_rng(0), 1_000_000, FLAGS.k)
    for far in (1e-3, 1e-4):
        ratios, old, methods = [], [], set()
        for seed in range(FLAGS.galleries):
            s = draws(np.random.default_rng(100 + seed), FLAGS.gallery_size, FLAGS.k)
            ft = open_set.far_threshold(s, far)
            methods.add(ft.method)
            ratios.append(np.mean(big > ft.threshold) / far)
            old.append(np.mean(big > np.sort(s)[::-1][min(int(far * len(s)), len(s) - 1)]) / far)
        for name, r in ((f"new {sorted(methods)}", ratios), ("old (k+1)-th highest", old)):
            q = np.quantile(r, [0, 0.1, 0.5, 0.9, 1])
            print(f"far {far:g} {name}: measured/requested quantiles 0/10/50/90/100%: "
                  + " ".join(f"{v:.2f}" for v in q) + f"; geometric mean {np.exp(np.mean(np.log(r))):.2f}")


if __name__ == "__main__":
    app.run(main)
