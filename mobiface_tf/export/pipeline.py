"""The whole export: PReLU rewrite, conversion, the .tflite and its .parity.json report, the parity check."""
from __future__ import annotations

from pathlib import Path

from mobiface_tf.atomic import atomic_path, write_bytes_atomic, write_json_atomic
from mobiface_tf.export.convert import QUANTIZE_MODES, to_tflite
from mobiface_tf.export.parity import INT8_PARITY_AIM, PARITY_MIN, ParityError, parity
from mobiface_tf.export.prelu import PRELU_FORMS, rewrite_prelu
from mobiface_tf.litert import delegation, make_interpreter, op_counts
from mobiface_tf.sidecar import drop_stale_sidecar


def export(model, output, quantize="none", calibration_images=None, parity_images=None, int8_io="float",
           rewrite=None, enforce=True, activation_ranges="mse") -> dict:
    """Convert `model`, write OUTPUT and OUTPUT.parity.json, return the report.

    rewrite: apply `rewrite_prelu` before conversion. None (default) = only for int8. In float modes
    XNNPACK already runs PRELU as one fused op, and the rewrite measured slightly slower there (3 ops
    instead of 1, see README); in int8 it is what keeps the graph in one XNNPACK partition.
    activation_ranges: int8 only, see `to_tflite`.

    Never in place (mobiface_tf.atomic): the .tflite is written to a temporary file beside OUTPUT (missing folders
    created), read back, and parity is measured on what was written, against the original model. Only then are
    OUTPUT.parity.json and OUTPUT renamed into place and a threshold sidecar of the replaced model dropped.
    Raises ParityError when fp32/fp16 parity is below PARITY_MIN: OUTPUT, its report and its sidecar are then
    left as they were, and the failed file and its report are kept as OUTPUT.failed and OUTPUT.failed.parity.json
    (named in the message) for inspection. OSError (a full disk) likewise leaves OUTPUT as it was.
    """
    output = Path(output)
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantize mode {quantize!r}; expected one of {QUANTIZE_MODES}")
    if rewrite is None:
        rewrite = quantize == "int8"
    converted, summary = rewrite_prelu(model) if rewrite else (model, {form: [] for form in PRELU_FORMS})
    range_stats = {}
    content = to_tflite(converted, quantize, calibration_images, int8_io, activation_ranges, range_stats)
    with atomic_path(output, keep_suffix=True) as tmp:
        tmp.write_bytes(content)
        written = tmp.read_bytes()  # what a reader of OUTPUT will get: parity is measured on it
        if written != content:
            raise OSError(f"the TFLite model written for {str(output)!r} does not read back whole; check free "
                          "space and rerun")
        report = _report(model, output, quantize, int8_io, rewrite, summary, calibration_images, activation_ranges,
                         range_stats, written, parity_images)
        failure = _parity_failure(report, quantize, output) if enforce else None
        if failure is not None:
            failed = Path(f"{output}.failed")
            write_bytes_atomic(failed, written)
            write_json_atomic(f"{failed}.parity.json", dict(report, tflite=str(failed)), indent=2)
            raise ParityError(f"{failure}; nothing was written to {str(output)!r} (the failed export is {failed}, its "
                              f"report {failed}.parity.json)")
        write_json_atomic(f"{output}.parity.json", report, indent=2)
    drop_stale_sidecar(output)  # a threshold measured on the file just replaced must not outlive it
    return report


def _report(model, output: Path, quantize, int8_io, rewrite, summary, calibration_images, activation_ranges,
            range_stats, content: bytes, parity_images) -> dict:
    """The parity report of the converted flatbuffer `content` (see `export`)."""
    interp = make_interpreter(content)
    report = {
        "model": model.name,
        "tflite": str(output),
        "quantize": quantize,
        "int8_io": int8_io if quantize == "int8" else "float",
        "size_bytes": len(content),
        "prelu_rewrite": {"enabled": bool(rewrite), **{form: len(summary[form]) for form in PRELU_FORMS},
                          "general_layers": summary["general"]},
        "num_calibration": 0 if quantize != "int8" else int(len(calibration_images)),
        "activation_ranges": ({"method": activation_ranges, **range_stats} if quantize == "int8" else None),
        "ops": op_counts(content),
        **delegation(interp),
    }
    if parity_images is not None and len(parity_images):
        report["parity"] = parity(model, content, parity_images)
        threshold = PARITY_MIN.get(quantize)
        report["parity"]["threshold"] = threshold if threshold is not None else f"reported only (aim mean >= {INT8_PARITY_AIM})"
    else:
        report["parity"] = None
    return report


def _parity_failure(report: dict, quantize: str, output: Path) -> str | None:
    """Why the export fails its mode's parity bar (one clause), or None when it passes or the mode has no bar."""
    if quantize not in PARITY_MIN:
        return None
    if report["parity"] is None:
        return f"{quantize} export {str(output)!r} has no parity images; pass --parity_images=DIR"
    if report["parity"]["cosine_min"] < PARITY_MIN[quantize]:
        return (f"{quantize} export {str(output)!r}: min cosine {report['parity']['cosine_min']:.6f} "
                f"< {PARITY_MIN[quantize]} (Keras vs TFLite)")
    return None
