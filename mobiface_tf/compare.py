"""The paper's comparison (MobiFace Table II) redone honestly: the three networks trained the same way, scored
on the same held-out people, exported, and timed in one run.

    python tools/compare.py --output_dir=DIR --data=SHARDS --teacher=MODEL --lfw_dir=DIR --pairs=pairs.txt \
        [--folds=1,2,3] [--steps=N] [--models=mobiface_gdc,mobilefacenet,mobilenet_v1_gdc] [--synthetic]

Every student (a zoo name from mobiface_tf.models.zoo, at the teacher's embedding size) is trained by
knowledge distillation alone (`--margin=none`, cosine loss) from the teacher embeddings stored in the shards,
with the same data, steps, batch, schedule and seed. The shards must hold no person of the held-out folds
(mobiface-prepare --exclude_pairs/--exclude_folds); when --data is not given they are made from
--lfw_dir that way. Each student is then

  - scored on the held-out folds (LFW View 2 cross-validation restricted to them, flip test) as Keras;
  - exported to fp32, fp16 and int8 TFLite (int8 calibrated on training faces, never on held-out people; "int8"
    with the MSE activation ranges that are the export's default, "int8_minmax" with the converter's own
    min/max ranges as the baseline) and each export scored the same way;
  - timed at 1 thread with every other export and the teacher in one interleaved run (mobiface_tf.litert).

Resumable: each stage leaves its file (checkpoints, embedding.keras, the .tflite files, one JSON per row) and a
rerun skips what is done. Training time is the sum of the training segments; a segment cut short by a kill
counts up to its last checkpoint.

Outputs: DIR/results.json ({"rows": [...], "budget", "cpu", ...}; one row per network and form, with model,
form, params, macs, size_bytes, latency_ms_p50, heldout_accuracy, heldout_folds, train_seconds),
DIR/results.md and DIR/accuracy_vs_latency.png.
"""
from __future__ import annotations

if __name__ == "__main__":  # `python -m mobiface_tf.compare`: the compare command (see mobiface_tf/cli.py)
    from mobiface_tf import cli

    cli.compare()


import json
import time
from pathlib import Path

import numpy as np

from mobiface_tf.atomic import write_json_atomic, write_text_atomic
from mobiface_tf.compare_report import markdown, plot
from mobiface_tf.fingerprint import model_fingerprint  # the key of every cached row and of the timing run

STUDENTS = ("mobiface_gdc", "mobilefacenet", "mobilenet_v1_gdc")
# Each TFLite form: (export quantize mode, int8 activation ranges). "int8_minmax" is the converter's own
# min/max calibration, kept as the baseline that shows what the MSE ranges of "int8" recover.
TFLITE_EXPORT = {"none": ("none", None), "float16": ("float16", None), "int8": ("int8", "mse"),
                 "int8_minmax": ("int8", "minmax")}
TFLITE_FORMS = tuple(TFLITE_EXPORT)
FORMS = ("keras", *TFLITE_FORMS)
INT8_MAX_DROP = 0.003  # the bar: int8 loses at most 0.3 points of held-out accuracy against Keras

# The distillation recipe (docs/distillation.md), shared by every student.
RECIPE = dict(margin="none", distill_weight=1.0, distill_loss="cosine", batch_size=64, lr=0.1, lr_schedule="cosine",
              momentum=0.9, nesterov=True, weight_decay=5e-5, seed=0, shuffle_buffer=10000)


def _write(path: Path, obj) -> None:
    write_json_atomic(path, obj)  # missing folders are created


