"""The user commands as a user runs them (mobiface_tf/cli.py): output paths checked before any work, one line and
exit 2 on bad input, Ctrl-C = one line and exit 130 (a real SIGINT to a real process group), `python -m
mobiface_tf.<verb>` for each, and every console script's --help from a non-editable install in a fresh venv."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO, child_pids, ignores_signal, interrupt_when, process_has_loaded, write_png
from mobiface_tf import cli
from mobiface_tf.outputs import check_output_dir, check_output_file, is_tflite_file, json_report

ENV = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _run(args, cwd, timeout=300):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd,
                          timeout=timeout)


def _one_error_line(proc, *needles):
    """Exit 2, and stderr is exactly one `error: ...` line holding every needle (no traceback)."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# --------------------------------------------------------------------------------- the output-path check itself
def test_output_checks_each_kind_of_bad_place(tmp_path):
    """Each bad place fails with ValueError naming the flag, and the check leaves nothing behind."""
    folder = tmp_path / "results"
    folder.mkdir()
    a_file = tmp_path / "model.tflite"
    a_file.write_bytes(b"x")
    cases = {
        "is a folder; pass a file name such as": lambda: check_output_file(folder, "--output", example="eval.json"),
        "is an existing file; pass a folder": lambda: check_output_dir(a_file, "--output_dir"),
        "is not a folder": lambda: check_output_file(a_file / "no" / "x.json", "--output"),
        "exists and is not a TFLite model": lambda: check_output_file(a_file, "--output", ours=is_tflite_file,
                                                                       what="a TFLite model"),
    }
    if Path("/proc/self").is_dir():  # a place even root cannot create files in (not a permission bit)
        cases["cannot write in '/proc'"] = lambda: check_output_file("/proc/mobiface_x.json", "--output")
    for message, check in cases.items():
        with pytest.raises(ValueError, match="--output") as info:
            check()
        assert message in str(info.value), (message, str(info.value))
        assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite", "results"]
    assert list(folder.iterdir()) == []
    # Good places pass: missing parent folders too (the writer creates them), and the check creates nothing.
    assert check_output_file(folder / "eval.json", "--output") == folder / "eval.json"
    assert check_output_dir(tmp_path / "new", "--output_dir") == tmp_path / "new"
    assert check_output_file(tmp_path / "eval_out" / "deep" / "e.json", "--output") == \
        tmp_path / "eval_out" / "deep" / "e.json"
    assert check_output_dir(tmp_path / "a" / "b", "--output_dir") == tmp_path / "a" / "b"
    assert check_output_file(a_file, "--output") == a_file and a_file.read_bytes() == b"x"  # not truncated
    (folder / "eval.json").write_text(json.dumps({"num_pairs": 6000, "num_positive": 3000, "num_negative": 3000}))
    assert check_output_file(folder / "eval.json", "--output", ours=json_report("num_pairs"), what="a report")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite", "results"]


# --------------------------------------------------------------------- every writer checks before its work
def _model_missing(tmp_path):
    return tmp_path / "missing.tflite"  # if the command loaded its model first, it would complain about this


def _commands(tmp_path):
    """(tool, args, what the one error line must say) per writing command. Every one is also given a bad input
    that its work would trip over first (a missing model or input, an unknown network), so the output's error
    proves the check ran before the work."""
    folder = tmp_path / "results"
    folder.mkdir()
    a_file = tmp_path / "model.bin"
    a_file.write_bytes(b"x")
    missing = _model_missing(tmp_path)
    return {
        "evaluate": (["tools/evaluate.py", f"--model={missing}", f"--lfw_dir={tmp_path}",
                      f"--pairs={tmp_path / 'pairs.txt'}", f"--output={folder}"], ["--output", "is a folder"]),
        "to_tflite": (["tools/to_tflite.py", f"--model={missing}", f"--output={folder}"], ["--output", "is a folder"]),
        "bench": (["tools/bench.py", "--models=resnet50", f"--output_dir={a_file}"],
                  ["--output_dir", "is an existing file"]),
        "bench_identify": (["tools/bench_identify.py", f"--model={missing}", f"--probes={tmp_path / 'p'}",
                            f"--distractors={tmp_path / 'd'}", f"--output={folder}"], ["--output", "is a folder"]),
        "compare": (["tools/compare.py", "--models=resnet50", f"--output_dir={a_file}"],
                    ["--output_dir", "is an existing file"]),
        "prepare": (["-m", "mobiface_tf.prepare", f"--input={tmp_path / 'nowhere'}",
                     f"--output={a_file}"], ["--output", "is an existing file"]),
    }


@pytest.mark.parametrize("tool", ["evaluate", "to_tflite", "bench", "bench_identify", "compare", "prepare"])
def test_writers_check_output_paths_before_any_work(tool, tmp_path):
    args, needles = _commands(tmp_path)[tool]
    proc = _run(args, cwd=REPO)
    _one_error_line(proc, *needles)
    # nothing written before the check failed: only the test's own two inputs are there, the folder empty
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "results"]
    assert not any((tmp_path / "results").iterdir()) and (tmp_path / "model.bin").read_bytes() == b"x"


