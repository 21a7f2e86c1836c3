"""Everything that touches the LiteRT runtime, in one TensorFlow-free module.

Interpreter creation, input quantisation / output dequantisation, batched invoke, XNNPACK partition
counting, op counts, the CPU the figures were measured on, and the timing and memory children (LiteRT's own
benchmark tool, `litert-benchmark`, is run by mobiface_tf.litert_benchmark). The embedder, the exporter, the
bench and the tests all run .tflite files through here. It must not import TensorFlow: the timing children started by the bench
(`python -m mobiface_tf.litert ...`) would otherwise pay TF's import time, threads and ~500 MB of memory.
"""
from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MIN_RUNS = 50


# ---------------------------------------------------------------------------------------------
# Interpreter, (de)quantisation, batched invoke
# ---------------------------------------------------------------------------------------------
def make_interpreter(model_content: bytes | None = None, model_path=None, num_threads: int | None = 1,
                     preserve_all_tensors: bool = False):
    """A LiteRT Interpreter with tensors allocated; on CPU XNNPACK is applied by default.

    Pass exactly one of `model_content` (flatbuffer bytes) or `model_path` (.tflite file).
    num_threads: interpreter threads (None: LiteRT's default). preserve_all_tensors: keep every
    intermediate tensor readable after invoke (for inspection; uses more memory). Raises ValueError when both or neither
    source is given, FileNotFoundError for a missing path, and LiteRT's ValueError for a broken model.
    """
    from ai_edge_litert.interpreter import Interpreter

    if (model_content is None) == (model_path is None):
        raise ValueError("make_interpreter needs exactly one of model_content (bytes) or model_path (.tflite file)")
    if model_path is not None and not Path(model_path).is_file():
        raise FileNotFoundError(f"TFLite model not found: {str(model_path)!r}")
    interp = Interpreter(model_content=model_content, model_path=None if model_path is None else str(model_path),
                         num_threads=num_threads, experimental_preserve_all_tensors=preserve_all_tensors)
    interp.allocate_tensors()
    return interp


def quantize_input(x, detail: dict) -> np.ndarray:
    """Float input -> the tensor's dtype.

    For an int8/uint8 input (`detail` from get_input_details()), TFLite's affine quantisation
    q = clip(round(x / scale) + zero_point) to the dtype's range; float inputs are only cast.
    Shape is unchanged.
    """
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.integer):
        scale, zero = detail["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(np.asarray(x, np.float32) / scale) + zero, info.min, info.max).astype(dtype)
    return np.asarray(x).astype(dtype)


def dequantize_output(q, detail: dict) -> np.ndarray:
    """Output tensor -> float32: (q - zero_point) * scale for int8/uint8 outputs, a cast otherwise."""
    if np.issubdtype(detail["dtype"], np.integer):
        scale, zero = detail["quantization"]
        return (np.asarray(q).astype(np.float32) - zero) * scale
    return np.asarray(q).astype(np.float32)


def io_details(interp, name: str = "model") -> tuple[dict, dict]:
    """(input detail, output detail) of a one-input, one-output [N, H, W, C] model; ValueError otherwise."""
    inputs, outputs = interp.get_input_details(), interp.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"{name} has {len(inputs)} inputs / {len(outputs)} outputs; expected one of each")
    if len(inputs[0]["shape"]) != 4:
        raise ValueError(f"{name} input shape {list(inputs[0]['shape'])} is not [N, H, W, C]")
    return inputs[0], outputs[0]


