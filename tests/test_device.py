"""Where the models run (`--device auto|cpu|cuda`, models/device.py), tested on this machine, which has no GPU.

The selection logic and the CUDA code path's configuration run for real here: the real onnxruntime (a CPU-only build)
is asked for its CUDA provider, fails to initialise it, and the fallback is what a machine with a broken CUDA setup
sees. Only "which providers does this onnxruntime list" and "is a GPU in sight" are passed in (a Machine), so that a
CPU box takes the GPU box's path. The fp16 rule runs on the CPU provider with the same code a CUDA session uses.
One test needs a real GPU and runs only where `nvidia-smi` works.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from conftest import run_cli  # noqa: E402
from tiny_models import build_tiny_clip, sample_images  # noqa: E402

from pixsearch.config import Settings  # noqa: E402
from pixsearch.models import load_embedder  # noqa: E402
from pixsearch.models.device import (  # noqa: E402
    CPU,
    Device,
    DeviceUnavailableError,
    Machine,
    actor_device,
    actor_gpus,
    gpu_batch_size,
    parse_device,
)
from pixsearch.models.onnx_backend import (  # noqa: E402
    CPU_PROVIDER,
    CUDA_PROVIDER,
    FP16_MIN_COSINE,
    accelerated_session,
    create_session,
    cuda_providers,
    fp16_path,
    output_agreement,
    session_options,
)

# A machine like a GPU box with onnxruntime-gpu: a GPU in sight and the CUDA provider listed. Here the provider is
# not in the onnxruntime build, so it fails to initialise, as it does on a GPU box with a broken CUDA install.
GPU_BOX = Machine(gpu_visible=True, onnx_providers=(CUDA_PROVIDER, CPU_PROVIDER))


def nvidia_smi_works() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def photos():
    return list(sample_images().values())


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return output_agreement([a], [b])


# -- the setting -------------------------------------------------------------------------------------------------

def test_device_setting_is_checked_wherever_it_comes_from(tmp_path, monkeypatch):
    assert parse_device(" CUDA ") == "cuda" and parse_device(None) == "auto"
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        parse_device("gpu")
    assert Settings.load(home=tmp_path).device == "auto"
    (tmp_path / "config.toml").write_text('device = "cpu"\n')
    assert Settings.load(home=tmp_path).device == "cpu"
    monkeypatch.setenv("PIXSEARCH_DEVICE", "Cuda")
    assert Settings.load(home=tmp_path).device == "cuda"
    assert Settings.load(home=tmp_path, device="auto").device == "auto"
    monkeypatch.setenv("PIXSEARCH_DEVICE", "tpu")
    with pytest.raises(ValueError, match="setting device must be one of auto, cpu, cuda"):
        Settings.load(home=tmp_path)


# -- selection ---------------------------------------------------------------------------------------------------

def test_auto_without_a_gpu_in_sight_probes_nothing(home, embedder):
    """On a machine without a GPU (this one), `auto` is the CPU at once: a text query imports no torch (the
    probe of torch's CUDA would), and nothing is warned."""
    embedder.embed_texts(["warm up"])  # the session's MiniLM export is cached from here on
    script = (
        "import sys, logging; logging.basicConfig(level=logging.WARNING)\n"
        "from pixsearch.models import load_embedder\n"
        f"m = load_embedder('offline', {str(home / 'cache')!r}, device='auto')\n"
        "m.embed_texts(['a cat'])\n"
        "print(m.device.placement('onnx'), 'torch' in sys.modules, m.active_backends['text'])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["cpu", "False", "onnx"]
    assert "GPU" not in done.stderr


def test_auto_falls_back_to_the_cpu_with_one_warning(tiny_clip, photos, tmp_path, caplog, capfd):
    """A GPU in sight whose CUDA does not work (onnxruntime's provider fails to initialise, torch sees no device):
    `auto` embeds on the CPU, with exactly one warning for the process however many models, towers, backends and
    batches (one Device per setting is shared, as the engine's models share it), nothing from onnxruntime on
    stdout or stderr, and the same vectors as `cpu`."""
    texts = ["a photo of a cat", "a dog"]
    device = Device("auto", GPU_BOX)
    got = {}
    with caplog.at_level(logging.INFO, logger="pixsearch"):
        for backend in ("onnx", "torch"):
            model = load_embedder(tiny_clip.name, tmp_path, backend=backend, device=device)
            model.max_batch = 2  # three forward passes for five photos
            got[backend] = (model.embed_images(photos).vectors[model.field], model.embed_texts(texts))
            model.embed_texts(["another query"])
            assert model.active_backends == {"image": backend, "text": backend}
            assert model.images_per_batch() is None
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "the GPU cannot be used" in message and "embedding on the CPU" in message
    assert "CUDAExecutionProvider did not initialise" in message and "sees no CUDA device" in message
    assert len(device.fallbacks) == 2  # the onnx towers' reason, then the torch towers'
    captured = capfd.readouterr()
    assert "EP Error" not in captured.out and "CUDAExecutionProvider" not in captured.err + captured.out
    for backend in ("onnx", "torch"):
        cpu = load_embedder(tiny_clip.name, tmp_path, backend=backend, device="cpu")
        want_images, want_texts = cpu.embed_images(photos).vectors[cpu.field], cpu.embed_texts(texts)
        assert min_cosine(want_images, got[backend][0]) > 0.99999
        assert min_cosine(want_texts, got[backend][1]) > 0.99999


def test_cuda_where_it_does_not_work_is_one_clear_error(tiny_clip, tmp_path):
    with pytest.raises(DeviceUnavailableError, match="--device cuda: CUDA does not work on this machine") as raised:
        load_embedder(tiny_clip.name, tmp_path, device=Device("cuda", GPU_BOX))
    assert "CUDAExecutionProvider did not initialise" in str(raised.value)
    # the machine as it is: no CUDA provider in this onnxruntime, no GPU for torch
    with pytest.raises(DeviceUnavailableError, match="onnxruntime has no CUDA provider"):
        load_embedder(tiny_clip.name, tmp_path, device="cuda")


def test_index_with_device_cuda_without_a_gpu_fails_before_any_work(home, samples, embedder):
    """The CLI: one error line, no traceback, nothing embedded; the same folder indexes with --device cpu."""
    done = run_cli("index", str(samples), "--index", "device-cuda", "--device", "cuda", "--json", home=home)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--device cuda: CUDA does not work on this machine" in errors[0], done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    done = run_cli("index", str(samples), "--index", "device-cuda", "--device", "cpu", "--json", home=home)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["added"] == len(list(samples.iterdir())) and not report["failed"]


def test_onnx_session_on_a_provider_that_does_not_initialise_is_an_error(capfd):
    """onnxruntime alone would make a CPU session and say so on stderr (or print its fallback on stdout): here it
    is a RuntimeError the device turns into one warning or one error, and onnxruntime stays quiet."""
    from pixsearch.models.device import _probe_model

    with pytest.raises(RuntimeError, match="CUDAExecutionProvider did not initialise"):
        create_session(_probe_model(), threads=1, providers=cuda_providers())
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert create_session(_probe_model(), threads=1).get_providers() == [CPU_PROVIDER]


def test_cuda_session_configuration():
    """What a CUDA session is made with: the CUDA provider first with its options, the CPU after it (for nodes
    without a CUDA kernel); the session options as on the CPU."""
    providers = cuda_providers()
    assert [p[0] if isinstance(p, tuple) else p for p in providers] == [CUDA_PROVIDER, CPU_PROVIDER]
    options = providers[0][1]
    assert options["device_id"] == 0
    assert options["cudnn_conv_algo_search"] == "HEURISTIC"
    assert options["arena_extend_strategy"] == "kSameAsRequested"
    opts = session_options(threads=2)
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


# -- fp16 --------------------------------------------------------------------------------------------------------

def test_fp16_copy_is_used_when_it_agrees_with_fp32(tiny_clip, photos, tmp_path):
    """The CUDA path's precision rule, run on the CPU provider: the tiny CLIP's image and text towers agree in fp16
    (cosine >= 0.999), so their fp16 copies (cached beside the fp32 exports) are used."""
    from pixsearch.models.onnx_towers import CHECK_TEXTS, IMAGE_INPUT

    model = load_embedder(tiny_clip.name, tmp_path, device="cpu")
    model.preload()
    pixels = np.stack([model.prepare_image(p).pixels for p in photos])
    session, precision = accelerated_session(model.image_onnx_path, {IMAGE_INPUT: pixels}, [CPU_PROVIDER], 1)
    assert precision == "fp16" and fp16_path(model.image_onnx_path).is_file()
    assert session.get_inputs()[0].type == "tensor(float)"  # fed fp32 like the fp32 tower
    reference = create_session(model.image_onnx_path).run(None, {IMAGE_INPUT: pixels})
    assert output_agreement(reference, session.run(None, {IMAGE_INPUT: pixels})) >= FP16_MIN_COSINE
    feeds = model.tokenize(list(CHECK_TEXTS))
    _, precision = accelerated_session(model.text_onnx_path, feeds, [CPU_PROVIDER], 1)
    assert precision == "fp16"
    _, precision = accelerated_session(model.image_onnx_path, {IMAGE_INPUT: pixels}, [CPU_PROVIDER], 1, fp16=False)
    assert precision == "fp32"


def test_fp16_is_refused_for_a_tower_that_fp16_cannot_hold(tmp_path):
    """A real model with a weight beyond fp16's range (65504), which the conversion clamps: its fp16 copy's outputs
    point elsewhere (cosine ~0.98 to fp32), so fp32 is kept and the session returned gives fp32's results.
    (On the CPU provider onnxruntime computes most fp16 nodes in fp32, so only such weights show here; on a GPU the
    arithmetic itself is fp16 too, which the GPU test checks.)"""
    from onnx import TensorProto, helper, numpy_helper, save

    weights = np.array([[1e5, 0.0], [0.0, 1.0]], dtype=np.float32)
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
                              initializer=[numpy_helper.from_array(weights, "w")])
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_model.ir_version = 8
    path = tmp_path / "big.onnx"
    save(onnx_model, str(path))
    x = np.array([[1.0, 1e4], [2.0, 3e4]], dtype=np.float32)
    session, precision = accelerated_session(path, {"x": x}, [CPU_PROVIDER], 1)
    assert precision == "fp32"
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ weights, rtol=1e-6)
    half = create_session(fp16_path(path)).run(None, {"x": x})[0]  # what the check saw
    assert output_agreement([x @ weights], [half]) < FP16_MIN_COSINE


