"""Every training setting, defined once: `TrainConfig`, the absl flags generated from its fields, and their
validation (`TrainConfig.validate`, run before any work). Paths in a flagfile are checked from where you run.
"""
from __future__ import annotations

import dataclasses
import math
import os

from mobiface_tf import models
from mobiface_tf.data.augment import AugmentConfig
from mobiface_tf.heads import MARGINS, margin_params
from mobiface_tf.models.zoo import CONFIGS as NETWORKS, resolve as resolve_network

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
PRECISIONS = ("none", "mixed_float16", "mixed_bfloat16")
SCHEDULES = ("piecewise", "cosine")
DISTILL_LOSSES = ("cosine", "mse")
NO_MARGIN = "none"
EMBEDDING_FILE = "embedding.keras"
CONFIG_FILE = "config.json"  # the settings the checkpoints were made with (compared on resume)
FLAGS_FILE = "flags.txt"  # the command line of the first run, then one line per resume that changed settings
VAL_HISTORY = "val_history.jsonl"  # one line per held-out evaluation: step, seconds, accuracy (learning curve)
CHECKPOINTS = "checkpoints"
AUG = AugmentConfig()  # the augmentation defaults
# Settings that change the input pipeline's structure: a resume that changes one starts a fresh data iterator.
PIPELINE_SETTINGS = ("batch_size", "seed", "shuffle_buffer", "augment", "aug_scale", "aug_shift", "aug_downup",
                     "aug_downup_min", "aug_blur", "aug_blur_sigma", "aug_brightness", "aug_contrast",
                     "aug_saturation", "aug_grey", "aug_cutout", "aug_cutout_size", "mixup", "mixup_alpha", "cutmix")


def _field(default, help: str, flag: str | None = None, **meta):
    return dataclasses.field(default=default, metadata=dict(help=help, flag=flag, **meta))


