"""The threshold sidecar: `<model>.eval.json`, written by tools/evaluate.py, read by the verify/identify CLIs.

    write_sidecar("m.tflite", report)   # -> m.tflite.eval.json (or fallback_dir/m.tflite.eval.json)
    read_threshold("m.tflite")          # -> float, or None without a usable sidecar

A sidecar stores the deployment threshold (cosine similarity; "same" when score > threshold), how it was
measured (preprocess, flip), and the model's content fingerprint (mobiface_tf.fingerprint: every file the model
reads, an ONNX model's external data included). A threshold belongs to one model and was fit on pairs of both
kinds, so:

- it is written only from a report with num_positive > 0 and num_negative > 0 and a finite threshold in
  [-1, 1] (the range of a cosine similarity); anything else raises SidecarError and nothing is written;
- on reading, a threshold that is not a number in [-1, 1] raises SidecarError naming the file (the CLIs stop
  with one line);
- a sidecar is ignored, with one warning line naming it, and the CLIs fall back to their default threshold,
  when it does not record both pair counts > 0, when it records no model fingerprint (an older version) or
  another model's (the model was replaced: re-exported to the same path, trained further), or when it was fit
  on fewer than MIN_PAIRS_PER_KIND same or different pairs (the warning says how many). `--threshold=T` is the
  way to use such a threshold on purpose.
- Tools that rewrite a model (to_tflite, train) call `drop_stale_sidecar(path)` after writing it, so no sidecar
  of the old model stays beside the new one.
- A file named like a sidecar that is not one (`not_a_sidecar`: not a JSON object with a threshold and the
  fields written here) is never replaced or removed. Sidecars are written through mobiface_tf.atomic.
"""
from __future__ import annotations

import json
import logging
import math
import os
import stat
from pathlib import Path

from mobiface_tf.atomic import write_json_atomic

log = logging.getLogger("mobiface_tf.sidecar")
_FIELDS = ("threshold", "threshold_method", "threshold_mean_of_folds", "accuracy", "accuracy_std", "dataset",
           "num_pairs", "num_positive", "num_negative", "flip", "preprocess", "realign", "model")
# A JSON object with "threshold" and one of these is a sidecar this module (or an older version of it) wrote.
_OWN_FIELDS = {"model_sha256", "metric", "num_positive", "num_negative", "threshold_method", "accuracy"}
# A threshold fit on fewer same (or different) pairs than this is not used in place of the documented default:
# with 100 pairs of a kind one pair moves that kind's error rate by 1 point, and the threshold sits wherever the
# few pairs nearest the boundary put it (an LFW View 2 fold has 300 of each, the whole protocol 3,000).
MIN_PAIRS_PER_KIND = 100


class SidecarError(ValueError):
    """A threshold that must not be written or used; the message names the file and what to do."""


def sidecar_path(model_path) -> Path:
    """model.tflite -> model.tflite.eval.json (a SavedModel dir 'm/' -> 'm.eval.json')."""
    return Path(str(Path(model_path)) + ".eval.json")


def check_threshold(value, where: str) -> float:
    """`value` as a float when it is a finite number in [-1, 1]; SidecarError (naming `where`) otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not -1.0 <= value <= 1.0:
        raise SidecarError(f"threshold {value!r} in {where} is not a number in [-1, 1] (the range of a cosine "
                           "similarity); delete it and re-run tools/evaluate.py on a set with same and different "
                           "pairs, or pass --threshold=T")
    return float(value)


def _writable_dir(folder: Path) -> bool:
    """Writable by permission bits too: root ignores a read-only mode, but shared data must stay untouched."""
    return folder.is_dir() and os.access(folder, os.W_OK) and bool(folder.stat().st_mode & stat.S_IWUSR)


def write_sidecar(model_path, report: dict, fallback_dir=None) -> Path | None:
    """Write {"threshold", "accuracy", "num_positive", "num_negative", ...} next to the model.

    If the model's folder is read-only (e.g. shared data; judged by its mode bits, so even root leaves it
    alone), write it into `fallback_dir` instead (created when missing) and return that path; returns None when
    neither location is writable (I/O errors are logged, not raised). A file at either place that is not a
    sidecar (`not_a_sidecar`) is never replaced: a warning names it and the next place is tried.
    Raises SidecarError, writing nothing, when the report lacks pairs of either kind or its threshold is not
    a finite number in [-1, 1].
    """
    pos, neg = report.get("num_positive"), report.get("num_negative")
    if not (isinstance(pos, int) and isinstance(neg, int) and pos > 0 and neg > 0):
        raise SidecarError(f"no threshold sidecar for {str(model_path)!r}: the set has {pos} same and {neg} "
                           "different pairs; a threshold needs both")
    check_threshold(report.get("threshold"), f"the report for {str(model_path)!r}")
    from mobiface_tf.fingerprint import model_fingerprint

    payload = {k: report.get(k) for k in _FIELDS}
    payload["model_sha256"] = model_fingerprint(model_path)
    payload["metric"] = "cosine similarity of L2-normalised embeddings; same person when score > threshold"
    targets = [sidecar_path(model_path)]
    if fallback_dir is not None:
        targets.append(Path(fallback_dir) / sidecar_path(model_path).name)
    for target in targets:
        if target is not targets[0]:  # the report's folder: made when missing, as the report's writer makes it
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except OSError:
                pass  # reported just below as not writable
        if not _writable_dir(target.parent):
            log.warning("not writing threshold sidecar into %s: the folder is read-only", target.parent)
            continue
        why = not_a_sidecar(target)
        if why is not None:
            log.warning("not replacing %s: it is not a threshold sidecar (%s); move it away and re-run "
                        "tools/evaluate.py to write one there", target, why)
            continue
        try:
            write_json_atomic(target, payload, indent=2)
            return target
        except OSError as e:
            log.warning("cannot write threshold sidecar %s (%s)%s", target, e,
                        "; trying the report's folder" if target is targets[0] and len(targets) > 1 else "")
    return None


def not_a_sidecar(path) -> str | None:
    """None when `path` may be replaced or removed as a threshold sidecar: it does not exist, or it is a JSON
    object with a "threshold" and one of the fields this module writes. Otherwise why not (a short clause): a
    file of that name that is something else is never replaced or deleted."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    if not path.is_file():
        return "not a regular file"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return f"not readable as JSON: {(str(e).splitlines() or [type(e).__name__])[0]}"
    if not isinstance(data, dict) or "threshold" not in data or not _OWN_FIELDS & data.keys():
        return "no threshold with the fields tools/evaluate.py writes"
    return None