# -- sizing and Ray ----------------------------------------------------------------------------------------------

def test_gpu_batch_size_rule():
    gib = 1 << 30
    # 224 x 224: 64 x 602 KB = 38.5 MB an image; half of 8 GiB fits 111 -> 64
    assert gpu_batch_size(8 * gib, (224, 224)) == 64
    assert gpu_batch_size(8 * gib, (224, 224), views_per_image=2) == 32
    assert gpu_batch_size(8 * gib, (336, 336)) == 32
    assert gpu_batch_size(80 * gib, (224, 224)) == 256  # the cap
    assert gpu_batch_size(50 << 20, (224, 224)) == 1  # never below one
    assert gpu_batch_size(-5, (224, 224)) == 1


def test_actor_gpus_and_device():
    assert actor_gpus("cpu", 8) == 0
    assert actor_gpus("auto", 0) == 0 and actor_gpus("auto", 2) == 1.0
    assert actor_gpus("cuda", 1, actors_per_gpu=4) == 0.25
    with pytest.raises(DeviceUnavailableError, match="the Ray cluster has no GPUs"):
        actor_gpus("cuda", 0)
    with pytest.raises(ValueError):
        actor_gpus("gpu", 1)
    assert actor_device("auto", 0) == "cpu" and actor_device("cuda", 0.5) == "cuda" and actor_device(None, 1) == "auto"