def _read(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def resolve_student(name: str, embedding_dim: int) -> dict:
    """Network name -> train() settings {backbone, head, embedding_dim}, through the one resolver that train's
    --backbone also uses (models.zoo.resolve); ValueError naming an unknown name."""
    from mobiface_tf.models.zoo import resolve

    builder, kwargs = resolve(name, embedding_dim=embedding_dim)
    if set(kwargs) <= {"head", "embedding_dim"}:  # spelled as before, so existing runs resume unchanged
        return dict(backbone=builder, embedding_dim=embedding_dim, head=kwargs.get("head", "gdc"))
    return dict(backbone=name, embedding_dim=embedding_dim)  # e.g. final_stride: train resolves the zoo name


# ------------------------------------------------------------------------------------------------ training
def _train_seconds(record: dict, ckpt_dir: Path) -> float:
    """Sum of training segments; an unfinished one (killed) ends at its newest checkpoint file."""
    total = 0.0
    newest = max((f.stat().st_mtime for f in ckpt_dir.glob("*")), default=None) if ckpt_dir.is_dir() else None
    for seg in record.get("segments", []):
        end = seg.get("end") or (max(newest, seg["start"]) if newest else seg["start"])
        total += end - seg["start"]
    return total


def train_student(name: str, model_dir: Path, data, steps: int, embedding_dim: int, log=print, **overrides) -> dict:
    """Train (or resume, or skip when finished) one student; returns {"embedding", "train_seconds", "steps"}."""
    from mobiface_tf.training.config import EMBEDDING_FILE, TrainConfig
    from mobiface_tf.training.loop import train

    model_dir.mkdir(parents=True, exist_ok=True)
    timing_path = model_dir / "compare_train.json"
    record = _read(timing_path) or {"segments": []}
    embedding = model_dir / EMBEDDING_FILE
    if record.get("done") and embedding.is_file() and record.get("steps") == steps:
        return {"embedding": embedding, "train_seconds": _train_seconds(record, model_dir / "checkpoints"),
                "steps": steps}
    settings = dict(RECIPE, **resolve_student(name, embedding_dim), steps=steps,
                    warmup_steps=min(200, max(1, steps // 10)), log_every=max(1, min(100, steps // 10)),
                    ckpt_every=max(1, min(500, steps // 4)))
    settings.update(overrides)
    record["segments"].append({"start": time.time()})
    record["steps"] = steps
    _write(timing_path, record)
    log(f"[compare] training {name} to step {steps} in {model_dir}")
    train(TrainConfig(data=str(data), model_dir=str(model_dir), **settings))
    record["segments"][-1]["end"] = time.time()
    record["done"] = True
    _write(timing_path, record)
    return {"embedding": embedding, "train_seconds": _train_seconds(record, model_dir / "checkpoints"), "steps": steps}


# ------------------------------------------------------------------------------------------------ scoring
def heldout_accuracy(model_path, lfw_dir, pairs, folds, preprocess=None, threads: int | None = None) -> dict:
    """Held-out LFW accuracy (flip test) of one model file: {"accuracy", "accuracy_std", "folds", "num_pairs"}."""
    from mobiface_tf import evaluate as ev
    from mobiface_tf.embedder import load_embedder

    emb = load_embedder(model_path, preprocess, batch_size=64, num_threads=threads)
    report = ev.evaluate_lfw(emb, pairs, lfw_dir, flip=True, folds=folds, progress=False)[0]
    return {k: report[k] for k in ("accuracy", "accuracy_std", "folds", "num_pairs", "threshold")}


def _row_cache(output_dir: Path, model: str, form: str) -> Path:
    return output_dir / "rows" / f"{model}.{form}.json"


def export_student(embedding: Path, out_dir: Path, calibration, parity_images, log=print) -> dict:
    """fp32 / fp16 / int8 (MSE ranges) / int8 (min/max ranges) TFLite of a trained student; {form: path}.

    A file already written with the same settings is skipped; an int8 file made with other activation ranges
    (for example before MSE ranges were the default) is exported again."""
    import keras

    from mobiface_tf.export.pipeline import export

    paths = {form: out_dir / f"{embedding.parent.name}_{form}.tflite" for form in TFLITE_FORMS}
    model = None
    for form, path in paths.items():
        quantize, ranges = TFLITE_EXPORT[form]
        report = _read(Path(str(path) + ".parity.json"))
        done_ranges = ((report or {}).get("activation_ranges") or {}).get("method", "minmax")
        if path.is_file() and report is not None and (ranges is None or done_ranges == ranges):
            continue
        if model is None:
            model = keras.models.load_model(embedding, compile=False)
        log(f"[compare] exporting {embedding.parent.name} as {form}")
        export(model, path, quantize, calibration_images=calibration if quantize == "int8" else None,
                  parity_images=parity_images, enforce=False, activation_ranges=ranges or "mse")
    return paths


# ------------------------------------------------------------------------------------------------ the run
def make_synthetic_setup(root: Path, num_train_ids: int = 12, num_heldout_ids: int = 8, images: int = 6,
                         log=print) -> dict:
    """A tiny stand-in for the real inputs (CI): synthetic training shards with the embeddings of a random-init
    MobileFaceNet teacher, and an LFW-style folder + pairs.txt of other synthetic people (3 folds)."""
    import keras

    from mobiface_tf import models
    from mobiface_tf.data import synthetic
    from mobiface_tf.data.teacher_shards import add_teacher

    root.mkdir(parents=True, exist_ok=True)
    teacher = root / "teacher_synthetic.keras"
    if not teacher.is_file():
        keras.utils.set_random_seed(1)
        models.build("mobilefacenet", embedding_dim=128).save(teacher)
    data = root / "train"
    if not (data / "manifest.json").is_file():
        synthetic.write_synthetic_tfrecords(data, num_train_ids, images, seed=0, shards=2)
    from mobiface_tf.data.manifest import read_manifest

    if "teacher" not in read_manifest(data):
        add_teacher(data, teacher, progress=False)
    lfw = root / "lfw"
    pairs = root / "pairs.txt"
    if not pairs.is_file():  # other people than the training ones: another seed
        synthetic.write_synthetic_lfw(lfw, pairs, num_heldout_ids, images, num_folds=3, pairs_per_class=4, seed=1)
    return {"data": data, "teacher": teacher, "lfw_dir": lfw, "pairs": pairs, "folds": [1, 2, 3]}


def run(output_dir, *, data=None, teacher=None, lfw_dir=None, pairs=None, folds=(1, 2, 3), models=STUDENTS,
        steps: int = 1400, embedding_dim: int | None = None, synthetic: bool = False, num_calibration: int = 200,
        latency_rounds: int = 50, teacher_uint8=None, log=print, **train_overrides) -> dict:
    """The whole comparison; returns the results.json dict. See the module docstring.

    Raises ValueError (one line, what to do) for missing inputs or unknown network names.
    """
    from mobiface_tf import litert
    from mobiface_tf.export.faces import load_faces

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    for m in models:
        resolve_student(m, 128)  # names checked before any work
    data, teacher, lfw_dir, pairs, folds, manifest = _check_inputs(output_dir, data, teacher, lfw_dir, pairs, folds,
                                                                   synthetic, log)
    dim = embedding_dim or int(manifest["teacher"]["embedding_dim"])
    calibration = load_faces(data, num_calibration, seed=0)
    parity_images = load_faces(data, 64, seed=1)
    heldout = (lfw_dir, pairs, list(folds))
    rows, files = [], {}
    for name in models:
        rows += _student_rows(name, output_dir, data, steps, dim, heldout, calibration, parity_images, files, log,
                              train_overrides)
    teacher_rows = _teacher_rows(teacher, teacher_uint8, output_dir, heldout, files, log) if teacher else []
    lat = _latency(files, output_dir, latency_rounds, log)
    all_rows = rows + teacher_rows
    _add_latency(all_rows, rows, lat)
    cpu = litert.cpu_info()
    pairs_total = all_rows[0]["heldout_pairs"] if all_rows else None
    meta = {"folds": list(folds), "pairs": str(pairs), "num_pairs": pairs_total,
            "teacher": Path(teacher).name if teacher else None, "synthetic": bool(synthetic),
            "budget": dict(steps=steps, batch_size=train_overrides.get("batch_size", RECIPE["batch_size"]),
                           embedding_dim=dim, recipe={**RECIPE, **train_overrides},
                           train_seconds_total=sum(r["train_seconds"] or 0 for r in rows if r["form"] == "keras")),
            "data": str(data), "num_train_images": int(manifest["num_images"]), "cpu": cpu,
            "cpu_label": litert.cpu_label(cpu), "int8_max_drop": INT8_MAX_DROP}
    result = {"rows": all_rows, **meta}
    _write(output_dir / "results.json", result)
    write_text_atomic(output_dir / "results.md", markdown(all_rows, meta))
    plot(all_rows, output_dir / "accuracy_vs_latency.png",
         f"held-out LFW (folds {','.join(map(str, folds))}) vs 1-thread latency"
         + (" - SYNTHETIC" if synthetic else ""))
    return result


def _check_inputs(output_dir: Path, data, teacher, lfw_dir, pairs, folds, synthetic: bool, log):
    """(data, teacher, lfw_dir, pairs, folds, data manifest): the synthetic setup when asked, shards prepared from
    --lfw_dir without the held-out people when no --data; ValueError (what to do) for missing inputs."""
    from mobiface_tf.data.pipeline import read_manifest

    if synthetic:
        setup = make_synthetic_setup(output_dir / "synthetic", log=log)
        data, teacher, lfw_dir, pairs, folds = (setup[k] for k in ("data", "teacher", "lfw_dir", "pairs", "folds"))
    if not (lfw_dir and pairs):
        raise ValueError("give --lfw_dir and --pairs (the held-out folds are scored there), or --synthetic")
    if data is None:
        if not teacher:
            raise ValueError("give --data (shards with teacher embeddings) or --teacher to make them from --lfw_dir")
        from mobiface_tf.data.prepare import prepare

        data = output_dir / "data"
        log(f"[compare] preparing {data} from {lfw_dir} without the people of folds {list(folds)}")
        prepare(str(lfw_dir), str(data), align="none", exclude_pairs=pairs, exclude_folds=list(folds),
                teacher=teacher, progress=False)
    manifest = read_manifest(data)
    if not manifest.get("teacher"):
        raise ValueError(f"{data} has no teacher embeddings; add them with mobiface-prepare --add_teacher=MODEL "
                         f"--output={data}")
    excluded = manifest.get("excluded")
    if not synthetic and not (excluded and set(folds) <= set(excluded["folds"])):
        raise ValueError(f"the shards in {data} were not made without the people of folds {list(folds)} "
                         "(manifest 'excluded'); re-run mobiface-prepare with --exclude_pairs/--exclude_folds")
    return data, teacher, lfw_dir, pairs, folds, manifest


def _student_rows(name: str, output_dir: Path, data, steps: int, dim: int, heldout, calibration, parity_images,
                  files: dict, log, train_overrides: dict) -> list:
    """Train (or resume) one student, export it, and score each of its FORMS on the held-out folds (cached per
    row; a re-export re-scores). Adds its .tflite files to `files`."""
    import keras

    from mobiface_tf import models as zoo_models

    lfw_dir, pairs, folds = heldout
    model_dir = output_dir / "models" / name
    trained = train_student(name, model_dir, data, steps, dim, log=log, **train_overrides)
    net = keras.models.load_model(trained["embedding"], compile=False)
    static = {"params": int(net.count_params()), "macs": int(zoo_models.count_macs(net))}
    paths = export_student(trained["embedding"], output_dir / "tflite", calibration, parity_images, log=log)
    rows = []
    for form in FORMS:
        path = trained["embedding"] if form == "keras" else paths[form]
        cache = _row_cache(output_dir, name, form)
        row = _read(cache)
        sha = model_fingerprint(path)
        if row is None or row.get("steps") != steps or row.get("file_sha256") != sha:  # a re-export re-scores
            log(f"[compare] scoring {name} {form} on folds {folds}")
            acc = heldout_accuracy(path, lfw_dir, pairs, folds, threads=2)
            row = dict(model=name, form=form, **static, size_bytes=Path(path).stat().st_size,
                       heldout_accuracy=acc["accuracy"], heldout_accuracy_std=acc["accuracy_std"],
                       heldout_folds=acc["folds"], heldout_pairs=acc["num_pairs"],
                       train_seconds=trained["train_seconds"], steps=steps, file=str(path), file_sha256=sha)
            if form != "keras":
                rep = json.loads(Path(str(path) + ".parity.json").read_text())
                row.update(partitions=rep.get("partitions"), parity_cosine_mean=(rep.get("parity") or {}).get(
                    "cosine_mean"), num_calibration=rep.get("num_calibration"),
                    activation_ranges=(rep.get("activation_ranges") or {}).get("method"))
            _write(cache, row)
        row["train_seconds"] = trained["train_seconds"]
        rows.append(row)
        if form != "keras":
            files[f"{name}.{form}"] = str(path)
    return rows


def _teacher_rows(teacher, teacher_uint8, output_dir: Path, heldout, files: dict, log) -> list:
    """The teacher (and the publisher's own int8 of it, when it sits beside it) as reference rows, scored on the
    held-out folds (cached). Adds its .tflite files to `files`."""
    lfw_dir, pairs, folds = heldout
    teacher_rows = []
    refs = [("none", Path(teacher))]
    sib = Path(teacher_uint8) if teacher_uint8 else Path(str(teacher).replace("_fp32.tflite", "_uint8.tflite"))
    if sib != Path(teacher) and sib.is_file():
        refs.append(("int8", sib))
    for form, path in refs:
        if path.suffix.lower() != ".tflite" and form != "none":
            continue
        cache = _row_cache(output_dir, "teacher", form)
        row = _read(cache)
        if row is None:
            log(f"[compare] scoring the teacher {path.name} on folds {folds}")
            acc = heldout_accuracy(path, lfw_dir, pairs, folds, threads=2)
            row = dict(model=f"teacher:{path.stem}", form=form if path.suffix == ".tflite" else "keras",
                       params=None, macs=None, size_bytes=path.stat().st_size if path.is_file() else None,
                       heldout_accuracy=acc["accuracy"], heldout_accuracy_std=acc["accuracy_std"],
                       heldout_folds=acc["folds"], heldout_pairs=acc["num_pairs"], train_seconds=None,
                       file=str(path))
            _write(cache, row)
        teacher_rows.append(row)
        if path.suffix.lower() == ".tflite":
            files[f"teacher.{form}"] = str(path)
    return teacher_rows


def _latency(files: dict, output_dir: Path, latency_rounds: int, log) -> dict:
    """One interleaved timing run over every .tflite (students and teacher), 1 thread; cached in latency.json
    while the files (by sha256) and the rounds are the same."""
    from mobiface_tf import litert

    keys = sorted(files)
    lat_path = output_dir / "latency.json"
    lat = _read(lat_path)
    shas = {k: model_fingerprint(files[k]) for k in keys}
    if lat is None or lat.get("keys") != keys or lat.get("rounds") != latency_rounds or lat.get("sha256") != shas:
        log(f"[compare] timing {len(keys)} TFLite files, 1 thread, {latency_rounds} interleaved rounds")
        times = litert.time_interleaved_in_subprocess([files[k] for k in keys], 1, 5, latency_rounds)
        lat = {"keys": keys, "sha256": shas, "rounds": latency_rounds, "threads": 1,
               "p50_ms": {k: float(np.median(t)) for k, t in zip(keys, times)},
               "p90_ms": {k: float(np.percentile(t, 90)) for k, t in zip(keys, times)}}
        _write(lat_path, lat)
    return lat


def _add_latency(all_rows: list, rows: list, lat: dict) -> None:
    """Each row gains its p50/p90 latency and its accuracy drop against its own Keras model (students only)."""
    for r in all_rows:
        key = f"teacher.{r['form']}" if r["model"].startswith("teacher:") else f"{r['model']}.{r['form']}"
        r["latency_ms_p50"] = lat["p50_ms"].get(key)
        r["latency_ms_p90"] = lat["p90_ms"].get(key)
        keras_acc = next((x["heldout_accuracy"] for x in rows if x["model"] == r["model"] and x["form"] == "keras"),
                         None)
        r["accuracy_drop_vs_keras"] = None if keras_acc is None or r["form"] == "keras" else \
            keras_acc - r["heldout_accuracy"]
