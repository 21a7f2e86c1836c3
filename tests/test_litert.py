"""mobiface_tf.litert: TensorFlow-free import, batched invoke and (de)quantisation against Keras, XNNPACK
partition counting, the real `litert-benchmark` tool and its parser, CPU info. Real LiteRT interpreter and real
tool on tiny real models converted here, no mocks. No test asserts a speed."""
import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from mobiface_tf import litert, litert_benchmark

from conftest import REPO  # noqa: E402  (the repo root, one definition for every test file)
SAMPLE = REPO / "tests" / "data" / "litert_benchmark_sample.txt"

_BLOCK_TF = """
import sys
class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith(("tensorflow.", "keras")):
            raise ImportError(f"{name} is blocked: mobiface_tf.litert must not import it")
sys.meta_path.insert(0, _NoTensorFlow())
"""


def test_imports_and_runs_without_tensorflow(reference_tflite_uint8):
    """The module (and the bench module the CLI imports first) load and run a model with TensorFlow blocked."""
    code = _BLOCK_TF + f"""
import json, numpy as np
from mobiface_tf import litert, bench
interp = litert.make_interpreter(model_path={str(reference_tflite_uint8)!r})
emb = litert.run_batched(interp, np.zeros((2, 112, 112, 3), np.float32))
print(json.dumps({{"shape": list(emb.shape), "tf": "tensorflow" in sys.modules, "cpu": litert.cpu_info()["model"]}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["shape"] == [2, 128] and out["tf"] is False and out["cpu"]


# ---------------------------------------------------------------------------------------------
# Tiny real models: conv -> BN -> per-channel PReLU -> GAP -> dense, converted by the real converter
# ---------------------------------------------------------------------------------------------
def _tiny():
    keras.utils.set_random_seed(0)
    inp = keras.Input((24, 24, 3))
    x = keras.layers.Rescaling(1 / 128.0, offset=-127.5 / 128.0)(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.PReLU(shared_axes=[1, 2], alpha_initializer=keras.initializers.Constant(0.25))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(6)(x), name="tiny")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import tensorflow as tf

    from mobiface_tf.export.convert import frozen_function, to_tflite

    model = _tiny()
    images = np.random.default_rng(0).uniform(0, 255, (16, 24, 24, 3)).astype(np.float32)
    root = tmp_path_factory.mktemp("tiny")
    files = {"fp32": to_tflite(model), "int8": to_tflite(model, "int8", images),
             "int8_io": to_tflite(model, "int8", images, int8_io="int8")}
    frozen = frozen_function(model, batch_size=None)  # a dynamic batch dimension
    files["dynamic_batch"] = tf.lite.TFLiteConverter.from_concrete_functions([frozen]).convert()
    files["batch2"] = tf.lite.TFLiteConverter.from_concrete_functions([frozen_function(model, batch_size=2)]).convert()
    paths = {}
    for name, content in files.items():
        paths[name] = root / f"{name}.tflite"
        paths[name].write_bytes(content)
    return model, images, paths


def test_run_batched_fixed_batch_matches_keras(tiny):
    model, images, paths = tiny
    interp = litert.make_interpreter(model_path=paths["fp32"])
    assert list(interp.get_input_details()[0]["shape"]) == [1, 24, 24, 3]
    got = litert.run_batched(interp, images[:5], batch_size=4)  # batch 1 model: 5 invokes, batch_size ignored
    np.testing.assert_allclose(got, np.asarray(model(images[:5])), rtol=1e-4, atol=1e-5)


def test_run_batched_fixed_batch_2_pads_the_last_chunk(tiny):
    model, images, paths = tiny
    interp = litert.make_interpreter(model_path=paths["batch2"])
    got = litert.run_batched(interp, images[:3])  # [2 images], [1 image + 1 zero pad] -> 3 rows
    np.testing.assert_allclose(got, np.asarray(model(images[:3])), rtol=1e-4, atol=1e-5)


def test_run_batched_dynamic_batch_resizes_and_matches_keras(tiny):
    model, images, paths = tiny
    interp = litert.make_interpreter(model_content=paths["dynamic_batch"].read_bytes())
    assert int(interp.get_input_details()[0]["shape_signature"][0]) == -1
    got = litert.run_batched(interp, images[:5], batch_size=2)  # chunks of 2, 2, then 1
    np.testing.assert_allclose(got, np.asarray(model(images[:5])), rtol=1e-4, atol=1e-5)
    assert litert.run_batched(interp, images[:0]).shape == (0, 6)


def test_int8_io_dequantised_like_the_float_io_int8_model(tiny):
    """Same calibrated graph: int8 I/O (our (de)quantisation) vs float I/O (the graph's own) agree to a few steps."""
    model, images, paths = tiny
    int8_io = litert.make_interpreter(model_path=paths["int8_io"])
    inp, out = litert.io_details(int8_io)
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    got = litert.run_batched(int8_io, images[:4])
    want = litert.run_batched(litert.make_interpreter(model_path=paths["int8"]), images[:4])
    step = out["quantization"][0]
    assert np.abs(got - want).max() <= 2 * step, (got, want)
    assert np.abs(want).max() > 10 * step  # outputs span many steps, so the check above means something


def test_quantize_dequantize_affine():
    detail = {"dtype": np.uint8, "quantization": (0.5, 10)}
    q = litert.quantize_input(np.array([-100.0, 0.0, 1.24, 1.26, 1000.0]), detail)
    assert q.dtype == np.uint8 and q.tolist() == [0, 10, 12, 13, 255]  # clipped at both ends, rounded
    np.testing.assert_allclose(litert.dequantize_output(q, detail), [-5.0, 0.0, 1.0, 1.5, 122.5])
    as_float = litert.quantize_input(np.array([1, 2]), {"dtype": np.float32, "quantization": (0.0, 0)})
    assert as_float.dtype == np.float32


def test_make_interpreter_arguments(tmp_path):
    with pytest.raises(ValueError, match="exactly one of"):
        litert.make_interpreter()
    with pytest.raises(FileNotFoundError, match="nope.tflite"):
        litert.make_interpreter(model_path=tmp_path / "nope.tflite")


def test_partitions_op_counts_and_litert_benchmark_verdict(tiny):
    """fp32: one XNNPACK partition; stock int8: XNNPACK leaves int8 PRELU to the builtin kernel. The real
    litert-benchmark tool runs both and its 'fully accelerated' verdict agrees with our partition count."""
    _, _, paths = tiny
    fp32 = litert.delegation(litert.make_interpreter(model_path=paths["fp32"]))
    int8 = litert.delegation(litert.make_interpreter(model_path=paths["int8"]))
    assert fp32 == {"partitions": 1, "undelegated_ops": {}, "num_undelegated": 0}
    assert int8["undelegated_ops"].get("PRELU") == 1 and int8["partitions"] >= 1 and int8["num_undelegated"] >= 1
    assert litert.op_counts(paths["fp32"].read_bytes())["PRELU"] == 1
    for name, deleg in (("fp32", fp32), ("int8", int8)):
        lb = litert_benchmark.run_litert_benchmark(paths[name], threads=1, runs=3, warmup=1)
        assert lb["num_runs"] == 3 and lb["num_warmup_runs"] == 1
        assert 0 <= lb["min_ms"] <= lb["median_ms"] <= lb["max_ms"]  # printed to 0.01 ms: a tiny model may show 0.00
        assert lb["fully_accelerated"] is (deleg["num_undelegated"] == 0), (name, lb, deleg)


def test_litert_benchmark_command_is_the_installed_tool():
    """bench runs the module behind the wheel's `litert-benchmark` console script."""
    script = Path(sys.executable).parent / "litert-benchmark"
    if script.exists():
        assert litert_benchmark.LITERT_BENCHMARK_MODULE in script.read_text()
    cmd = litert_benchmark.litert_benchmark_command("m.tflite", threads=2, runs=7, warmup=3)
    assert cmd[1:3] == ["-m", litert_benchmark.LITERT_BENCHMARK_MODULE]
    assert {"--model=m.tflite", "--num_threads=2", "--num_runs=7", "--warmup_runs=3"} <= set(cmd)
    with pytest.raises(FileNotFoundError, match="nope.tflite"):
        litert_benchmark.run_litert_benchmark("nope.tflite")


def test_parse_litert_benchmark_real_output():
    """A real recording of the tool (tests/data/litert_benchmark_sample.txt, reference uint8 model)."""
    out = litert_benchmark.parse_litert_benchmark(SAMPLE.read_text())
    assert out == {"init_ms": 4.46, "warmup_first_ms": 2.38, "warmup_avg_ms": 2.09, "num_warmup_runs": 3,
                   "avg_ms": 1.84, "num_runs": 20, "min_ms": 1.81, "max_ms": 1.89, "median_ms": 1.84, "std_ms": 0.02,
                   "p5_ms": 1.81, "p95_ms": 1.87, "throughput_mb_s": 19.52, "fully_accelerated": False}
    with pytest.raises(ValueError, match="Inference \\(median\\)"):
        litert_benchmark.parse_litert_benchmark("ERROR benchmark_litert_model: Model file not found: x.tflite\n")


def test_cpu_info_fields():
    cpu = litert.cpu_info()
    assert isinstance(cpu["model"], str) and cpu["model"]
    assert isinstance(cpu["isa"], list) and all(isinstance(f, str) for f in cpu["isa"])
    assert set(cpu["isa"]) <= set(litert.X86_ISA) | set(litert.ARM_ISA.values())
    assert cpu["logical_cpus"] >= 1 and cpu["machine"]
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and " avx2 " in f" {cpuinfo.read_text()} ":
        assert {"avx2", "fma"} <= set(cpu["isa"])


def test_parse_cpuinfo_x86_and_arm():
    x86 = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Gold 6338\nflags\t\t: fpu sse4_1 avx fma avx2 avx512f " \
          "avx512_vnni avx512_bf16 amx_tile amx_int8\n\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) Gold 6338\n"
    assert litert.parse_cpuinfo(x86) == {"model": "Intel(R) Xeon(R) Gold 6338",
                                         "isa": ["sse4_1", "avx", "fma", "avx2", "avx512f", "avx512_vnni",
                                                 "avx512_bf16", "amx_tile", "amx_int8"]}
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes crc32 atomics fphp asimdhp cpuid " \
          "asimdrdm lrcpc dcpop asimddp i8mm bf16 sve sve2\nCPU implementer\t: 0x41\nCPU part\t: 0xd4f\n"
    got = litert.parse_cpuinfo(arm, machine="aarch64")
    assert got == {"model": "aarch64", "isa": ["asimd", "dotprod", "i8mm", "fp16", "bf16", "sve", "sve2"]}
