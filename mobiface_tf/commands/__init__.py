"""The user commands' flags and `main` functions, one module per command; run them through mobiface_tf.cli (console
scripts, `python -m mobiface_tf.<verb>`, or the `python tools/<X>.py` wrappers), which owns start-up, errors and
exit codes. Each module defines its absl flags at import, so import one command per process."""
from pathlib import Path

# The project machines' shared data, beside the checkout (tools' defaults; absent elsewhere, e.g. an installed copy).
SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
