"""`python tools/to_tflite.py` = `mobiface-to-tflite`, kept for older notes and scripts.

The command lives in mobiface_tf/commands/to_tflite.py; mobiface_tf/cli.py runs it.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's package, installed or not

if __name__ == "__main__":  # spawned worker processes import this file too: they must not run the command
    from mobiface_tf import cli

    cli.to_tflite()
