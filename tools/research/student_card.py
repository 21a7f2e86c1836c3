"""Write models/mobiface_student.json: the shipped student's lineage (every run it came from, cumulative images
seen and CPU hours) and every score, each with its command. models/MODEL_CARD.md quotes it.

  python tools/research/student_card.py --run_dir=runs/student [--scores=runs/score] [--cpu_file=runs/student_cpu.txt]

A run started with --init_from=models/mobiface_student.keras continues the lineage of the card already in
models/ (its runs are kept and its totals added to); a run from scratch starts a new one. Reads the run's
config.json, train log (--log), val_history.jsonl and the score reports of tools/research/score_student.sh.
"""
from __future__ import annotations

import datetime as dt
import json
import platform
import re
import subprocess
import sys
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
FLAGS = flags.FLAGS
flags.DEFINE_string("run_dir", "runs/student", "The training run's --model_dir.")
flags.DEFINE_string("log", "runs/student.log", "The run's log (stdout + stderr of mobiface_tf.train).")
flags.DEFINE_list("cpu_file", ["runs/student_cpu.txt"], "'EPOCH CPU_TICKS' of the training process, sampled "
                  "each minute while it ran (/proc/PID/stat utime+stime+cutime+cstime); one file per process when "
                  "the run was resumed (summed); empty if not sampled.")
flags.DEFINE_string("scores", "runs/score", "Folder of score_student.sh reports.")
flags.DEFINE_string("flagfile_used", "configs/student_online.flags", "The recipe the run was started with.")
flags.DEFINE_string("output", "models/mobiface_student.json", "The card to write.")
flags.DEFINE_string("gpu_log", "", "Instead of --run_dir/--log: the train_log.json of a GPU run of "
                    "tools/gpu/run.sh, which continued the shipped student (it is then a run of the same lineage).")
flags.DEFINE_string("note", "", "A line about the run for the card (e.g. how and why it was resumed).")
flags.DEFINE_string("device", "", "Override the machine description (default: this CPU).")

STEP_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ step (\d+)/(\d+)")


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _run_record(run_dir: Path, log: Path, cpu_file: list) -> dict:
    cfg = json.loads((run_dir / "config.json").read_text())
    steps = [(m.group(1), int(m.group(2))) for line in log.read_text().splitlines() if (m := STEP_LINE.match(line))]
    first, last = steps[0], steps[-1]
    fmt = "%Y-%m-%d %H:%M:%S"
    wall_min = (dt.datetime.strptime(last[0], fmt) - dt.datetime.strptime(first[0], fmt)).total_seconds() / 60
    files = [Path(f) for f in cpu_file if Path(f).is_file()]
    cpu_hours = sum(int(f.read_text().split()[1]) for f in files) / 100 / 3600 if files else None  # CLK_TCK 100
    from mobiface_tf.litert import cpu_info, cpu_label

    history = [json.loads(x) for x in (run_dir / "val_history.jsonl").read_text().splitlines() if x.strip()] \
        if (run_dir / "val_history.jsonl").is_file() else []
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    return {
        "date": first[0][:10], "commit": commit, "recipe": FLAGS.flagfile_used,
        "init_from": cfg.get("init_from"), "steps": last[1], "batch_size": cfg["batch_size"],
        "images_seen": last[1] * cfg["batch_size"], "wall_minutes_logged": round(wall_min, 1),
        "cpu_hours": None if cpu_hours is None else round(cpu_hours, 2),
        "machine": FLAGS.device or f"{cpu_label(cpu_info())}, {platform.machine()}",
        "teacher": cfg.get("teacher"), "data": cfg.get("data"), "note": FLAGS.note,
        "resumed": sum("resumed from" in line for line in log.read_text().splitlines()),
        "learning_curve": [{k: h.get(k) for k in ("step", "dataset", "accuracy", "run_seconds") if k in h}
                           for h in history],
    }


def _scores(folder: Path) -> dict:
    out = {}
    for name, key in (("lfw_fp32.json", "lfw_folds_1_3_fp32"), ("lfw_mobiface_student_keras.json", "lfw_folds_1_3_keras"),
                      ("lfw_mobiface_student_int8_tflite.json", "lfw_folds_1_3_int8")):
        r = _load(folder / name)
        if r:
            out[key] = {"accuracy": r.get("accuracy"), "std": r.get("accuracy_std"), "threshold": r.get("threshold"), "tar_at_far": r.get("tar_at_far")}
    r = _load(folder / "ident_fp32.json")
    if r:
        out["identification_lfw_heldout"] = {k: r.get(k) for k in ("rank1", "tar_at_far", "num_distractors",
                                                                     "num_probes")}
    for name in ("mobiface_student_fp32", "mobilefacenet_insightface_fp32"):
        r = _load(folder / f"cfp_{name}.json")
        if r:
            out[f"cfp_{'student' if 'student' in name else 'teacher'}"] = r
    for data in ("lfw", "celeba"):
        for name in ("mobiface_student_fp32", "mobilefacenet_insightface_fp32"):
            r = _load(folder / f"openset_{data}_{name}.json")
            if r:
                out[f"openset_{data}_{'student' if 'student' in name else 'teacher'}"] = r
    return out


def main(argv):
    del argv
    out = Path(FLAGS.output)
    if FLAGS.gpu_log:
        g = json.loads(Path(FLAGS.gpu_log).read_text())
        run = {"date": dt.date.today().isoformat(), "recipe": "tools/gpu/train_torch.py (Keras 3, torch backend)",
               "init_from": g["init"], "steps": g["steps"], "batch_size": g["batch_size"],
               "images_seen": g["images_seen"], "wall_minutes_logged": round(g["seconds"] / 60, 1),
               "cpu_hours": None, "gpu_hours": round(g["seconds"] / 3600, 3), "machine": g["device"],
               "learning_curve": g["curve"]}
    else:
        run = _run_record(Path(FLAGS.run_dir), Path(FLAGS.log), FLAGS.cpu_file or [])
    old = _load(out)
    runs = (old or {}).get("runs", []) if run["init_from"] else []
    runs = runs + [run]
    card = {
        "model": "MobiFace-gdc, 128-d embedding, 112x112x3 RGB input in [-1, 1] (x / 127.5 - 1)",
        "files": {"keras": "models/mobiface_student.keras", "fp32": "models/mobiface_student_fp32.tflite",
                  "int8": "models/mobiface_student_int8.tflite"},
        "teacher": "reference MobileFaceNet (InsightFace), ../shared/data/models/mobilefacenet_insightface_fp32.tflite",
        "data": "20,693 faces of 9,646 identity folders: LFW-112 outside View 2 folds 1-3, glint_sample, "
                "celeba_small_112; every LFW fold 1-3 person and every CFP person left out (runs/multi/sources.json)",
        "terms": "LFW, glint (MS1M-derived), CelebA and the InsightFace teacher are for non-commercial research; "
                 "so is this student.",
        "runs": runs,
        "total_images_seen": sum(r["images_seen"] for r in runs),
        "total_cpu_hours": round(sum(r["cpu_hours"] or 0 for r in runs), 2),
        "total_gpu_hours": round(sum(r.get("gpu_hours") or 0 for r in runs), 3),
        "scores": _scores(Path(FLAGS.scores)),
    }
    from mobiface_tf.atomic import write_json_atomic

    write_json_atomic(out, card, indent=1)
    print(json.dumps(card["scores"], indent=1))
    return 0


if __name__ == "__main__":
    app.run(main)
