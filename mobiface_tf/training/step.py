"""One SGD step over the replicas: forward, margin-head cross-entropy, coupled L2 weight decay, optional
distillation, loss scaling, and the update.

Knowledge distillation (Hinton et al., 2015, applied to embeddings as in EdgeFace / Keras_insightface):
with --distill_weight=lambda > 0 the loss gains lambda * (1 - cos(student, teacher)) (--distill_loss=cosine) or
lambda * |normalise(student) - teacher|^2 averaged over dimensions (mse). The teacher's embeddings of each crop
and of its mirror are stored in the shards (mobiface-prepare --teacher), so the teacher never runs during
training. When the student's and the teacher's embedding sizes differ, a trained linear projection (not part
of the exported model) maps the student's embedding to the teacher's size. --margin=none trains on
distillation alone, so unlabelled faces work.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from mobiface_tf.training.config import DISTILL_LOSSES
from mobiface_tf.training.schedules import decayed_variables


def skip_together(grads):
    """fp16 loss scaling: if any replica's gradients overflowed, make every replica's gradients NaN.

    Keras' LossScaleOptimizer decides "finite or skip" from gradients it assumes were already all-reduced,
    but Keras 3 all-reduces later, inside the inner optimizer. Without this, an overflow on replica 1 alone
    would be applied (and summed into NaN weights), and workers could take different branches and hang.
    """
    bad = tf.add_n([tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(g)), tf.float32)) for g in grads])
    bad = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, bad)
    poison = tf.where(bad > 0, float("nan"), 0.0)
    return [g + tf.cast(poison, g.dtype) for g in grads]


def distillation_loss(student, teacher, kind: str = "cosine", projection=None):
    """Per-example distillation loss [B] between student embeddings [B, Ds] and unit teacher embeddings [B, Dt].

    cosine: 1 - cos(student, teacher); mse: mean over dimensions of (normalise(student) - teacher)^2.
    `projection` (a Dense Ds -> Dt, or None when Ds == Dt) maps the student first.
    """
    s = tf.cast(student, tf.float32)
    if projection is not None:
        s = projection(s)
    s = tf.math.l2_normalize(s, axis=1, epsilon=1e-12)
    t = tf.math.l2_normalize(tf.cast(teacher, tf.float32), axis=1, epsilon=1e-12)
    if kind == "cosine":
        return 1.0 - tf.reduce_sum(s * t, axis=1)
    if kind == "mse":
        return tf.reduce_mean(tf.square(s - t), axis=1)
    raise ValueError(f"unknown --distill_loss {kind!r}; expected one of {DISTILL_LOSSES}")


def make_train_step(strategy, backbone, head, optimizer, weight_decay: float, global_batch: int,
                    distill_weight: float = 0.0, distill_loss_kind: str = "cosine", projection=None,
                    teacher_fn=None):
    """A tf.function(iterator) -> (mean CE loss, L2 term, correct count, mean distillation loss) summed over
    replicas, one SGD step.

    `head` is the margin head, or None for distillation alone (then the CE and accuracy are 0). With
    distill_weight > 0 the iterator yields (images, labels, teacher embeddings) and the loss gains
    distill_weight * the mean distillation loss. With `teacher_fn` (an online .keras / SavedModel teacher,
    OnlineTeacher.embed_in_graph) the iterator yields (images, labels) and the targets are teacher_fn(images),
    computed in the step on the very images the student takes.

    `iterator` yields this worker's batch (global_batch / workers images); each local replica takes its
    contiguous slice, so one device and N mirrored devices see exactly the same global batch. (A plain
    tf.data iterator, unlike tf.distribute's distributed iterators, can be saved in a checkpoint: exact resume.)

    Per replica the CE sum is divided by the GLOBAL batch, so the SUM-reduce over replicas is the global mean
    and the gradients all-reduced by the optimizer match a one-device step on the whole batch.
    """
    variables = backbone.trainable_variables
    if head is not None:
        variables = variables + head.trainable_variables
    if projection is not None:
        variables = variables + projection.trainable_variables
    decayed = decayed_variables(variables)
    replicas = strategy.num_replicas_in_sync
    local = len(strategy.extended.worker_devices)
    per_replica = global_batch // replicas
    distill = distill_weight > 0

    def step_fn(images, labels, teacher=None):
        if distill and teacher_fn is not None:
            teacher = teacher_fn(images)  # no gradient: a fixed function the student matches
        with tf.GradientTape() as tape:
            emb = backbone(images, training=True)
            zero = tf.constant(0.0, tf.float32)
            loss = zero
            if head is not None:
                logits = head(emb, labels)
                ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
                loss = tf.reduce_sum(ce) / global_batch
            kd = zero
            if distill:
                kd = tf.reduce_sum(distillation_loss(emb, teacher, distill_loss_kind, projection)) / global_batch
            l2 = 0.5 * weight_decay * tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in decayed])
            total = loss + distill_weight * kd + l2 / replicas
            scaled = optimizer.scale_loss(total)  # identity unless LossScaleOptimizer
        # Train accuracy from the margin-free logits (argmax of cos(theta), or W x + b for softmax), read
        # before the update (tf.function keeps program order for reads and writes of the same variable).
        if head is not None:
            pred = tf.argmax(head(tf.stop_gradient(emb)), axis=1, output_type=tf.int32)
            correct = tf.reduce_sum(tf.cast(tf.equal(pred, labels), tf.float32))
        else:
            correct = zero
        grads = tape.gradient(scaled, variables)
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            grads = skip_together(grads)
        optimizer.apply(grads, variables)
        return loss, l2 / replicas, correct, kd

    @tf.function
    def train_step(iterator):
        batch = next(iterator)

        def part(k):
            def fn(ctx):  # replica ids are worker-major, so id % local is the local index
                i = ctx.replica_id_in_sync_group % local
                return batch[k][i * per_replica:(i + 1) * per_replica]
            return strategy.experimental_distribute_values_from_function(fn)

        args = tuple(part(k) for k in range(3 if distill and teacher_fn is None else 2))
        out = strategy.run(step_fn, args=args)
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None) for t in out]

    return train_step