@dataclasses.dataclass
class TrainConfig:
    """Every training setting, defined once: the absl flags are generated from these fields (`define_flags`),
    `mobiface_tf.training.loop.train(cfg)` takes it, and `validate` checks it before any work.

    Settings marked `fixed` define the network or its objective: a resume that changes them stops with one
    line. The others (batch size, schedule, logging, ...) may change between runs of one model_dir.
    """
    data: str = _field(None, "TFRecord shards: glob or directory (manifest.json next to them gives num_classes)",
                       "string")
    model_dir: str = _field(None, "checkpoints, TensorBoard events, flags.txt and embedding.keras go here", "string")
    val_lfw_dir: str = _field(None, "held-out verification images <Name>/<Name>_NNNN.jpg (with --val_pairs)",
                              "string")
    val_pairs: str = _field(None, "LFW View 2 style pairs.txt for --val_lfw_dir", "string")
    val_folds: list = _field(None, "score --val_pairs only on these 1-based folds (the held-out LFW protocol, "
                             "e.g. 1,2,3)", "list")
    val_flip: bool = _field(False, "flip test in held-out verification (embed image + mirror)", "bool")
    val_bin: str = _field(None, "InsightFace verification .bin", "string")
    val_every: int = _field(0, "held-out verification (--val_lfw_dir/--val_pairs and/or --val_bin) every N steps and after the last "
                            "step; 0: never (then the validation flags are unused)", "integer",
                            lower_bound=0)
    backbone: str = _field("mobiface", "network: a builder name, or a zoo name (mobiface_gdc, mobilefacenet, ... in "
                           "mobiface_tf/models/zoo.py) that also sets --head and, unless given, --embedding_dim",
                           "enum", choices=sorted([*models.BUILDERS, *NETWORKS]), fixed=True)
    head: str = _field(None, "embedding head (fc = literal Table I); default: the zoo name's head, else gdc", "enum",
                       choices=["fc", "gdc", "gap"], fixed=True)
    embedding_dim: int = _field(None, "embedding size; default: the zoo name's, else 512", "integer", lower_bound=1,
                                fixed=True)
    margin: str = _field("arcface", "margin head (presets in mobiface_tf/heads.py); none: distillation alone",
                         "enum", choices=sorted([*MARGINS, NO_MARGIN]), fixed=True)
    margin_s: float = _field(None, "override the preset scale s", "float", fixed=True)
    margin_m1: float = _field(None, "override the preset multiplicative angular margin m1", "float", fixed=True)
    margin_m2: float = _field(None, "override the preset additive angular margin m2", "float", fixed=True)
    margin_m3: float = _field(None, "override the preset additive cosine margin m3", "float", fixed=True)
    distill_weight: float = _field(0.0, "knowledge distillation weight lambda (0: off); needs an online --teacher "
                                   "or shards with teacher embeddings (mobiface-prepare --teacher)", "float",
                                   fixed=True)
    distill_loss: str = _field("cosine", "cosine: 1 - cos(student, teacher); mse: squared error of the normalised "
                               "embeddings", "enum", choices=list(DISTILL_LOSSES), fixed=True)
    teacher: str = _field(None, "online teacher (function-matching distillation, with --distill_weight > 0): it "
                          "embeds each augmented batch the student sees. .tflite / .onnx run batched in the input "
                          "pipeline, .keras / SavedModel inside the step. Unset: the teacher embeddings stored in "
                          "the shards (precomputed; crop and mirror only)", "string", fixed=True)
    teacher_preprocess: str = _field(None, "the online teacher's pixel convention (mobiface_tf.embedder.PREPROCESS); "
                                     "default: what the model states, else raw", "string", fixed=True)
    teacher_threads: int = _field(1, "LiteRT / onnxruntime threads of an online .tflite / .onnx teacher", "integer",
                                  lower_bound=1)
    augment: bool = _field(False, "face-preserving augmentations (mobiface_tf/data/augment.py) at the --aug_* "
                           "strengths; off: a random flip only. With distillation it needs --teacher", "bool")
    aug_scale: float = _field(AUG.scale, "zoom factor from U(1 - s, 1 + s) (with --augment)", "float")
    aug_shift: float = _field(AUG.shift, "shift from U(-s, s) x side, per axis (with --augment)", "float")
    aug_downup: float = _field(AUG.downup, "probability of down-up scaling (with --augment)", "float")
    aug_downup_min: int = _field(AUG.downup_min, "smallest side (px) of down-up scaling", "integer")
    aug_blur: float = _field(AUG.blur, "probability of a Gaussian blur (with --augment)", "float")
    aug_blur_sigma: float = _field(AUG.blur_sigma, "largest blur sigma (px)", "float")
    aug_brightness: float = _field(AUG.brightness, "brightness factor from U(1 - b, 1 + b) (with --augment)", "float")
    aug_contrast: float = _field(AUG.contrast, "contrast factor from U(1 - c, 1 + c) (with --augment)", "float")
    aug_saturation: float = _field(AUG.saturation, "saturation factor from U(1 - s, 1 + s) (with --augment)", "float")
    aug_grey: float = _field(AUG.grey, "probability of greyscale (with --augment)", "float")
    aug_cutout: float = _field(AUG.cutout, "probability of one cutout rectangle (with --augment)", "float")
    aug_cutout_size: float = _field(AUG.cutout_size, "largest cutout side as a fraction of the face", "float")
    mixup: float = _field(AUG.mixup, "per-image probability of mixup with another face of the batch (needs "
                          "--teacher and --margin=none: the target is the teacher's embedding of the mixed face)",
                          "float")
    mixup_alpha: float = _field(AUG.mixup_alpha, "mixup weight lambda ~ Beta(alpha, alpha), folded to >= 1/2",
                                "float")
    cutmix: float = _field(AUG.cutmix, "per-image probability of CutMix with another face of the batch (as "
                           "--mixup; mixup + cutmix <= 1)", "float")
    batch_size: int = _field(1024, "GLOBAL batch size (split over replicas)", "integer", lower_bound=1)
    lr: float = _field(0.1, "base learning rate", "float")
    lr_schedule: str = _field("piecewise", "piecewise: x lr_decay at lr_boundaries (the paper); cosine: to 0 at "
                              "--steps", "enum", choices=list(SCHEDULES))
    lr_boundaries: list = _field((40000, 60000, 80000), "steps where lr is multiplied by --lr_decay (piecewise)",
                                 "list")
    lr_decay: float = _field(0.1, "lr factor at each boundary (piecewise)", "float")
    warmup_steps: int = _field(0, "linear lr warmup steps", "integer", lower_bound=0)
    steps: int = _field(100000, "total training steps", "integer", lower_bound=1)
    momentum: float = _field(0.9, "SGD momentum", "float")
    nesterov: bool = _field(False, "Nesterov momentum", "bool")
    weight_decay: float = _field(5e-4, "coupled L2 weight decay (gradient += wd * w)", "float")
    mixed_precision: str = _field("none", "compute precision (head and loss stay float32)", "enum",
                                  choices=list(PRECISIONS))
    fused_bn: bool = _field(False, "train the BatchNormalization layers through TF's fused kernel "
                            "(mobiface_tf/training/fused_bn.py): the same maths in fewer ops; the saved network "
                            "is unchanged", "bool")
    strategy: str = _field("auto", "tf.distribute strategy (multi_worker reads TF_CONFIG)", "enum",
                           choices=list(STRATEGIES))
    sync_bn: bool = _field(False, "synchronise BN statistics across replicas", "bool")
    log_every: int = _field(20, "log line + TensorBoard scalars every N steps", "integer", lower_bound=1)
    ckpt_every: int = _field(1000, "checkpoint every N steps", "integer", lower_bound=1)
    max_to_keep: int = _field(3, "checkpoints kept", "integer", lower_bound=1)
    seed: int = _field(0, "random seed (model init, shuffling, flips)", "integer")
    deterministic: bool = _field(False, "op determinism + deterministic tf.data (slower; for exact resume)", "bool")
    shuffle_buffer: int = _field(10000, "tf.data shuffle buffer (examples)", "integer", lower_bound=1)
    skip_corrupt: bool = _field(False, "keep the readable records of a truncated/corrupt TFRecord shard (with a "
                                "warning naming it) instead of stopping with an error that names it", "bool")
    resume_from: str = _field(None, "checkpoint to resume from (e.g. MODEL_DIR/checkpoints/ckpt-6) instead of the "
                              "newest one; it must be intact and finite", "string")
    init_from: str = _field(None, "start the embedding network from the weights of this embedding .keras (saved by "
                            "train or tools/import_model.py; same --backbone/--head/--embedding_dim), with a fresh "
                            "margin head. A resume ignores it: the checkpoint wins", "string")
    freeze_body_steps: int = _field(0, "freeze the body (every layer but the embedding head: GDC / linear / dense "
                                    "and its BN), weights and BN statistics, for the first N steps", "integer",
                                    lower_bound=0)

    def validate(self) -> None:
        """Raises ValueError (naming the flag and what to do) for any bad setting; normalises list fields."""
        if not self.data or not self.model_dir:
            raise ValueError(f"--data ({self.data!r}) and --model_dir ({self.model_dir!r}) are both required")
        try:  # the one network resolver (models.zoo.resolve) fills what the name fixes
            _, net = resolve_network(self.backbone, self.head, self.embedding_dim)
        except ValueError as e:
            raise ValueError(f"--backbone/--head: {e}") from None
        self.head = net.get("head", "gdc")
        self.embedding_dim = net.get("embedding_dim", 512)
        if self.margin != NO_MARGIN:
            if self.margin not in MARGINS:
                raise ValueError(f"unknown --margin {self.margin!r}; expected one of {sorted([*MARGINS, NO_MARGIN])}")
            margin_params(self.margin, self.margin_s, self.margin_m1, self.margin_m2, self.margin_m3)
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"unknown --mixed_precision {self.mixed_precision!r}; expected one of {PRECISIONS}")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"unknown --lr_schedule {self.lr_schedule!r}; expected one of {SCHEDULES}")
        if self.distill_loss not in DISTILL_LOSSES:
            raise ValueError(f"unknown --distill_loss {self.distill_loss!r}; expected one of {DISTILL_LOSSES}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr} (the paper uses 0.1 at batch 1024)")
        for name in ("batch_size", "steps", "log_every", "ckpt_every", "embedding_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"need --weight_decay >= 0 and 0 <= --momentum < 1, got {self.weight_decay}, "
                             f"{self.momentum}")
        if self.distill_weight < 0 or not math.isfinite(self.distill_weight):
            raise ValueError(f"--distill_weight must be a finite number >= 0, got {self.distill_weight}")
        if self.margin == NO_MARGIN and self.distill_weight <= 0:
            raise ValueError("--margin=none trains on distillation alone: give --distill_weight > 0 (e.g. 1) and "
                             "shards with teacher embeddings (mobiface-prepare --teacher=MODEL)")
        self._validate_distillation()
        if bool(self.val_lfw_dir) != bool(self.val_pairs):
            raise ValueError(f"--val_lfw_dir ({self.val_lfw_dir!r}) and --val_pairs ({self.val_pairs!r}) go together")
        try:
            self.lr_boundaries = [int(b) for b in self.lr_boundaries]
            self.val_folds = [int(f) for f in self.val_folds] if self.val_folds else None
        except (TypeError, ValueError):
            raise ValueError(f"--lr_boundaries and --val_folds must be integers, got {self.lr_boundaries}, "
                             f"{self.val_folds}") from None
        if self.val_folds and not self.val_pairs:
            raise ValueError("--val_folds needs --val_pairs and --val_lfw_dir")
        if self.freeze_body_steps < 0:
            raise ValueError(f"--freeze_body_steps must be >= 0, got {self.freeze_body_steps}")
        if self.init_from and not os.path.isfile(self.init_from):
            raise ValueError(f"--init_from={self.init_from!r}: no such file; give an embedding .keras (saved by "
                             "train as MODEL_DIR/embedding.keras, or by tools/import_model.py)")

    def augment_config(self) -> AugmentConfig | None:
        """The AugmentConfig of --augment / --aug_* / --mixup / --cutmix, or None for today's random flip only.
        Without --augment, mixup and CutMix apply alone (with the flip). ValueError for a strength out of range."""
        if not (self.augment or self.mixup > 0 or self.cutmix > 0):
            return None
        on = self.augment
        try:
            return AugmentConfig(
                flip=True, scale=self.aug_scale * on, shift=self.aug_shift * on, downup=self.aug_downup * on,
                downup_min=self.aug_downup_min, blur=self.aug_blur * on, blur_sigma=self.aug_blur_sigma,
                brightness=self.aug_brightness * on, contrast=self.aug_contrast * on,
                saturation=self.aug_saturation * on, grey=self.aug_grey * on, cutout=self.aug_cutout * on,
                cutout_size=self.aug_cutout_size, mixup=self.mixup, mixup_alpha=self.mixup_alpha, cutmix=self.cutmix)
        except ValueError as e:
            raise ValueError(f"--aug_* / --mixup / --cutmix: {e}") from None

    def _validate_distillation(self) -> None:
        if self.teacher and self.distill_weight <= 0:
            raise ValueError(f"--teacher={self.teacher} is used for distillation: give --distill_weight > 0 (e.g. 1)")
        aug = self.augment_config()
        if aug is not None and self.distill_weight > 0 and not self.teacher:
            raise ValueError("--augment / --mixup / --cutmix change the pixels, but the teacher embeddings stored in "
                             "the shards are of the crop and its mirror only: give an online --teacher=MODEL")
        if aug is not None and aug.mixes and self.margin != NO_MARGIN:
            raise ValueError(f"--mixup / --cutmix mix two people's faces, which --margin={self.margin} cannot label: "
                             "use --margin=none (distillation alone) with --teacher")
        if self.teacher_preprocess:
            from mobiface_tf.embedder import PREPROCESS

            if self.teacher_preprocess not in PREPROCESS:
                raise ValueError(f"unknown --teacher_preprocess {self.teacher_preprocess!r}; choose one of "
                                 f"{sorted(PREPROCESS)}")

    def fixed(self) -> dict:
        """The settings a resume may not change (they define the network or its objective)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("fixed")}


def define_flags() -> None:
    """One absl flag per TrainConfig field, plus the process-level thread flags."""
    from absl import flags

    for f in dataclasses.fields(TrainConfig):
        kind, meta = f.metadata["flag"], f.metadata
        default = f.default
        kw = {}
        if "lower_bound" in meta:
            kw["lower_bound"] = meta["lower_bound"]
        if kind == "enum":
            flags.DEFINE_enum(f.name, default, meta["choices"], meta["help"])
        elif kind == "list":
            flags.DEFINE_list(f.name, [str(v) for v in default] if default else None, meta["help"])
        else:
            getattr(flags, f"DEFINE_{kind}")(f.name, default, meta["help"], **kw)
    flags.DEFINE_integer("threads", 0, "TF intra-op threads (0: TF's default)", lower_bound=0)
    flags.DEFINE_integer("inter_op_threads", 0, "TF inter-op threads (0: TF's default)", lower_bound=0)
    flags.mark_flags_as_required(["data", "model_dir"])


def check_flagfile_paths(cfg: TrainConfig, argv) -> None:
    """ValueError with a hint when a relative path setting does not exist from the current directory but does
    from the folder of a --flagfile in `argv`: absl reads flagfile paths from where you run, not the file."""
    import glob

    flagfiles = [a.split("=", 1)[1] for a in argv if a.startswith("--flagfile=")]
    for name in ("data", "val_bin", "val_pairs", "val_lfw_dir", "resume_from", "teacher", "init_from"):
        value = getattr(cfg, name)
        if not value or os.path.isabs(value) or glob.glob(value) or os.path.exists(value + ".index"):
            continue
        for ff in flagfiles:
            alt = os.path.join(os.path.dirname(os.path.abspath(ff)), value)
            if glob.glob(alt) or os.path.exists(alt + ".index"):
                raise ValueError(f"--{name}={value!r} does not exist from the current directory {os.getcwd()!r}, "
                                 f"but does next to --flagfile={ff!r}: paths in a flagfile are read from where you "
                                 f"run. Run from {os.path.dirname(os.path.abspath(ff))!r}, or write --{name}={alt}")


def config_from_flags(fl) -> TrainConfig:
    """A TrainConfig filled from parsed absl flags (one attribute per field); not yet validated."""
    return TrainConfig(**{f.name: getattr(fl, f.name) for f in dataclasses.fields(TrainConfig)})

