"""The tf.distribute strategy, which process is the chief, and which input pipeline each worker reads.

Why a custom loop (mobiface_tf.training.loop) rather than Keras `fit`: Keras 3 `fit` under
MultiWorkerMirroredStrategy failed in a probe, while `strategy.run` inside a tf.function works on one device,
several GPUs (MirroredStrategy) and several workers (TF_CONFIG).
"""
from __future__ import annotations

import json
import os

import tensorflow as tf

from mobiface_tf.training.config import STRATEGIES


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """auto: multi_worker when TF_CONFIG names >1 worker, mirrored with >1 GPU, else one device (GPU:0 or CPU)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown --strategy {name!r}; expected one of {STRATEGIES}")
    if name == "auto":
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
        if sum(len(v) for v in cluster.values()) > 1:
            name = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "one_device"
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                             "(cluster + task); see the README's multi-worker section")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")


def cluster_id(resolver) -> int:
    """This process's index in the cluster (int): 0 for the chief (or worker 0 when the cluster has no "chief"
    job) and for a single process (resolver None), then the workers in order."""
    jobs = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if resolver is None or not resolver.task_type:
        return 0
    if resolver.task_type == "chief":
        return 0
    return int(resolver.task_id) + (1 if "chief" in jobs else 0)


def is_chief(strategy) -> bool:
    """The chief (or worker 0 when there is no chief job; or the only process) writes checkpoints, summaries
    and the final model. With a "chief" job in TF_CONFIG, worker 0 is an ordinary worker."""
    return cluster_id(getattr(strategy, "cluster_resolver", None)) == 0


def worker_input_context(strategy) -> tf.distribute.InputContext:
    """Which input pipeline this worker is: workers read disjoint shards (make_dataset shards by file)."""
    local = len(strategy.extended.worker_devices)
    workers = strategy.num_replicas_in_sync // local
    worker_id = cluster_id(getattr(strategy, "cluster_resolver", None)) if workers > 1 else 0
    return tf.distribute.InputContext(num_input_pipelines=workers, input_pipeline_id=worker_id,
                                      num_replicas_in_sync=strategy.num_replicas_in_sync)

