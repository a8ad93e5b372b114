"""Checkpoints saved by the installed transformers' own save_pretrained (model and processor): since transformers 5 a
CLIPProcessor / SiglipProcessor writes its image processor inside processor_config.json and no
preprocessor_config.json. clip: loads them, from a folder and from the Hugging Face cache layout, and its vectors
equal the reference's (as tests/test_clip_models.py checks for the older layout)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage.data")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import build_tiny_clip, build_tiny_siglip, fake_hf_cache, sample_images  # noqa: E402

from pixsearch.models import ModelNotAvailableError, load_embedder  # noqa: E402

TEXTS = ["a photo of a cat", "Zero-shot, naïve café: 東京!", "long " * 100]


def unit(x) -> np.ndarray:
    x = x if isinstance(x, np.ndarray) else getattr(x, "pooler_output", x).detach().numpy()
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def resave(source: Path, target: Path, family: str) -> Path:
    """Load a tiny checkpoint and save model and processor again with this transformers' save_pretrained."""
    from transformers import (CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer, PreTrainedTokenizerFast,
                              SiglipImageProcessor, SiglipModel, SiglipProcessor)

    if family == "clip":
        CLIPModel.from_pretrained(str(source)).save_pretrained(target)
        processor = CLIPProcessor(image_processor=CLIPImageProcessor.from_pretrained(str(source)),
                                  tokenizer=CLIPTokenizer.from_pretrained(str(source)))
    else:
        SiglipModel.from_pretrained(str(source)).save_pretrained(target)
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(source / "tokenizer.json"), model_max_length=16,
                                            pad_token="</s>", eos_token="</s>", unk_token="<unk>")
        processor = SiglipProcessor(image_processor=SiglipImageProcessor.from_pretrained(str(source)),
                                    tokenizer=tokenizer)
    processor.save_pretrained(target)
    return target


@pytest.fixture(scope="module", params=["clip", "siglip"])
def saved(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    builder = build_tiny_clip if request.param == "clip" else build_tiny_siglip
    source = builder(root / "source").path
    return request.param, resave(source, root / f"tiny-{request.param}-v5", request.param)


def test_the_checkpoint_has_only_processor_config(saved):
    _, folder = saved
    names = {p.name for p in folder.iterdir()}
    assert "processor_config.json" in names and "preprocessor_config.json" not in names
    assert "image_processor" in json.loads((folder / "processor_config.json").read_text())


def _reference(family: str, folder: Path, images: list, ids: np.ndarray | None):
    from transformers import AutoProcessor, CLIPModel, SiglipModel

    model = (CLIPModel if family == "clip" else SiglipModel).from_pretrained(str(folder)).eval()
    processor = AutoProcessor.from_pretrained(str(folder))
    with torch.inference_mode():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        want_images = unit(model.get_image_features(pixel_values=pixels))
        if family == "clip":
            tokens = processor.tokenizer(TEXTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
            want_texts = unit(model.get_text_features(**tokens))
        else:
            want_texts = unit(model.get_text_features(input_ids=torch.from_numpy(ids)))  # no mask, as trained
    return want_images, want_texts


def _assert_equal_to_reference(emb, family, folder):
    images = list(sample_images().values())
    ids = emb.tokenize(TEXTS)["input_ids"] if family == "siglip" else None
    want_images, want_texts = _reference(family, folder, images, ids)
    got_images, got_texts = emb.embed_images(images).vectors[family], emb.embed_texts(TEXTS)
    assert float(np.sum(got_images * want_images, axis=1).min()) >= 0.999
    assert float(np.sum(got_texts * want_texts, axis=1).min()) >= 0.9999


def test_loads_from_a_folder_and_equals_transformers(saved, tmp_path):
    family, folder = saved
    emb = load_embedder(f"clip:{folder}", tmp_path, backend="torch")
    assert emb.model_id.startswith(f"{family}:tiny-{family}-v5@")
    _assert_equal_to_reference(emb, family, folder)


def test_loads_from_the_hugging_face_cache_layout(saved, tmp_path, monkeypatch):
    family, folder = saved
    fake_hf_cache(tmp_path / "hub", f"someone/tiny-{family}-v5", folder)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    emb = load_embedder(f"clip:someone/tiny-{family}-v5", tmp_path / "cache", backend="torch")
    _assert_equal_to_reference(emb, family, folder)


def test_a_processor_config_without_an_image_processor_is_explained(saved, tmp_path):
    family, folder = saved
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in folder.iterdir():
        (broken / p.name).write_bytes(p.read_bytes())
    (broken / "processor_config.json").write_text(json.dumps({"processor_class": "CLIPProcessor"}))
    with pytest.raises(ModelNotAvailableError, match="processor_config.json has no \"image_processor\""):
        load_embedder(f"clip:{broken}", tmp_path / "cache")
