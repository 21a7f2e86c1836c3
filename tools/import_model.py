"""`python tools/import_model.py` = `mobiface-import-model` (mobiface_tf/commands/import_model.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's package, installed or not

if __name__ == "__main__":
    from mobiface_tf import cli

    cli.import_model()
