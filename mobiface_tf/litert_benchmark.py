"""LiteRT's own benchmark tool (the `litert-benchmark` command of the ai-edge-litert wheel): the command that
runs it on one model in a fresh process, and the parser of what it prints. TensorFlow-free, as mobiface_tf.litert.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from mobiface_tf.litert import MIN_RUNS

LITERT_BENCHMARK_MODULE = "ai_edge_litert.tools.benchmark_litert_model"  # what `litert-benchmark` runs
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_LITERT_FIELDS = {  # printed label -> our key (all in ms)
    "Model initialization": "init_ms", "Warmup (first)": "warmup_first_ms", "Warmup (avg)": "warmup_avg_ms",
    "Inference (avg)": "avg_ms", "Inference (min)": "min_ms", "Inference (max)": "max_ms",
    "Inference (median)": "median_ms", "Inference (std)": "std_ms", "Inference (p5)": "p5_ms",
    "Inference (p95)": "p95_ms",
}


def parse_litert_benchmark(output: str) -> dict:
    """Parse the "BENCHMARK RESULTS" block that `litert-benchmark` prints to stdout.

    Returns the times in ms (init_ms, warmup_first_ms, warmup_avg_ms, avg_ms, min_ms, max_ms,
    median_ms, std_ms, p5_ms, p95_ms), num_runs and num_warmup_runs (from the "(N runs)" notes),
    throughput_mb_s when printed, and fully_accelerated (bool: the CompiledModel runs every op on the
    accelerator, here XNNPACK). Raises ValueError when there is no median or no verdict line.
    """
    out = {}
    for label, key in _LITERT_FIELDS.items():
        m = re.search(rf"^{re.escape(label)}:\s+({_NUM}) ms(?: \((\d+) runs\))?", output, re.M)
        if m:
            out[key] = float(m[1])
            if m[2] is not None:
                out["num_warmup_runs" if label.startswith("Warmup") else "num_runs"] = int(m[2])
    m = re.search(rf"^Throughput:\s+({_NUM}) MB/s", output, re.M)
    if m:
        out["throughput_mb_s"] = float(m[1])
    m = re.search(r"^Fully accelerated:\s+(True|False)\s*$", output, re.M)
    if m:
        out["fully_accelerated"] = m[1] == "True"
    if "median_ms" not in out or "fully_accelerated" not in out:
        raise ValueError("no 'Inference (median): X ms' / 'Fully accelerated: True|False' lines in litert-benchmark "
                         "output; run it as `litert-benchmark --model=MODEL.tflite`")
    return out


def litert_benchmark_command(tflite, threads: int = 1, runs: int = MIN_RUNS, warmup: int = 5) -> list:
    """The argv that runs LiteRT's benchmark tool on one model (same code as the `litert-benchmark` command)."""
    return [sys.executable, "-m", LITERT_BENCHMARK_MODULE, f"--model={tflite}", f"--num_threads={threads}",
            f"--num_runs={runs}", f"--warmup_runs={warmup}"]


def run_litert_benchmark(tflite, threads: int = 1, runs: int = MIN_RUNS, warmup: int = 5, timeout: float = 600) -> dict:
    """Run `litert-benchmark` on one .tflite in a fresh process and parse it (see parse_litert_benchmark).

    It times LiteRT's CompiledModel API (XNNPACK CPU accelerator), one model alone, `warmup` then
    `runs` invokes, random inputs in [-1, 1] (integer inputs: [max(min, -128), min(max, 127)]).
    Raises FileNotFoundError for a missing model, RuntimeError when the tool fails.
    """
    if not Path(tflite).is_file():
        raise FileNotFoundError(f"TFLite model not found: {str(tflite)!r}")
    if runs < 2 or warmup < 0:
        raise ValueError(f"litert-benchmark needs runs >= 2 (it takes a std) and warmup >= 0, got runs={runs}, "
                         f"warmup={warmup}")
    cmd = litert_benchmark_command(tflite, threads, runs, warmup)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return parse_litert_benchmark(proc.stdout)
