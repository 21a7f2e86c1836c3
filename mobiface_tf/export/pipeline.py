"""The whole export: PReLU rewrite, conversion, the .tflite and its .parity.json report, the parity check."""
from __future__ import annotations

import json
from pathlib import Path

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
    Parity is always measured against the original model. Raises ParityError when fp32/fp16 parity
    is below PARITY_MIN (after writing the report, so the numbers can be inspected).
    """
    output = Path(output)
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantize mode {quantize!r}; expected one of {QUANTIZE_MODES}")
    if rewrite is None:
        rewrite = quantize == "int8"
    converted, summary = rewrite_prelu(model) if rewrite else (model, {form: [] for form in PRELU_FORMS})
    range_stats = {}
    content = to_tflite(converted, quantize, calibration_images, int8_io, activation_ranges, range_stats)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(content)
    drop_stale_sidecar(output)  # a threshold measured on the file just replaced must not outlive it
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
    Path(str(output) + ".parity.json").write_text(json.dumps(report, indent=2))
    if enforce and quantize in PARITY_MIN:
        if report["parity"] is None:
            raise ParityError(f"{quantize} export {str(output)!r} has no parity images; pass --parity_images=DIR")
        if report["parity"]["cosine_min"] < PARITY_MIN[quantize]:
            raise ParityError(f"{quantize} export {str(output)!r}: min cosine {report['parity']['cosine_min']:.6f} "
                              f"< {PARITY_MIN[quantize]} (Keras vs TFLite); see {output}.parity.json")
    return report
