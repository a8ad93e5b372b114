"""CLIP-class embedders (transformers CLIP/SigLIP, OpenCLIP) on tiny random checkpoints built by tests/tiny_models.py.

Every check compares with the reference library on the same inputs: image preprocessing with transformers' image
processors and open_clip's transform, tokens with transformers' and open_clip's tokenizers, vectors with
get_image_features/get_text_features and encode_image/encode_text, for the onnx and torch backends.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage.data")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
import open_clip  # noqa: E402  (installed by make: the clip extra)

sys.path.insert(0, str(Path(__file__).parent))

from helpers import capabilities_in_fresh_process, capabilities_json  # noqa: E402
from tiny_models import (  # noqa: E402
    build_tiny_clip,
    build_tiny_openclip,
    build_tiny_openclip_repo,
    build_tiny_siglip,
    fake_hf_cache,
    sample_images,
)

from pixsearch.models import Embedder, ModelNotAvailableError, load_embedder, model_capabilities  # noqa: E402
from pixsearch.models.clip import PixelRecipe  # noqa: E402
from pixsearch.models.onnx_towers import DualTowerEmbedder  # noqa: E402
from pixsearch.models.openclip import TOKENIZER_CHECK_TEXTS, open_clip_recipe  # noqa: E402

TEXTS = [
    "a photo of a cat",
    "A Photo Of A CAT!!!  on the\tsofa",
    "Zero-shot, naïve café: 東京! 🙂 it's",
    "&amp; html &quot;entities&quot;",
    "long " * 100,
    "",
]
BACKENDS = ["onnx", "torch"]


def unit(x) -> np.ndarray:
    x = x if isinstance(x, np.ndarray) else getattr(x, "pooler_output", x).detach().numpy()
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum(unit(a) * unit(b), axis=1).min())


def assert_unit_and_close(got: np.ndarray, want_unit: np.ndarray, cosine: float) -> None:
    """The embedder's own vectors, not re-normalised: each of unit length, and each within the distance of the
    reference's normalised vector that a cosine of `cosine` allows between unit vectors (|a - b|^2 = 2 - 2 cos)."""
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    distance = np.linalg.norm(got - want_unit, axis=1)
    assert distance.max() <= np.sqrt(2 * (1 - cosine)) + 1e-6, distance


@pytest.fixture(scope="module")
def images():
    return sample_images()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("ckpt") / "tiny-clip")


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory):
    return build_tiny_siglip(tmp_path_factory.mktemp("ckpt") / "tiny-siglip")