def run_batched(interp, images, batch_size: int = 64) -> np.ndarray:
    """Float outputs [N, D] of `interp` on float images [N, H, W, C] (already preprocessed).

    Inputs are quantised and outputs dequantised as the tensors require; the output's non-batch axes are
    flattened ([N, 1, 1, D] -> [N, D]: which output shapes a model may have is decided when it is loaded, by
    mobiface_tf.embedder.embedding_size). A model whose signature fixes the batch (ours: 1) is invoked in
    chunks of that size, the last chunk zero-padded; a dynamic-batch model is resized to chunks of
    `batch_size` (and to the last, smaller chunk). Raises ValueError for a wrong image size or batch_size < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    inp, out = io_details(interp)
    images = np.asarray(images)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(int(s) for s in inp["shape"][1:]):
        raise ValueError(f"images of shape {images.shape} do not fit the model input {list(inp['shape'])}")
    dynamic = int(inp["shape_signature"][0]) == -1
    step = batch_size if dynamic else int(inp["shape"][0])
    results = []
    for start in range(0, len(images), step):
        chunk = images[start:start + step]
        n = len(chunk)
        current = int(interp.get_input_details()[0]["shape"][0])
        if dynamic and n != current:
            interp.resize_tensor_input(inp["index"], [n, *images.shape[1:]])
            interp.allocate_tensors()
        elif not dynamic and n != current:  # fixed batch > 1, last partial chunk: pad, then drop the padding
            chunk = np.concatenate([chunk, np.zeros((current - n, *chunk.shape[1:]), chunk.dtype)])
        interp.set_tensor(inp["index"], quantize_input(chunk, inp))
        interp.invoke()
        detail = interp.get_output_details()[0]
        results.append(dequantize_output(interp.get_tensor(out["index"]), detail)[:n].reshape(n, -1))
    if not results:
        return np.zeros((0, int(np.prod(out["shape"][1:]))), np.float32)
    return np.concatenate(results)


# ---------------------------------------------------------------------------------------------
# Graph inspection: XNNPACK partitions, op counts
# ---------------------------------------------------------------------------------------------
def delegation(interp) -> dict:
    """XNNPACK partitions and undelegated ops of an allocated interpreter.

    Returns {"partitions": int, "undelegated_ops": {op name: count}, "num_undelegated": int}.
    LiteRT's Python API has no partition counter. After allocation, `_get_ops_details()` lists the
    graph's original nodes followed by one "DELEGATE" node per delegate partition; the original
    nodes a partition took over stay listed but are no longer executed. We rebuild the execution
    plan: walk back from the graph outputs, where a tensor is produced by a DELEGATE node if one
    outputs it, else by its original op, which is then an undelegated op run by the builtin kernels.
    """
    ops = interp._get_ops_details()
    delegate_out, op_out = {}, {}
    for op in ops:
        target = delegate_out if op["op_name"] == "DELEGATE" else op_out
        for t in op["outputs"]:
            target[int(t)] = op
    wanted = [int(d["index"]) for d in interp.get_output_details()]
    seen, executed = set(), {}
    while wanted:
        t = wanted.pop()
        if t in seen:
            continue
        seen.add(t)
        producer = delegate_out.get(t) or op_out.get(t)
        if producer is None:  # graph input or constant
            continue
        executed[producer["index"]] = producer
        wanted.extend(int(i) for i in producer["inputs"] if i >= 0)
    names = [op["op_name"] for op in executed.values()]
    undelegated = {}
    for n in names:
        if n != "DELEGATE":
            undelegated[n] = undelegated.get(n, 0) + 1
    return {"partitions": names.count("DELEGATE"), "undelegated_ops": dict(sorted(undelegated.items())),
            "num_undelegated": sum(undelegated.values())}


def op_counts(model_content: bytes) -> dict:
    """{op name: count} of the flatbuffer graph itself (before any delegate), sorted by name."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_content=model_content,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    counts = {}
    for op in interp._get_ops_details():
        counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    return dict(sorted(counts.items()))


# ---------------------------------------------------------------------------------------------
# The CPU every figure was measured on
# ---------------------------------------------------------------------------------------------
# ISA features XNNPACK dispatches on (its x86 microkernels: AVX2+FMA, AVX-512F/BW/DQ/VL "skx",
# AVX512-VBMI, AVX512-VNNI and AVX-VNNI for int8, AVX512-FP16, AMX; ARM: NEON, dot product, I8MM,
# FP16 arithmetic, SVE). /proc/cpuinfo spellings; ARM names mapped to the usual ones.
X86_ISA = ("sse4_1", "avx", "f16c", "fma", "avx2", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512vbmi",
           "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni_int8", "amx_tile", "amx_int8",
           "amx_bf16", "amx_fp16")