def test_cpu_setting_never_looks_for_a_gpu():
    device = Device("cpu", GPU_BOX)
    assert device.placement("onnx") == CPU and device.placement("torch") == CPU
    assert device.fallbacks == []


# -- a real GPU ----------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not nvidia_smi_works(), reason="needs an NVIDIA GPU (nvidia-smi)")
@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_on_a_real_gpu(tiny_clip, photos, tmp_path, backend, home):
    """Where a GPU works: `cuda` runs both towers on it (onnxruntime-gpu, or torch on CUDA), vectors within the fp16
    rule of the CPU's, and images per batch sized from its memory."""
    cpu = load_embedder(tiny_clip.name, tmp_path, backend=backend, device="cpu")
    gpu = load_embedder(tiny_clip.name, tmp_path, backend=backend, device="cuda")
    assert gpu.images_per_batch() >= 1
    got = gpu.embed_images(photos).vectors[gpu.field]
    texts = gpu.embed_texts(["a photo of a cat", "a dog"])
    assert all(v.startswith(("onnx-cuda", "torch-cuda")) for v in gpu.active_backends.values()), gpu.active_backends
    assert min_cosine(cpu.embed_images(photos).vectors[cpu.field], got) >= FP16_MIN_COSINE
    assert min_cosine(cpu.embed_texts(["a photo of a cat", "a dog"]), texts) >= FP16_MIN_COSINE
    offline_cpu = load_embedder("offline", home / "cache", backend=backend, device="cpu")
    offline_gpu = load_embedder("offline", home / "cache", backend=backend, device="cuda")
    a = offline_cpu.embed_images(photos).vectors["image"]
    b = offline_gpu.embed_images(photos).vectors["image"]
    assert min_cosine(a, b) >= FP16_MIN_COSINE
    assert offline_gpu.active_backends["image"].startswith(("onnx-cuda", "torch-cuda"))
