"""How every user command runs: one console script each (pyproject.toml), the same program as its
`python -m mobiface_tf.<verb>` form (and, for the older spellings, `python tools/<X>.py`).

    command        console script            python -m                      code (flags + main)
    prepare        mobiface-prepare          mobiface_tf.prepare            mobiface_tf/commands/prepare.py
    train          mobiface-train            mobiface_tf.train              mobiface_tf/train.py
    evaluate       mobiface-evaluate         mobiface_tf.evaluate           mobiface_tf/commands/evaluate.py
    to_tflite      mobiface-to-tflite        mobiface_tf.to_tflite          mobiface_tf/commands/to_tflite.py
    bench          mobiface-bench            mobiface_tf.bench              mobiface_tf/commands/bench.py
    bench_identify mobiface-bench-identify   mobiface_tf.bench_identify     mobiface_tf/commands/bench_identify.py
    compare        mobiface-compare          mobiface_tf.compare            mobiface_tf/commands/compare.py
    verify         mobiface-verify           mobiface_tf.verify             mobiface_tf/verify.py
    identify       mobiface-identify         mobiface_tf.identify           mobiface_tf/identify.py
    demo           mobiface-demo             mobiface_tf.demo               mobiface_tf/demo.py
    make_bin       mobiface-make-bin         mobiface_tf.make_bin           mobiface_tf/commands/make_bin.py
    import_model   mobiface-import-model     mobiface_tf.import_model       mobiface_tf/commands/import_model.py

`run_command` owns what every command shares, so each one behaves the same:
  * quiet start-up (mobiface_tf.quiet) before anything imports TensorFlow, and the --verbose flag;
  * --help / -h / --helpshort / --helpfull print the command's own help on stdout and exit 0;
  * exit codes: 0 done; 2 bad input (flags, files, settings), after ONE line `error: ...` on stderr and no
    traceback (--verbose adds the traceback); 130 on Ctrl-C (SIGINT), after one line `interrupted: ...` saying
    what was kept where the command knows it. Any other exception is a bug: its traceback, exit 1.
A command module defines its absl flags (module level, or a `define_flags()` function) and `main(argv)`, which
signals bad input by raising ValueError / OSError / app.UsageError, by `sys.exit("error: ...")`, or by returning
a non-zero status after printing its own `error:` line; a KeyboardInterrupt may carry the line's text.

To add a command: put its flags + main in mobiface_tf/commands/<verb>.py, add an entry
function below and to COMMANDS, a console script in pyproject.toml, a 3-line mobiface_tf/<verb>.py for `python -m`,
and a row in docs/cli.md. tests/test_cli.py then checks its --help from a non-editable install.
"""
from __future__ import annotations

import importlib
import pickle
import sys
import traceback
from typing import NoReturn

from mobiface_tf import quiet

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
_HELP_ARGS = ("-h", "-?", "--help", "--helpshort", "--helpfull")

# verb -> (module holding its flags and main, console script).
COMMANDS = {
    "prepare": ("mobiface_tf.commands.prepare", "mobiface-prepare"),
    "train": ("mobiface_tf.train", "mobiface-train"),
    "evaluate": ("mobiface_tf.commands.evaluate", "mobiface-evaluate"),
    "to_tflite": ("mobiface_tf.commands.to_tflite", "mobiface-to-tflite"),
    "bench": ("mobiface_tf.commands.bench", "mobiface-bench"),
    "bench_identify": ("mobiface_tf.commands.bench_identify", "mobiface-bench-identify"),
    "compare": ("mobiface_tf.commands.compare", "mobiface-compare"),
    "verify": ("mobiface_tf.verify", "mobiface-verify"),
    "identify": ("mobiface_tf.identify", "mobiface-identify"),
    "demo": ("mobiface_tf.demo", "mobiface-demo"),
    "make_bin": ("mobiface_tf.commands.make_bin", "mobiface-make-bin"),
    "import_model": ("mobiface_tf.commands.import_model", "mobiface-import-model"),
}


def error_line(e: BaseException) -> str:
    """The one `error: ...` line for a bad-input exception (an OSError names its file)."""
    if isinstance(e, OSError) and e.strerror:
        where = e.filename if e.filename is not None else ""
        text = f"{e.strerror}: '{where}'" if where else e.strerror
    else:
        text = str(e) or type(e).__name__
    text = " ".join(text.split())  # one line, whatever the message held
    return text if text.startswith("error:") else f"error: {text}"


def _fail(line: str) -> int:
    if quiet.is_verbose():
        traceback.print_exc()
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