ARM_ISA = {"neon": "neon", "asimd": "asimd", "asimddp": "dotprod", "i8mm": "i8mm", "asimdhp": "fp16",
           "bf16": "bf16", "sve": "sve", "sve2": "sve2", "sme": "sme"}


def parse_cpuinfo(text: str, machine: str = "") -> dict:
    """{"model": str, "isa": [features]} from the text of Linux's /proc/cpuinfo.

    model: the first "model name" (x86, most ARM kernels) or "Hardware" / "Processor" line, else
    `machine`. isa: the features in X86_ISA or ARM_ISA present in the first "flags" / "Features"
    line, in that table's order (ARM names mapped: asimddp -> dotprod, asimdhp -> fp16).
    """
    def first(*keys):
        for key in keys:
            m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
            if m and m[1].strip():
                return m[1].strip()
        return None

    model = first("model name", "Hardware", "Processor", "cpu model") or machine or "unknown"
    flags = set((first("flags", "Features") or "").split())
    isa = [f for f in X86_ISA if f in flags]
    isa += list(dict.fromkeys(name for f, name in ARM_ISA.items() if f in flags))
    return {"model": model, "isa": isa}


def cpu_info() -> dict:
    """The CPU of this machine: {"model", "isa", "machine", "logical_cpus"}.

    model and isa as in `parse_cpuinfo` (Linux); on macOS from sysctl (brand string, hw.optional.*).
    Under a hypervisor the model may be generic ("AMD EPYC"): isa is what the guest can use and what
    XNNPACK picks its kernels from, so it is what latency figures depend on.
    """
    machine = platform.machine()
    info = {"model": platform.processor() or machine or "unknown", "isa": []}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        info = parse_cpuinfo(cpuinfo.read_text(errors="replace"), machine)
    elif sys.platform == "darwin":
        info = _darwin_cpu(machine)
    return {**info, "machine": machine, "logical_cpus": os.cpu_count()}


def _darwin_cpu(machine):
    def sysctl(name):
        proc = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    isa = [name for key, name in (("hw.optional.neon", "neon"), ("hw.optional.arm.FEAT_DotProd", "dotprod"),
                                  ("hw.optional.arm.FEAT_I8MM", "i8mm"), ("hw.optional.arm.FEAT_FP16", "fp16"),
                                  ("hw.optional.arm.FEAT_BF16", "bf16"), ("hw.optional.avx2_0", "avx2"),
                                  ("hw.optional.fma", "fma"), ("hw.optional.avx512f", "avx512f"))
           if sysctl(key) == "1"]
    return {"model": sysctl("machdep.cpu.brand_string") or machine or "unknown", "isa": isa}


def cpu_label(cpu: dict) -> str:
    """One line for tables: 'AMD EPYC (x86_64, 2 CPUs): avx2 fma avx512f ...'."""
    return f"{cpu['model']} ({cpu.get('machine', '?')}, {cpu.get('logical_cpus', '?')} CPUs): {' '.join(cpu['isa']) or 'no SIMD features found'}"


# ---------------------------------------------------------------------------------------------
# Timing and memory (each runs inside a fresh child: python -m mobiface_tf.litert ...)
# ---------------------------------------------------------------------------------------------
def peak_rss_kb() -> int:
    """This process's peak resident set size in kB.

    VmHWM from /proc/self/status where it exists: getrusage's ru_maxrss is not usable in a child
    started from a big parent, because Linux carries the parent's high-water mark across fork+exec
    (we measured ~1 GB for a 60 MB child of the TF-loaded bench). Elsewhere, ru_maxrss.
    """
    status = Path("/proc/self/status")
    if status.exists():
        m = re.search(r"^VmHWM:\s+(\d+) kB", status.read_text(), re.M)
        if m:
            return int(m[1])
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss // 1024 if sys.platform == "darwin" else rss  # macOS reports bytes, Linux kB


