"""MegaFace-style identification with distractors (MegaFace Challenge 1, Kemelmacher-Shlizerman et al., CVPR 2016).

Not to be confused with mobiface_tf/identify.py, the user command that answers "who is this?" against an
enrolled gallery. This package benchmarks a model: probes of known identity searched against up to a million
distractors, as tools/bench_identify.py does.

  search.py    the chunked brute-force search: rank-1, CMC and TAR at several FARs (`megaface_search`)
  features.py  face sources (image folders, TFRecord shards, features files) and the embedding cache
  layout.py    the MegaFace Challenge 1 directory layout (devkit template lists, noise lists)
"""
