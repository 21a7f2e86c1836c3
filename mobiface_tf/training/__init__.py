"""The trainer, one idea per module (entry point: `python -m mobiface_tf.train`).

- config:      TrainConfig (every setting, defined once), the absl flags generated from it, its validation
- schedules:   learning-rate schedules and the weight-decay variable selection
- strategy:    tf.distribute strategy, chief and input-pipeline ids
- model:       backbone, margin head, distillation projection and optimizer, built under the strategy
- step:        one SGD step over the replicas (loss, coupled L2, distillation, fp16 skip-together)
- inputs:      the training shards: manifest checks and this worker's dataset
- checkpoints: checkpoint integrity, resume choice, settings a resume may not change, the NaN-guarded save
- embedding:   the final embedding model file (probe-checked, float32, written atomically)
- validation:  held-out verification while training
- progress:    log lines and TensorBoard scalars
- loop:        `train(cfg)` (metrics) and `train_model(cfg)` (metrics and the trained objects)
- cli:         `main`, the command line
"""