def random_input(detail: dict, seed: int = 0) -> np.ndarray:
    """A fixed random input for timing: raw RGB uniform in 0-255 for float inputs, the full range for integer ones."""
    rng = np.random.default_rng(seed)
    if np.issubdtype(detail["dtype"], np.integer):
        info = np.iinfo(detail["dtype"])
        return rng.integers(info.min, info.max, detail["shape"], endpoint=True).astype(detail["dtype"])
    return rng.uniform(0, 255, detail["shape"]).astype(detail["dtype"])


def _ready_interpreter(path, threads: int):
    interp = make_interpreter(model_path=path, num_threads=threads)
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], random_input(inp))
    return interp


def time_interleaved(paths, threads: int = 1, warmup: int = 5, rounds: int = MIN_RUNS, seed: int = 0) -> list:
    """Per-invoke wall times (ms) of several .tflite files timed round-robin in this process.

    All interpreters are loaded first. Each round invokes every model once, in a freshly shuffled
    order, so every model sees the same machine conditions (load from other jobs, CPU frequency,
    cache state) and the ratios between them are fair even when absolute times drift. `warmup`
    untimed rounds come first. Returns one list of `rounds` times per path, in the order of `paths`:
    times[j][k] is model j in round k, so per-round (paired) ratios can be taken.
    """
    interps = [_ready_interpreter(p, threads) for p in paths]
    rng = np.random.default_rng(seed)
    for _ in range(warmup):
        for interp in interps:
            interp.invoke()
    times = np.empty((len(paths), rounds))
    for k in range(rounds):
        for j in rng.permutation(len(paths)):
            t0 = time.perf_counter()
            interps[j].invoke()
            times[j, k] = (time.perf_counter() - t0) * 1e3
    return times.tolist()


def memory_and_delegation(path, threads: int = 1, warmup: int = 5) -> dict:
    """Peak RSS (MB) of this process after loading `path` and `max(warmup, 1)` invokes, plus its delegation.

    Meant for a fresh process holding nothing else, so the figure is Python + LiteRT + this model only.
    Returns {"peak_rss_mb", "partitions", "undelegated_ops", "num_undelegated"}.
    """
    interp = _ready_interpreter(path, threads)
    for _ in range(max(warmup, 1)):  # the first invoke allocates XNNPACK's workspace
        interp.invoke()
    return {"peak_rss_mb": round(peak_rss_kb() / 1024, 1), **delegation(interp)}


def _child(args, timeout: float = 900):
    """Run `python -m mobiface_tf.litert ARGS...` (a fresh process without TensorFlow) and parse its JSON."""
    cmd = [sys.executable, "-m", "mobiface_tf.litert", *map(str, args)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_interleaved_in_subprocess(paths, threads: int, warmup: int, rounds: int) -> list:
    """`time_interleaved` in one fresh child process (no TensorFlow threads or memory around)."""
    return _child(["time", threads, warmup, rounds, *paths])


def memory_in_subprocess(path, threads: int, warmup: int) -> dict:
    """`memory_and_delegation` in its own fresh child, so no other interpreter pollutes the RSS."""
    return _child(["memory", threads, warmup, path])


# ---------------------------------------------------------------------------------------------
# Child entry points
# ---------------------------------------------------------------------------------------------
def _main(argv):
    """Internal child entry points (no TensorFlow import):
    python -m mobiface_tf.litert time THREADS WARMUP ROUNDS PATH...   -> JSON list of per-model times (ms)
    python -m mobiface_tf.litert memory THREADS WARMUP PATH           -> JSON peak RSS + delegation
    python -m mobiface_tf.litert cpu                                  -> JSON cpu_info()
    """
    if len(argv) >= 5 and argv[0] == "time":
        return time_interleaved(argv[4:], int(argv[1]), int(argv[2]), int(argv[3]))
    if len(argv) == 4 and argv[0] == "memory":
        return memory_and_delegation(argv[3], int(argv[1]), int(argv[2]))
    if argv == ["cpu"]:
        return cpu_info()
    raise SystemExit(f"usage: {_main.__doc__}")


if __name__ == "__main__":
    print(json.dumps(_main(sys.argv[1:])))
