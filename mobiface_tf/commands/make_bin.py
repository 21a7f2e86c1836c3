"""Write an InsightFace-style verification .bin from the CFP (FF/FP) or LFW View 2 protocol.

    mobiface-make-bin --cfp_dir=../shared/data/cfp --cfp_protocol=FP --output=eval_out/cfp_fp.bin
    mobiface-make-bin --lfw_dir=../shared/data/lfw/lfw-112x112 --pairs=../shared/data/lfw/pairs.txt \
        --output=eval_out/lfw.bin

Photos are aligned by MTCNN to the ArcFace template (cached in --align_cache; --align=none keeps aligned crops as
they are). The .bin is a pickle (protocol 4) of (JPEG bytes, issame bools), pairs in fold order; score it with
`mobiface-evaluate --bin=FILE`, or watch it during training with `--val_bin=FILE`. The .bin is written to a temporary
file beside --output, read back, and only then renamed over it: a failed run or a full disk leaves no half .bin and
the old file (with --overwrite) as it was.
"""
from pathlib import Path

from absl import flags

from mobiface_tf.outputs import check_output_file

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "the .bin to write (refused if it exists, unless --overwrite)")
flags.DEFINE_string("cfp_dir", None, "CFP root (Protocol/ and Data/)")
flags.DEFINE_string("cfp_protocol", "FP", "FF or FP, with --cfp_dir")
flags.DEFINE_string("lfw_dir", None, "LFW images <Name>/<Name>_NNNN.jpg (with --pairs)")
flags.DEFINE_string("pairs", None, "LFW View 2 pairs.txt (with --lfw_dir)")
flags.DEFINE_list("folds", None, "only these 1-based folds (default: all)")
flags.DEFINE_enum("align", "mtcnn", ["mtcnn", "none"], "mtcnn: align each photo to the ArcFace template (cached); "
                  "none: the photos are aligned 112x112 crops already")
flags.DEFINE_string("align_cache", None, "folder of cached aligned crops (default: ~/.cache/mobiface_tf/aligned)")
flags.DEFINE_integer("jpeg_quality", 95, "JPEG quality of the stored crops", lower_bound=1, upper_bound=100)
flags.DEFINE_bool("overwrite", False, "replace an existing --output")
flags.DEFINE_bool("progress", True, "show a progress bar")


def _run():
    from mobiface_tf.make_bin import build_bin, protocol_pairs

    if not FLAGS.output:
        raise ValueError("--output=FILE.bin is required")
    out = Path(FLAGS.output)
    if out.is_dir():
        raise ValueError(f"--output {str(out)!r} is a folder; give the .bin file to write")
    if out.exists() and not FLAGS.overwrite:
        raise ValueError(f"--output {str(out)!r} exists; pass --overwrite to replace it")
    check_output_file(out, "--output", example="lfw.bin")  # a place a file can be created (missing folders are made)
    folds = [int(f) for f in FLAGS.folds] if FLAGS.folds else None
    pairs = protocol_pairs(FLAGS.cfp_dir, FLAGS.cfp_protocol, FLAGS.lfw_dir, FLAGS.pairs, folds)
    crops = None
    if FLAGS.align == "mtcnn":
        from mobiface_tf.crop_cache import CropCache

        crops = CropCache(FLAGS.align_cache)
    s = build_bin(pairs, out, crops, FLAGS.jpeg_quality, FLAGS.progress)
    print(f"wrote {s['output']}: {s['num_pairs']} pairs, {s['num_images']} distinct photos, folds "
          f"{s['folds'][0]}..{s['folds'][-1]} ({'/'.join(map(str, s['pairs_per_fold']))} pairs each), "
          f"{s['bytes'] / 1e6:.1f} MB; " + (f"MTCNN found no face in {s['no_face_images']} photos "
          f"({s['no_face_pairs']} pairs hold the centre-square fallback)" if crops is not None
          else "photos stored as given (--align=none)"))
    return 0


def main(argv):
    """CLI: write the .bin; 0, or 2 after one "error: ..." line on bad input."""
    del argv
    return _run()  # bad input raises ValueError / OSError: mobiface_tf.cli prints one "error:" line, exit 2