@pytest.fixture(scope="module")
def tiny_openclip(tmp_path_factory):
    return build_tiny_openclip(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def clip_embedders(tiny_clip, cache_dir):
    return {b: load_embedder(tiny_clip.name, cache_dir, backend=b) for b in BACKENDS}


@pytest.fixture(scope="module")
def siglip_embedders(tiny_siglip, cache_dir):
    return {b: load_embedder(tiny_siglip.name, cache_dir, backend=b) for b in BACKENDS}


@pytest.fixture(scope="module")
def openclip_embedders(tiny_openclip, cache_dir):
    return {b: load_embedder(tiny_openclip.name, cache_dir, backend=b) for b in BACKENDS}


# -- preprocessing -------------------------------------------------------------------------------------------------


def _hf_processors(kind: str, **kwargs):
    if kind == "clip":
        from transformers import CLIPImageProcessor
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as Pil
        return CLIPImageProcessor(**kwargs), Pil(**kwargs)
    from transformers import SiglipImageProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil as Pil
    return SiglipImageProcessor(**kwargs), Pil(**kwargs)


@pytest.mark.parametrize(
    "kind, kwargs",
    [
        ("clip", {}),  # openai/clip-vit-*: shortest edge 224, crop 224, bicubic
        ("clip", {"size": {"shortest_edge": 64}, "crop_size": {"height": 48, "width": 56}, "resample": 2}),
        ("siglip", {}),  # google/siglip-*: squash to 224x224, mean/std 0.5
        ("siglip", {"size": {"height": 40, "width": 72}, "resample": 2}),
    ],
)
def test_hf_preprocessing_equals_image_processors(images, kind, kwargs):
    """Pillow+numpy pixels equal transformers' PIL processor to float rounding, and its default (torchvision)
    processor to a fraction of a grey level on average (<= 0.2 measured; one or two levels at most when only
    shrinking, up to 5 at sharp edges when one axis is enlarged and the other shrunk): Pillow resamples in two
    fixed-point passes rounded to 8 bits in between, torchvision in float. Same filters, same geometry."""
    default, pil = _hf_processors(kind, **kwargs)
    recipe = PixelRecipe.from_hf_config(json.loads(default.to_json_string()), kind)
    one_level = 1 / 255 / min(default.image_std)
    for name, img in images.items():
        mine = recipe.prepare(img)
        want_pil = pil(img, return_tensors="np")["pixel_values"][0]
        want_tv = default(img, return_tensors="np")["pixel_values"][0]
        assert mine.shape == want_pil.shape == want_tv.shape, name
        assert mine.dtype == np.float32
        np.testing.assert_allclose(mine, want_pil, atol=2e-5, err_msg=name)
        diff = np.abs(mine - want_tv)
        assert diff.max() <= 5.5 * one_level, (name, diff.max() / one_level)
        assert diff.mean() <= 0.25 * one_level, (name, diff.mean() / one_level)


def test_hf_legacy_integer_sizes():
    """Old preprocessor configs say "size": 224, "crop_size": 224 (openai/clip-vit-base-patch32 still does)."""
    recipe = PixelRecipe.from_hf_config({"size": 224, "crop_size": 224, "do_center_crop": True}, "clip")
    assert recipe.resize == "shortest_edge" and recipe.size == (224,) and recipe.crop == (224, 224)


@pytest.mark.parametrize(
    "cfg",
    [
        {"size": 64},
        {"size": 64, "interpolation": "bilinear"},
        {"size": 64, "resize_mode": "longest", "fill_color": 0},
        {"size": 64, "resize_mode": "squash", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
        {"size": (48, 80)},
        {"size": 63},  # odd: CenterCrop rounds its offset
    ],
)
def test_openclip_preprocessing_equals_transform(images, cfg):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    full = {**PreprocessCfg().__dict__, **cfg}
    transform = image_transform_v2(PreprocessCfg(**full), is_train=False)
    recipe = open_clip_recipe(full)
    for name, img in images.items():
        want = transform(img).numpy()
        np.testing.assert_allclose(recipe.prepare(img), want, atol=1e-6, err_msg=name)


def test_openclip_config_without_mean_and_std_uses_open_clips_defaults(images):
    """Hub configs may leave them out: open_clip then uses OpenAI's mean and std (not the mean twice)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    transform = image_transform_v2(PreprocessCfg(size=64), is_train=False)
    recipe = open_clip_recipe({"size": 64})
    for name, img in images.items():
        np.testing.assert_allclose(recipe.prepare(img), transform(img).numpy(), atol=1e-6, err_msg=name)


# -- transformers CLIP -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_clip_reference(tiny_clip):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    folder = str(tiny_clip.path)
    return CLIPModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder), \
        AutoImageProcessor.from_pretrained(folder)


def test_clip_protocol_and_identity(clip_embedders, tiny_clip):
    emb = clip_embedders["onnx"]
    assert isinstance(emb, Embedder)
    assert emb.name == f"clip:{tiny_clip.path.resolve()}"
    assert re.fullmatch(r"clip:tiny-clip@[0-9a-f]{12}", emb.model_id)
    assert emb.spaces["clip"].dims == 16 and emb.spaces["clip"].metric == "cosine"
    assert emb.spaces["clip"].model_id == emb.model_id == clip_embedders["torch"].model_id
    assert emb.text_space == emb.image_space == "clip"
    assert emb.photo_fields == () and emb.relevance is None
    again = load_embedder(emb.name, emb.cache_dir)  # the name loads the same model
    assert again.model_id == emb.model_id


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_equals_transformers(clip_embedders, hf_clip_reference, images, backend):
    model, tokenizer, processor = hf_clip_reference
    emb = clip_embedders[backend]
    with torch.inference_mode():
        pixels = processor(list(images.values()), return_tensors="pt")["pixel_values"]
        want_images = unit(model.get_image_features(pixel_values=pixels))
        tokens = tokenizer(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        want_texts = unit(model.get_text_features(**tokens))
    got_images = emb.embed_images(list(images.values())).vectors["clip"]
    got_texts = emb.embed_texts(TEXTS)
    assert got_images.dtype == got_texts.dtype == np.float32
    assert min_cosine(got_images, want_images) >= 0.999
    assert min_cosine(got_texts, want_texts) >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got_texts, axis=1), 1, atol=1e-5)
    assert_unit_and_close(got_images, want_images, 0.999)
    assert_unit_and_close(got_texts, want_texts, 0.9999)
    assert emb.active_backends == {"image": backend, "text": backend}


def test_clip_tokens_equal_transformers_tokenizer(clip_embedders, hf_clip_reference):
    """Same ids as CLIPTokenizer (truncated at 77 with <|endoftext|> last); batches padded to their longest."""
    _, tokenizer, _ = hf_clip_reference
    mine = clip_embedders["onnx"].tokenize(TEXTS)["input_ids"]
    want = tokenizer(TEXTS, padding=True, truncation=True, max_length=77, return_tensors="np")["input_ids"]
    np.testing.assert_array_equal(mine, want)
    assert mine.shape[1] == 77  # the long text


def test_clip_from_vocab_and_merges_only(tmp_path, tiny_clip, hf_clip_reference, cache_dir):
    """A folder without tokenizer.json (older repos) builds CLIP's BPE from vocab.json + merges.txt."""
    folder = tmp_path / "bpe-only"
    shutil.copytree(tiny_clip.path, folder)
    (folder / "tokenizer.json").unlink()
    emb = load_embedder(f"clip:{folder}", cache_dir)
    _, tokenizer, _ = hf_clip_reference
    want = tokenizer(TEXTS, padding=True, truncation=True, max_length=77, return_tensors="np")["input_ids"]
    np.testing.assert_array_equal(emb.tokenize(TEXTS)["input_ids"], want)


def test_batches_equal_singles(clip_embedders, images, tiny_clip, cache_dir):
    emb = clip_embedders["onnx"]
    imgs = list(images.values())
    batch = emb.embed_images(imgs).vectors["clip"]
    singles = np.concatenate([emb.embed_images([img]).vectors["clip"] for img in imgs])
    small = DualTowerEmbedder(emb.source, cache_dir, max_batch=2, text_batch=2).embed_images(imgs).vectors["clip"]
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    np.testing.assert_allclose(batch, small, atol=1e-5)
    texts = emb.embed_texts(TEXTS)
    np.testing.assert_allclose(texts, np.concatenate([emb.embed_texts([t]) for t in TEXTS]), atol=1e-5)
    prepared = [emb.prepare_image(img) for img in imgs]
    np.testing.assert_allclose(emb.embed_images(prepared).vectors["clip"], batch, atol=1e-6)
    assert emb.embed_images([]).vectors["clip"].shape == (0, 16)
    assert emb.embed_texts([]).shape == (0, 16)


def test_prepared_pixels_of_another_model_are_refused(clip_embedders, siglip_embedders, images):
    prepared = siglip_embedders["onnx"].prepare_image(images["coffee"])
    with pytest.raises(ValueError, match="another model"):
        clip_embedders["onnx"].embed_images([prepared])


def test_concurrent_first_use_is_safe(tiny_clip, cache_dir, images, clip_embedders):
    """Many threads hitting a fresh embedder: one load, and every result equal to the sequential one."""
    want_img = clip_embedders["onnx"].embed_images([images["chelsea"]]).vectors["clip"]
    want_txt = clip_embedders["onnx"].embed_texts(["a cat"])
    fresh = load_embedder(tiny_clip.name, cache_dir)
    results, errors = [], []

    def work(i):
        try:
            if i % 2:
                results.append(("img", fresh.embed_images([images["chelsea"]]).vectors["clip"]))
            else:
                results.append(("txt", fresh.embed_texts(["a cat"])))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 12
    for kind, vec in results:
        np.testing.assert_allclose(vec, want_img if kind == "img" else want_txt, atol=1e-6)


def test_onnx_exports_are_cached_and_keyed_by_weights(tmp_path, tiny_clip, clip_embedders, images):
    emb = clip_embedders["onnx"]
    assert emb.image_onnx_path.is_file() and emb.text_onnx_path.is_file()
    mtime = emb.image_onnx_path.stat().st_mtime_ns
    again = load_embedder(tiny_clip.name, emb.cache_dir)
    again.embed_images([images["coffee"]])
    assert again.image_onnx_path == emb.image_onnx_path and emb.image_onnx_path.stat().st_mtime_ns == mtime
    # other weights (a copy with a different seed) -> another model id and other export files
    other = build_tiny_clip(tmp_path / "tiny-clip", seed=1)
    changed = load_embedder(other.name, emb.cache_dir)
    assert changed.model_id != emb.model_id and changed.image_onnx_path != emb.image_onnx_path


def test_int8_image_tower(tiny_clip, cache_dir, images, clip_embedders):
    emb = load_embedder(tiny_clip.name, cache_dir, backend="onnx-int8")
    vectors = emb.embed_images(list(images.values())).vectors["clip"]
    assert emb.active_backends["image"] == "onnx-int8" and emb.image_int8_onnx_path.is_file()
    assert emb.model_id == clip_embedders["onnx"].model_id  # same space: queries stay compatible
    report = emb.int8_agreement(list(images.values()))
    print("int8 agreement (tiny random CLIP):", report)
    assert report["n"] == len(images) and 0.9 <= report["min_cosine"] <= report["mean_cosine"] <= 1.0 + 1e-6
    fp32 = clip_embedders["onnx"].embed_images(list(images.values())).vectors["clip"]
    assert min_cosine(vectors, fp32) == pytest.approx(report["min_cosine"], abs=1e-5)
    # text queries are not quantised
    np.testing.assert_allclose(emb.embed_texts(TEXTS), clip_embedders["onnx"].embed_texts(TEXTS), atol=1e-6)


# -- missing files, the Hugging Face cache ------------------------------------------------------------------------


def test_missing_files_are_named_with_the_download_command(tmp_path, tiny_clip, cache_dir):
    folder = tmp_path / "incomplete"
    shutil.copytree(tiny_clip.path, folder)
    (folder / "model.safetensors").unlink()
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(ModelNotAvailableError) as info:
        load_embedder(f"clip:{folder}", cache_dir)
    message = str(info.value)
    assert str(folder) in message
    assert "model.safetensors or pytorch_model.bin" in message and "preprocessor_config.json" in message
    assert "hf download" in message and f"--local-dir {folder}" in message
    assert "config.json:" not in message  # present files are not listed


def test_repo_id_missing_from_cache(tmp_path, monkeypatch, cache_dir):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError) as info:
        load_embedder("clip:openai/clip-vit-base-patch32", cache_dir)
    message = str(info.value)
    assert str(tmp_path / "hub" / "models--openai--clip-vit-base-patch32") in message
    assert "hf download openai/clip-vit-base-patch32 config.json model.safetensors preprocessor_config.json " \
           "tokenizer.json tokenizer_config.json special_tokens_map.json" in message


def test_repo_id_from_local_hf_cache_offline(tmp_path, monkeypatch, tiny_clip, clip_embedders, images):
    hub = tmp_path / "hub"
    fake_hf_cache(hub, "pixsearch-test/tiny-clip", tiny_clip.path)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    emb = load_embedder("clip:pixsearch-test/tiny-clip", tmp_path / "cache")
    assert emb.name == "clip:pixsearch-test/tiny-clip"
    assert emb.model_id.startswith("clip:pixsearch-test/tiny-clip@")
    # the hash names the content: same as the folder's, though paths and mtimes differ
    assert emb.model_id.rpartition("@")[2] == clip_embedders["onnx"].model_id.rpartition("@")[2]
    np.testing.assert_allclose(emb.embed_texts(TEXTS), clip_embedders["onnx"].embed_texts(TEXTS), atol=1e-6)
    np.testing.assert_allclose(emb.embed_images([images["coffee"]]).vectors["clip"],
                               clip_embedders["onnx"].embed_images([images["coffee"]]).vectors["clip"], atol=1e-6)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # loading switched downloads off


# -- SigLIP ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_siglip_equals_transformers(siglip_embedders, tiny_siglip, images, backend):
    from transformers import AutoImageProcessor, SiglipModel

    emb = siglip_embedders[backend]
    assert emb.text_space == emb.image_space == "siglip" and emb.spaces["siglip"].dims == 32
    assert emb.model_id.startswith("siglip:tiny-siglip@")
    model = SiglipModel.from_pretrained(str(tiny_siglip.path)).eval()
    processor = AutoImageProcessor.from_pretrained(str(tiny_siglip.path))
    ids = emb.tokenize(TEXTS)["input_ids"]
    assert ids.shape == (len(TEXTS), 16) and (ids[:, -1] == 1).all()  # padded with </s> to max_length
    with torch.inference_mode():
        pixels = processor(list(images.values()), return_tensors="pt")["pixel_values"]
        want_images = unit(model.get_image_features(pixel_values=pixels))
        want_texts = unit(model.get_text_features(input_ids=torch.from_numpy(ids)))  # no mask, as trained
    got_images, got_texts = emb.embed_images(list(images.values())).vectors["siglip"], emb.embed_texts(TEXTS)
    assert min_cosine(got_images, want_images) >= 0.999
    assert min_cosine(got_texts, want_texts) >= 0.9999
    assert_unit_and_close(got_images, want_images, 0.999)
    assert_unit_and_close(got_texts, want_texts, 0.9999)


# -- OpenCLIP ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_openclip_equals_open_clip(openclip_embedders, tiny_openclip, images, backend):
    emb = openclip_embedders[backend]
    assert emb.text_space == emb.image_space == "clip" and emb.spaces["clip"].dims == 16
    assert emb.name == tiny_openclip.name
    model, _, preprocess = open_clip.create_model_and_transforms("pixsearch-tiny-ViT",
                                                                 pretrained=str(tiny_openclip.path))
    tokenizer = open_clip.get_tokenizer("pixsearch-tiny-ViT")
    with torch.inference_mode():
        want_images = model.eval().encode_image(torch.stack([preprocess(i) for i in images.values()]),
                                                normalize=True).numpy()
        want_texts = model.encode_text(tokenizer(TEXTS), normalize=True).numpy()
    got_images, got_texts = emb.embed_images(list(images.values())).vectors["clip"], emb.embed_texts(TEXTS)
    assert min_cosine(got_images, want_images) >= 0.9999
    assert min_cosine(got_texts, want_texts) >= 0.9999
    assert_unit_and_close(got_images, want_images, 0.9999)
    assert_unit_and_close(got_texts, want_texts, 0.9999)
    assert emb.active_backends == {"image": backend, "text": backend}


def test_openclip_tokenizer_converted_id_for_id(openclip_embedders):
    tokenizer = open_clip.get_tokenizer("pixsearch-tiny-ViT")
    texts = [*TOKENIZER_CHECK_TEXTS, *TEXTS, "Ünïcödé ÀÉÎÕÜ ß ﬁ", "x" * 500, "a, b; c: d! e? (f) [g] {h}"]
    mine = openclip_embedders["onnx"].tokenize(texts)["input_ids"]
    np.testing.assert_array_equal(mine, tokenizer(texts).numpy())
    assert mine.shape == (len(texts), 77)


def test_openclip_tag_from_local_hf_cache(tmp_path, monkeypatch, tiny_openclip, openclip_embedders):
    """A pretrained tag resolves to its hub repo in the local HF cache (open_clip's default file names)."""
    from open_clip import pretrained

    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copyfile(tiny_openclip.path, repo / "open_clip_model.safetensors")
    fake_hf_cache(tmp_path / "hub", "pixsearch-test/tiny-openclip", repo)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setitem(pretrained._PRETRAINED, "pixsearch-tiny-ViT",
                        {"tiny": pretrained._pcfg(hf_hub="pixsearch-test/tiny-openclip/")})
    emb = load_embedder("open_clip:pixsearch-tiny-ViT:tiny", tmp_path / "cache")
    assert emb.model_id.startswith("clip:pixsearch-tiny-ViT:tiny@")
    np.testing.assert_allclose(emb.embed_texts(TEXTS), openclip_embedders["onnx"].embed_texts(TEXTS), atol=1e-6)
    with pytest.raises(ModelNotAvailableError, match="hf download pixsearch-test/other"):
        monkeypatch.setitem(pretrained._PRETRAINED, "pixsearch-tiny-ViT",
                            {"gone": pretrained._pcfg(hf_hub="pixsearch-test/other/")})
        load_embedder("open_clip:pixsearch-tiny-ViT:gone", tmp_path / "cache")


def test_openclip_unknown_arch_and_checkpoint(cache_dir, tiny_openclip):
    with pytest.raises(ModelNotAvailableError, match="no architecture"):
        load_embedder("open_clip:No-Such-Arch:/x.pt", cache_dir)
    with pytest.raises(ModelNotAvailableError, match="not a pretrained tag"):
        load_embedder("open_clip:pixsearch-tiny-ViT:/no/such/file.safetensors", cache_dir)


def test_openclip_repo_layout_local_dir_and_hf_hub(tmp_path, monkeypatch, images):
    """open_clip repos (open_clip_config.json + weights) by folder and by repo id in the local HF cache, with the
    repo's own preprocessing (squash to size, mean/std 0.5, bilinear) applied as open_clip applies it."""
    pp = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear", "resize_mode": "squash"}
    tiny = build_tiny_openclip_repo(tmp_path / "repo", seed=3, preprocess_cfg=pp)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny.path}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tiny.path}")
    with torch.inference_mode():
        want_images = model.eval().encode_image(torch.stack([preprocess(i) for i in images.values()]),
                                                normalize=True).numpy()
        want_texts = model.encode_text(tokenizer(TEXTS), normalize=True).numpy()
    local = load_embedder(tiny.name, tmp_path / "cache")
    got_images, got_texts = local.embed_images(list(images.values())).vectors["clip"], local.embed_texts(TEXTS)
    assert min_cosine(got_images, want_images) >= 0.9999
    assert min_cosine(got_texts, want_texts) >= 0.9999
    assert_unit_and_close(got_images, want_images, 0.9999)
    assert_unit_and_close(got_texts, want_texts, 0.9999)

    fake_hf_cache(tmp_path / "hub", "pixsearch-test/tiny-openclip-repo", tiny.path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    hub = load_embedder("open_clip:hf-hub:pixsearch-test/tiny-openclip-repo", tmp_path / "cache")
    assert hub.model_id.startswith("clip:pixsearch-test/tiny-openclip-repo@")
    assert hub.model_id.rpartition("@")[2] == local.model_id.rpartition("@")[2]
    np.testing.assert_allclose(hub.embed_texts(TEXTS), local.embed_texts(TEXTS), atol=1e-6)


def test_siglip_v1_sentencepiece_only_is_explained(tmp_path, tiny_siglip, cache_dir):
    folder = tmp_path / "siglip-v1"
    shutil.copytree(tiny_siglip.path, folder)
    (folder / "tokenizer.json").rename(folder / "spiece.model")  # stands in for a SentencePiece model
    with pytest.raises(ModelNotAvailableError, match="sentencepiece"):
        load_embedder(f"clip:{folder}", cache_dir)


def test_downloads_only_when_explicitly_allowed(monkeypatch):
    from pixsearch.models.hub import downloads_allowed

    for value, allowed in [(None, False), ("1", False), ("", False), ("0", True), ("false", True)]:
        if value is None:
            monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        else:
            monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert downloads_allowed() is allowed, value


# -- no torch for queries in a fresh process ---------------------------------------------------------------------

_FRESH = r"""
import json, sys
import numpy as np
from PIL import Image
from pixsearch.models import load_embedder
emb = load_embedder(sys.argv[1], sys.argv[2])
texts = emb.embed_texts(["a photo of a cat", "Zero-shot, naïve café"])
after_text = "torch" in sys.modules
img = emb.embed_images([Image.open(sys.argv[3])]).vectors[emb.image_space]
print(json.dumps({"torch_after_text": after_text, "torch_after_image": "torch" in sys.modules,
                  "open_clip": "open_clip" in sys.modules, "transformers": "transformers" in sys.modules,
                  "texts": texts.tolist(), "image": img.tolist(), "backends": emb.active_backends}))
"""


@pytest.mark.parametrize("which", ["clip", "openclip"])
def test_fresh_process_with_cached_exports_imports_no_torch(which, clip_embedders, openclip_embedders, images,
                                                            tmp_path):
    emb = {"clip": clip_embedders, "openclip": openclip_embedders}[which]["onnx"]
    photo = tmp_path / "coffee.png"
    images["coffee"].save(photo)
    emb.embed_images([images["coffee"]])  # warm both exports
    import pixsearch

    env = dict(os.environ, PYTHONPATH=str(Path(pixsearch.__file__).parents[1]))  # this checkout's pixsearch
    out = subprocess.run([sys.executable, "-c", _FRESH, emb.name, str(emb.cache_dir), str(photo)],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["torch_after_text"] is False and result["torch_after_image"] is False, result
    assert result["open_clip"] is False and result["transformers"] is False
    assert result["backends"] == {"image": "onnx", "text": "onnx"}
    np.testing.assert_allclose(result["texts"], emb.embed_texts(["a photo of a cat", "Zero-shot, naïve café"]),
                               atol=1e-6)
    np.testing.assert_allclose(result["image"], emb.embed_images([images["coffee"].convert("RGB")])
                               .vectors[emb.image_space], atol=1e-5)


# -- capabilities without loading ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def every_family(clip_embedders, siglip_embedders, openclip_embedders):
    return {"clip": clip_embedders["onnx"], "siglip": siglip_embedders["onnx"], "openclip": openclip_embedders["onnx"]}


@pytest.mark.parametrize("which", ["clip", "siglip", "openclip"])
def test_capabilities_without_loading_equal_the_embedders(which, every_family, cache_dir, tmp_path):
    emb = every_family[which]
    declared = model_capabilities(emb.name, cache_dir)
    assert declared == emb.capabilities
    assert (declared.name, declared.model_id, declared.spaces) == (emb.name, emb.model_id, emb.spaces)
    assert declared.text_space == declared.image_space == emb.text_space == emb.image_space
    assert declared.dims == {emb.text_space: {"clip": 16, "siglip": 32, "openclip": 16}[which]}
    assert declared.photo_fields == emb.photo_fields == () and declared.relevance == emb.relevance
    assert (declared.relevance is not None) == (which == "siglip")
    assert declared.files and all(Path(p).is_file() for p in declared.files)
    # a cache that never saw the model (no content digests, no open_clip manifest) declares the same
    assert model_capabilities(emb.name, tmp_path / "cold-cache") == declared


def test_capabilities_import_no_torch_and_no_runtime(every_family, cache_dir):
    """A fresh process learns every family's capabilities from their files (with open_clip's manifest cached, as
    after any first use) without importing torch, onnxruntime, transformers or open_clip."""
    names = [emb.name for emb in every_family.values()]
    found, imported = capabilities_in_fresh_process(names, cache_dir)
    assert imported == [], imported
    assert found == [capabilities_json(emb.capabilities) for emb in every_family.values()]


_FRESH_CATALOGUE = r"""
import json, sys
from pathlib import Path
from helpers import HEAVY_MODULES
from pixsearch.models.catalog import catalogue
infos = catalogue(Path(sys.argv[1]), sys.argv[3:], hub_cache=Path(sys.argv[2]))
print(json.dumps({"infos": [i.to_json() for i in infos], "imported": [m for m in HEAVY_MODULES if m in sys.modules]}))
"""


def test_models_list_loads_no_model(every_family, cache_dir, tmp_path):
    import pixsearch

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(pixsearch.__file__).parents[1]),
                                                        str(Path(__file__).parent)]))
    names = [emb.name for emb in every_family.values()]
    out = subprocess.run([sys.executable, "-c", _FRESH_CATALOGUE, str(cache_dir), str(tmp_path / "no-hub"), *names],
                         capture_output=True, text=True, timeout=120, env=env, check=False)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["imported"] == [], result["imported"]
    listed = {info["name"]: info for info in result["infos"]}
    assert list(listed) == ["offline", *names]
    for emb in every_family.values():
        info = listed[emb.name]
        files = emb.capabilities.files
        assert info["available"] and info["model_id"] == emb.model_id and info["dims"] == {emb.text_space: emb.dims}
        assert info["location"] == str(files[0].parent) and info["size_bytes"] == sum(p.stat().st_size for p in files)


def test_siglip_states_its_relevance_from_its_own_calibration(siglip_embedders, tiny_siglip, clip_embedders):
    import math

    from safetensors.numpy import load_file

    weights = load_file(str(tiny_siglip.path / "model.safetensors"))
    scale, bias = math.exp(float(weights["logit_scale"].reshape(-1)[0])), float(weights["logit_bias"].reshape(-1)[0])
    relevance = siglip_embedders["onnx"].relevance
    assert relevance is not None
    probability = 1 / (1 + math.exp(-(scale * relevance.threshold + bias)))
    assert probability == pytest.approx(0.01, rel=1e-6)
    assert clip_embedders["onnx"].relevance is None