def _users_files(tmp_path):
    """(tool, args, the user's file that is in the way, what the error names) per writing command: an existing
    file of the user's at the place the command would write its report, chart or model."""
    notes = tmp_path / "notes.json"
    notes.write_text(json.dumps({"my": "data"}))
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    (out_dir / "results.md").write_text("# My results\n")
    not_keras = tmp_path / "mine.keras"
    not_keras.write_text("not a model")
    missing = _model_missing(tmp_path)
    return {
        "evaluate": (["tools/evaluate.py", f"--model={missing}", f"--lfw_dir={tmp_path}",
                      f"--pairs={tmp_path / 'pairs.txt'}", f"--output={notes}"], notes, "not an evaluate report"),
        "bench_identify": (["tools/bench_identify.py", f"--model={missing}", f"--probes={tmp_path / 'p'}",
                            f"--distractors={tmp_path / 'd'}", f"--output={notes}"], notes,
                           "not a bench_identify report"),
        "to_tflite": (["tools/to_tflite.py", f"--model={missing}", f"--output={notes}"], notes, "not a TFLite model"),
        "bench": (["tools/bench.py", "--models=resnet50", f"--output_dir={out_dir}"], out_dir / "results.md",
                  "not a bench results.md"),
        "compare": (["tools/compare.py", "--models=resnet50", f"--output_dir={out_dir}"], out_dir / "results.md",
                    "not a compare results.md"),
        "import_model": (["-m", "mobiface_tf.import_model", f"--source={notes}", f"--output={not_keras}"], not_keras,
                         "not a Keras model"),
    }


@pytest.mark.parametrize("tool", ["evaluate", "bench_identify", "to_tflite", "bench", "compare", "import_model"])
def test_writers_never_replace_a_file_that_is_not_their_own(tool, tmp_path):
    """A command replaces only what it can tell is its own (a report with its keys or heading, a chart, a model
    of its format): a user's file in the way stops it before any work, in one line naming the file, unchanged."""
    args, users_file, message = _users_files(tmp_path)[tool]
    before = users_file.read_bytes()
    proc = _run(args, cwd=REPO)
    _one_error_line(proc, str(users_file), message, "pass another path, or delete it")
    assert users_file.read_bytes() == before


def test_evaluate_output_folder_fails_before_embedding_real_faces(tmp_path, reference_tflite, lfw_dir, lfw_pairs):
    """The case evaluate-output-dir-traceback-after-run: a real model and LFW, --output an existing folder. One
    line, exit 2, and nothing was written (no ROC PNG, no sidecar beside the model)."""
    model = tmp_path / "model.tflite"
    shutil.copy(reference_tflite, model)
    (tmp_path / "results").mkdir()
    proc = _run(["tools/evaluate.py", f"--model={model}", f"--lfw_dir={lfw_dir}", f"--pairs={lfw_pairs}",
                 f"--output={tmp_path / 'results'}", "--noprogress"], cwd=REPO)
    _one_error_line(proc, "is a folder", "results/eval.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite", "results"]


# ------------------------------------------------------------------------------ one runner: codes and lines
def test_bad_flags_and_help_exit_codes(tmp_path):
    """An unknown flag or a missing required one: one line, exit 2. --help: the command's help on stdout, 0."""
    proc = _run(["-m", "mobiface_tf.to_tflite", "--no_such_flag"], cwd=tmp_path)
    _one_error_line(proc, "no_such_flag")
    proc = _run(["-m", "mobiface_tf.to_tflite"], cwd=tmp_path)
    _one_error_line(proc, "--output")
    proc = _run(["tools/to_tflite.py", "--help"], cwd=REPO)
    assert proc.returncode == 0 and "--quantize" in proc.stdout and "--[no]verbose" in proc.stdout, proc.stderr


@pytest.mark.parametrize("verb", ["evaluate", "bench", "bench_identify", "compare", "demo"])
def test_python_m_runs_the_command(verb, tmp_path):
    """`python -m mobiface_tf.<verb>` reaches the command's own flags (an unknown one: exit 2, one line)."""
    proc = _run(["-m", f"mobiface_tf.{verb}", "--no_such_flag"], cwd=tmp_path)
    _one_error_line(proc, "no_such_flag")


def test_error_line_is_one_line():
    assert cli.error_line(ValueError("a\nb")) == "error: a b"
    assert cli.error_line(ValueError("error: said")) == "error: said"
    assert cli.error_line(PermissionError(13, "Permission denied", "/x/y")) == "error: Permission denied: '/x/y'"