def _ignored_because(data: dict, model_path) -> str | None:
    """Why a parsed sidecar must not be used for `model_path` (one clause), or None when it may be."""
    from mobiface_tf.fingerprint import model_fingerprint

    pos, neg = data.get("num_positive"), data.get("num_negative")
    if not (isinstance(pos, int) and isinstance(neg, int) and pos > 0 and neg > 0):
        return (f"it does not record both same and different pairs (num_positive={pos}, num_negative={neg}); "
                "re-run tools/evaluate.py to refresh it")
    recorded = data.get("model_sha256")
    if not isinstance(recorded, str):
        return (f"it does not record which model it was measured on (written by an older version); re-run "
                f"tools/evaluate.py --model={model_path} to refresh it")
    actual = model_fingerprint(model_path)
    if recorded != actual:
        return (f"it was measured on another model (sha256 {recorded[:12]}, this model is {actual[:12]}: the "
                f"model was replaced or retrained); re-run tools/evaluate.py --model={model_path}")
    if min(pos, neg) < MIN_PAIRS_PER_KIND:
        return (f"its threshold was fit on only {pos + neg} pairs ({pos} same, {neg} different), fewer than "
                f"{MIN_PAIRS_PER_KIND} of each kind; evaluate on more pairs (LFW View 2: 6,000), or pass "
                f"--threshold={float(data['threshold']):.4f} to use it anyway")
    return None


def read_sidecar(model_path, warn=None) -> dict | None:
    """The validated sidecar of `model_path` as a dict, or None when there is none or it is ignored.

    Raises SidecarError (naming the file) for unreadable JSON or a threshold that is not a number in
    [-1, 1]. A sidecar that lacks pairs of either kind, records no or another model's fingerprint, or was fit
    on fewer than MIN_PAIRS_PER_KIND pairs of a kind is ignored: `warn(line)` is called with one line naming
    it and why (default: a logged warning; pass `lambda m: None` to ignore it quietly).
    """
    path = sidecar_path(model_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SidecarError(f"bad threshold sidecar {str(path)!r} ({first}); fix or delete it, or pass "
                           "--threshold=T") from None
    if not isinstance(data, dict):
        raise SidecarError(f"bad threshold sidecar {str(path)!r} (not a JSON object); delete it")
    check_threshold(data.get("threshold"), repr(str(path)))
    why = _ignored_because(data, model_path)
    if why is not None:
        (warn or log.warning)(f"ignoring threshold sidecar {path}: {why}")
        return None
    return data


def drop_stale_sidecar(model_path) -> Path | None:
    """Remove the sidecar beside `model_path` unless it records this model's fingerprint; returns what it removed.

    Called by the tools that write a model (to_tflite, train) right after the final file is in place: a sidecar
    measured on the file they replaced would otherwise outlive it. Only a file that is recognisably a sidecar
    (`not_a_sidecar`) is removed; one that cannot be parsed, or holds something else, is left for the CLIs to
    report. Never raises for a missing or unremovable file (it logs a warning instead).
    """
    from mobiface_tf.fingerprint import model_fingerprint

    path = sidecar_path(model_path)
    if not path.is_file() or not_a_sidecar(path) is not None:  # not ours (or unparsable): left as it is
        return None
    try:
        recorded = json.loads(path.read_text()).get("model_sha256")
    except (ValueError, OSError):
        return None
    if recorded == model_fingerprint(model_path):
        return None
    try:
        path.unlink()
    except OSError as e:
        log.warning("cannot remove the stale threshold sidecar %s (%s); the CLIs will ignore it", path, e)
        return None
    log.warning("removed threshold sidecar %s: it was measured on the model this run replaced", path)
    return path


def read_threshold(model_path, warn=None) -> float | None:
    """The threshold stored next to the model by tools/evaluate.py, or None without a usable sidecar
    (see read_sidecar for what raises SidecarError, what is ignored, and `warn`)."""
    data = read_sidecar(model_path, warn)
    return None if data is None else float(data["threshold"])


def read_sidecar_settings(model_path) -> dict:
    """How the sidecar's threshold was measured: {"preprocess": str, "flip": bool} (raw / no flip without one).

    A threshold only fits scores computed the same way, so the verify/identify CLIs embed with these. An
    ignored sidecar (see read_sidecar) gives the defaults, quietly: resolve_threshold reports it.
    """
    data = read_sidecar(model_path, warn=lambda m: None) or {}
    return {"preprocess": str(data.get("preprocess") or "raw"), "flip": bool(data.get("flip", False))}
