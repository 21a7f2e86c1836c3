"""The training shards: what the manifest says (classes, teacher embeddings), checked before any work, and this
worker's tf.data pipeline."""
from __future__ import annotations

import dataclasses

from mobiface_tf.training.config import NO_MARGIN
from mobiface_tf.training.strategy import worker_input_context


@dataclasses.dataclass
class Inputs:
    """The shard files of --data, its number of identities, the teacher embedding size (0: not distilling) and
    the online teacher (None: precomputed embeddings from the shards, or no distillation)."""
    files: list
    num_classes: int
    teacher_dim: int
    teacher: object = None  # mobiface_tf.teacher.OnlineTeacher

    def teacher_in_step(self):
        """The function the training step calls on its images for a .keras / SavedModel teacher, else None."""
        t = self.teacher
        return t.embed_in_graph if t is not None and not t.in_pipeline else None


def check_inputs(cfg) -> Inputs:
    """Match --data and read its manifest. ValueError (one line, what to do) when no shard matches, when
    distillation is asked of shards without teacher embeddings, or a margin head of data with < 2 identities."""
    from mobiface_tf.data.pipeline import match_files, read_manifest

    files = match_files(cfg.data)
    manifest = read_manifest(files[0])
    num_classes = int(manifest["num_classes"])
    teacher_dim, online = 0, None
    if cfg.distill_weight > 0 and cfg.teacher:
        from mobiface_tf.teacher import OnlineTeacher

        try:  # loaded now, so a bad teacher fails before any work, in one line
            online = OnlineTeacher(cfg.teacher, cfg.teacher_preprocess, cfg.teacher_threads, batch_size=64)
        except FileNotFoundError:
            raise ValueError(f"--teacher={cfg.teacher}: file not found. Pass a .tflite, .onnx, .keras or SavedModel "
                             "face model") from None
        except ValueError as e:
            raise ValueError(f"--teacher: {e}") from None
        teacher_dim = online.embedding_dim
    elif cfg.distill_weight > 0:
        teacher = manifest.get("teacher")
        if not teacher:
            raise ValueError(f"--distill_weight={cfg.distill_weight} needs teacher embeddings in the shards, and "
                             f"the manifest of {cfg.data!r} has none. Add them with: mobiface-prepare "
                             f"--add_teacher=MODEL --output=DIR")
        teacher_dim = int(teacher["embedding_dim"])
    if cfg.margin != NO_MARGIN and num_classes < 2:
        raise ValueError(f"--margin={cfg.margin} needs labelled data with >= 2 identities; {cfg.data!r} has "
                         f"{num_classes}. For unlabelled faces use --margin=none with --distill_weight")
    return Inputs(files, num_classes, teacher_dim, online)


def worker_dataset(cfg, inputs: Inputs, strategy):
    """This worker's batches (global batch / workers images, disjoint shards per worker), shuffled with --seed;
    (images, labels) or, when distilling, (images, labels, teacher embeddings). With an online teacher the
    embeddings are those of the augmented batch: computed in the pipeline (.tflite / .onnx), or in the step
    (.keras / SavedModel: then the dataset yields (images, labels))."""
    from mobiface_tf.data.pipeline import make_dataset

    ctx = worker_input_context(strategy)
    return make_dataset(inputs.files, cfg.batch_size // ctx.num_input_pipelines, training=True, seed=cfg.seed,
                        deterministic=cfg.deterministic, shuffle_buffer=cfg.shuffle_buffer, input_context=ctx,
                        skip_corrupt=cfg.skip_corrupt, augment=cfg.augment_config(),
                        teacher_dim=inputs.teacher_dim if cfg.distill_weight > 0 and inputs.teacher is None else 0,
                        teacher=inputs.teacher if inputs.teacher is not None and inputs.teacher.in_pipeline else None)