def _guarded(main):
    """main(argv) -> exit status, with bad input mapped to one line and EXIT_BAD_INPUT."""
    from absl import app

    def wrapped(argv):
        try:
            status = main(argv)
        except (ValueError, OSError, app.UsageError, pickle.UnpicklingError) as e:
            return _fail(error_line(e))
        except SystemExit as e:  # sys.exit("error: ...") inside a command: the same line, the same code
            if isinstance(e.code, str):
                return _fail(error_line(ValueError(e.code)))
            raise
        return 0 if status in (None, 0) else EXIT_BAD_INPUT

    return wrapped


def _parse_flags(argv):
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(error_line(e) + " (see --help)", file=sys.stderr, flush=True)
        sys.exit(EXIT_BAD_INPUT)


def _print_help(module, prog: str, full: bool) -> None:
    from absl import flags

    doc = (module.__doc__ or "").strip()
    print(f"{prog}: {doc}\n" if doc else f"{prog}\n")
    if full:
        print(flags.FLAGS.get_help())
        return
    print("flags:")
    print(flags.FLAGS.module_help(module.__name__))
    print(flags.FLAGS.module_help(quiet.__name__))
    print("\n--helpfull: every flag, absl's included.")


def run_command(module_name: str, argv=None) -> NoReturn:
    """Run the command whose flags and `main` live in `module_name` (see the module docstring); never returns.

    argv: the command line (default sys.argv); argv[0] names the program in the help.
    """
    argv = list(sys.argv if argv is None else argv)
    quiet.install(argv)
    try:
        from absl import app

        module = importlib.import_module(module_name)
        if hasattr(module, "define_flags"):
            module.define_flags()
        quiet.define_verbose_flag()
        args = argv[1:argv.index("--")] if "--" in argv else argv[1:]
        if any(a in _HELP_ARGS for a in args):
            _print_help(module, _prog(argv[0]), full="--helpfull" in args)
            sys.exit(0)
        app.run(_guarded(module.main), argv=argv, flags_parser=_parse_flags)
    except KeyboardInterrupt as e:
        sys.stdout.flush()
        detail = " ".join(str(e).split())
        print(f"interrupted{': ' + detail if detail else ''}", file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(0)  # app.run always exits; this is for the type checker


def _prog(arg0: str) -> str:
    from pathlib import Path

    return Path(arg0).name or "mobiface"


# ----------------------------------------------------------------------------------------- console scripts
def prepare() -> NoReturn:
    """mobiface-prepare: aligned TFRecord shards from photos (mobiface_tf/commands/prepare.py)."""
    run_command(COMMANDS["prepare"][0])


def train() -> NoReturn:
    """mobiface-train: python -m mobiface_tf.train."""
    run_command(COMMANDS["train"][0])


def evaluate() -> NoReturn:
    """mobiface-evaluate: LFW / .bin verification accuracy (mobiface_tf/commands/evaluate.py)."""
    run_command(COMMANDS["evaluate"][0])


def to_tflite() -> NoReturn:
    """mobiface-to-tflite: export to TFLite with a parity report (mobiface_tf/commands/to_tflite.py)."""
    run_command(COMMANDS["to_tflite"][0])


def bench() -> NoReturn:
    """mobiface-bench: TFLite latency / size / MACs table (mobiface_tf/commands/bench.py)."""
    run_command(COMMANDS["bench"][0])


def bench_identify() -> NoReturn:
    """mobiface-bench-identify: MegaFace-style identification (mobiface_tf/commands/bench_identify.py)."""
    run_command(COMMANDS["bench_identify"][0])


def compare() -> NoReturn:
    """mobiface-compare: the networks trained, scored, exported and timed alike (mobiface_tf/commands/compare.py)."""
    run_command(COMMANDS["compare"][0])


def verify() -> NoReturn:
    """mobiface-verify: python -m mobiface_tf.verify."""
    run_command(COMMANDS["verify"][0])


def identify() -> NoReturn:
    """mobiface-identify: python -m mobiface_tf.identify."""
    run_command(COMMANDS["identify"][0])


def demo() -> NoReturn:
    """mobiface-demo: python -m mobiface_tf.demo (makes the README's demo photos and gallery)."""
    run_command(COMMANDS["demo"][0])


def make_bin() -> NoReturn:
    """mobiface-make-bin: an InsightFace-style verification .bin from LFW or CFP (mobiface_tf/commands/make_bin.py)."""
    run_command(COMMANDS["make_bin"][0])


def import_model() -> NoReturn:
    """mobiface-import-model: a published MobileFaceNet into the Keras network (mobiface_tf/commands/import_model.py)."""
    run_command(COMMANDS["import_model"][0])