# ------------------------------------------------------------------------------------------------- Ctrl-C
@pytest.mark.slow
def test_ctrl_c_during_prepare_is_one_line_and_resumes(tmp_path):
    """A real SIGINT to the process group (as a terminal's Ctrl-C) while 2 worker processes align faces: exit 130,
    stderr is one line saying how many shards were kept and to rerun; the rerun resumes (the kept shard is not
    rebuilt) and ends with every input accounted for."""
    from conftest import person

    src = tmp_path / "photos"
    for i in range(6):
        for k in range(8):  # --align=mtcnn: MTCNN runs on each, slow enough to interrupt after the first shard
            write_png(src / f"id{i}" / f"{k}.png", person(i, k))
    out = tmp_path / "shards"
    cmd = [sys.executable, "tools/prepare_data.py", f"--input={src}", f"--output={out}", "--align=mtcnn",
           "--shards=4", "--workers=2", "--noprogress"]
    first_done = out / "train-00000-of-00004.tfrecord.done.json"
    workers = {}

    def first_shard_done(proc):
        if not first_done.exists():
            return False
        # The worker processes (and multiprocessing's helper) ignore SIGINT: only the parent acts on Ctrl-C.
        workers.update({c: ignores_signal(c, signal.SIGINT) for c in child_pids(proc.pid)})
        return True

    rc, stdout, stderr, readied = interrupt_when(cmd, first_shard_done, env=ENV, cwd=REPO)
    assert readied, f"the run ended before its first shard was done: {rc}\n{stderr[-3000:]}"
    assert len(workers) >= 2 and all(workers.values()), workers
    lines = stderr.strip().splitlines()
    assert rc == 130, (rc, stderr[-3000:])
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith("interrupted: ") and "of 4 shards finished and kept in" in lines[0], lines[0]
    assert "rerun the same command" in lines[0]
    kept = int(lines[0].split("interrupted: ")[1].split(" of ")[0])
    assert 1 <= kept < 4, lines[0]
    assert not (out / "manifest.json").exists() and not (out / ".prepare.lock").exists()
    before = first_done.stat().st_mtime_ns
    again = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "rebuilding" not in again.stderr and first_done.stat().st_mtime_ns == before
    assert "of 48 inputs" in again.stdout, again.stdout


def test_ctrl_c_while_starting_is_one_line(tmp_path):
    """SIGINT while a command is still importing TensorFlow: one line, exit 130, no traceback."""
    cmd = [sys.executable, "-m", "mobiface_tf.train", f"--data={tmp_path / 'none'}", f"--model_dir={tmp_path / 'm'}"]
    rc, stdout, stderr, readied = interrupt_when(cmd, lambda p: process_has_loaded(p.pid, "tensorflow"), env=ENV,
                                                 cwd=tmp_path, timeout=120)
    assert readied, f"train ended before TensorFlow was mapped (rc {rc}): {stderr[-2000:]}"
    assert rc == 130, (rc, stderr[-3000:])
    assert stderr.strip().splitlines() == ["interrupted"], stderr[-3000:]


# ------------------------------------------------------------------------------------- one way to run each
def test_every_command_has_a_python_m_form_and_a_console_script():
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for verb, (module, script) in cli.COMMANDS.items():
        assert scripts[script] == f"mobiface_tf.cli:{verb}", verb
        assert (REPO / "mobiface_tf" / f"{verb}.py").is_file(), f"python -m mobiface_tf.{verb} has no module"
        text = (REPO / "mobiface_tf" / f"{verb}.py").read_text()
        assert f"cli.{verb}()" in text, verb
        assert module.startswith("mobiface_tf.")
    # pyproject.toml declares every runtime package that requirements.txt pins (test-only ones in the "test" extra).
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    every = project["dependencies"] + project["optional-dependencies"]["test"]
    declared = {re.split(r"[<>=\[ ]", d)[0].lower() for d in every}
    pinned = {line.split("==")[0].strip().lower() for line in (REPO / "requirements.txt").read_text().splitlines()
              if "==" in line and not line.lstrip().startswith("#")}
    assert pinned <= declared, pinned - declared
    # Research scripts are kept apart from the user commands.
    assert not [p.name for p in (REPO / "tools").glob("*.py") if p.stem in ("int8_study", "learning_curve",
                                                                          "bench_data")]


@pytest.mark.slow
def test_console_scripts_help_from_a_non_editable_install(tmp_path):
    """`pip install --no-deps .` of a copy of the project into a fresh venv (its other packages come from this
    environment, nothing is downloaded), then every console script's --help, run outside the checkout."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "mobiface_tf", src / "mobiface_tf", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # This environment's packages (TensorFlow, ...) as a plain path entry: its editable mobiface_tf hook is a .pth
    # file there, which a plain entry does not run, so only the installed copy can be imported.
    Path(site, "zz_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                          "--no-build-isolation", "--quiet", str(src)], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=600)
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-3000:]
    where = subprocess.run([str(python), "-c", "import mobiface_tf, sys; print(mobiface_tf.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, check=True).stdout.strip()
    assert where.startswith(site), where  # the installed copy, not the checkout
    for verb, (module, script) in cli.COMMANDS.items():
        proc = subprocess.run([str(venv / "bin" / script), "--help"], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, (script, proc.stderr[-3000:])
        assert "flags:" in proc.stdout and "--[no]verbose" in proc.stdout, (script, proc.stdout[-2000:])
        assert "Traceback" not in proc.stderr, (script, proc.stderr[-3000:])
