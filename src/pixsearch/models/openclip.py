"""OpenCLIP models (`open_clip:ARCH[:CHECKPOINT_FILE_OR_TAG]`) from local weights, on the shared tower engine.

Names:
  open_clip:ARCH:/path/to/checkpoint.safetensors   an architecture open_clip knows (built in, or registered at run
                                                   time with open_clip.add_model_config) + a checkpoint file;
  open_clip:ARCH:TAG                               a pretrained tag (open_clip.list_pretrained()), resolved from the
                                                   local caches only: the Hugging Face cache for hub-hosted tags,
                                                   ~/.cache/clip for URL-hosted ones;
  open_clip:hf-hub:ORG/NAME                        an open_clip repo (open_clip_config.json + weights) in the local
                                                   Hugging Face cache; open_clip:local-dir:/path the same as a folder.
Nothing is downloaded unless HF_HUB_OFFLINE=0 (see hub.py). A tag's preprocessing (mean/std/interpolation/resize
mode) and QuickGELU setting are applied as open_clip would for that tag.

Preprocessing comes from the model's preprocess config (image size, mean, std, interpolation, resize_mode,
fill_color) and is reproduced with Pillow + numpy exactly as open_clip's eval transform does (torchvision on PIL
images: Pillow resampling, CenterCrop rounding the offset, ToTensor dividing by 255).

Text without torch: open_clip's SimpleTokenizer imports torch, so on first load its BPE (vocab, merges, special
tokens) is converted to an equivalent `tokenizers` tokenizer, checked to give identical ids to open_clip's on a set
of strings (unicode, HTML entities, punctuation, truncation), and cached as JSON in <cache_dir>/open_clip/. Its
clean-up step (ftfy + HTML unescape + whitespace, then lower case or canonicalisation, per the model config) runs
in Python with ftfy, which does not import torch. Models with another tokenizer (HF tokenizers, SigLIP) use
open_clip's own and so import torch for text queries.

A resolved model is also described by a small manifest in <cache_dir>/open_clip/ (architecture config, checkpoint
path/size/mtime, preprocessing, tokenizer file, model id), so a fresh process with warm caches neither imports
open_clip (and with it torch) nor needs a run-time registered config to be registered again.
"""
from __future__ import annotations

import hashlib
import html
import json
import logging
import os
import string
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from .base import ModelCapabilities, ModelNotAvailableError
from .clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PixelRecipe, TokenizersTextTokenizer, slug, three_channels
from .hub import Need, digest_of, file_digest, force_offline_env, locate, write_text_atomically
from .onnx_backend import ExportError
from .device import Device
from .onnx_backend import CLIP_EXTRA, require
from .onnx_towers import DualTowerEmbedder, torch_tower

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
OPENCLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPENCLIP_REPO_NEEDS = (Need("config", ("open_clip_config.json",)), Need("weights", OPENCLIP_WEIGHTS))
SOT, EOT = "<start_of_text>", "<end_of_text>"
# open_clip's token regex (compiled with IGNORECASE there), without the special tokens, which `tokenizers` matches
# as added tokens before splitting.
_WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# Strings the converted tokenizer must encode exactly like open_clip's (checked on every conversion).
TOKENIZER_CHECK_TEXTS = (
    "a photo of a cat",
    "A Photo Of A CAT!!!   on  the\tsofa\n",
    "Zero-shot, naïve café: 東京! 🙂 — “quotes” ‘n’ it's they'll we'd I'M",
    "&amp;lt;b&amp;gt; html &quot;entities&quot; &#39;x&#39; _under_score_",
    "numbers 3.14159 and 1,000,000 and ½ ⅔",
    "mojibake: cafÃ© Ã¼ber",
    "<start_of_text> special <end_of_text> tokens",
    "",
    "long " * 120,
    "überlänge " + "pneumonoultramicroscopicsilicovolcanoconiosis " * 12,
)


def open_clip_version() -> str:
    try:
        return metadata.version("open_clip_torch")
    except metadata.PackageNotFoundError:
        return "unknown"


# -- pixels ----------------------------------------------------------------------------------------------------------


def open_clip_recipe(cfg: dict[str, Any]) -> PixelRecipe:
    """The PixelRecipe of open_clip's eval transform for a preprocess config (open_clip.transform.image_transform)."""
    size = cfg.get("size", 224)
    h, w = (int(size[0]), int(size[-1])) if isinstance(size, (list, tuple)) else (int(size), int(size))
    resample = Image.Resampling.BILINEAR if cfg.get("interpolation") == "bilinear" else Image.Resampling.BICUBIC
    mode = cfg.get("resize_mode") or "shortest"
    # open_clip's PreprocessCfg defaults: OpenAI's mean and std, each on its own
    common = dict(scale_by_division=True, mean=three_channels(cfg.get("mean") or OPENAI_CLIP_MEAN),
                  std=three_channels(cfg.get("std") or OPENAI_CLIP_STD))
    if mode == "squash":
        return PixelRecipe(resize="fixed", size=(h, w), resample=resample, **common)
    if mode == "longest":
        return PixelRecipe(resize="keep_ratio", size=(h, w), keep_ratio_longest=1.0, resample=resample, crop=(h, w),
                           crop_rounding="round", fill=int(cfg.get("fill_color") or 0), **common)
    if mode != "shortest":
        raise ModelNotAvailableError(f"unsupported open_clip resize_mode {mode!r}")
    if h == w:
        return PixelRecipe(resize="shortest_edge", size=(h,), resample=resample, crop=(h, w), crop_rounding="round",
                           **common)
    # open_clip's non-square "shortest" path uses ResizeKeepRatio with its default (bicubic) interpolation.
    return PixelRecipe(resize="keep_ratio", size=(h, w), resample=Image.Resampling.BICUBIC, crop=(h, w),
                       crop_rounding="round", **common)



# -- text ------------------------------------------------------------------------------------------------------------


def _basic_clean(text: str) -> str:
    import ftfy  # noqa: PLC0415

    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def _whitespace(text: str) -> str:
    return " ".join(text.split())


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def clean_function(mode: str) -> Callable[[str], str]:
    """open_clip's text clean-up modes ("lower" is the default), written against their documented behaviour."""
    if mode == "lower":
        return lambda t: _whitespace(_basic_clean(t)).lower()
    if mode == "whitespace":
        return lambda t: _whitespace(_basic_clean(t))
    if mode == "canonicalize":
        return lambda t: _whitespace(_basic_clean(t).replace("_", " ").translate(_NO_PUNCTUATION).lower())
    raise ExportError(f"unsupported open_clip tokenizer clean mode {mode!r}")


def convert_simple_tokenizer(tokenizer) -> str:
    """open_clip SimpleTokenizer -> tokenizers JSON: same vocab ids, BPE merges (ranked), '</w>' word ends, byte-level
    alphabet, regex word split (case-insensitive, as open_clip compiles it), <start_of_text> ... <end_of_text>."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers, processors  # noqa: PLC0415
    from tokenizers.models import BPE  # noqa: PLC0415

    vocab = dict(tokenizer.encoder)
    merges = [pair for pair, _ in sorted(tokenizer.bpe_ranks.items(), key=lambda kv: kv[1])]
    specials = [tokenizer.decoder[i] for i in tokenizer.all_special_ids]
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("(?i)" + _WORDS), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.add_special_tokens(specials)
    sot, eot = tokenizer.sot_token_id, tokenizer.eot_token_id
    decoder = {v: k for k, v in vocab.items()}
    tok.post_processor = processors.TemplateProcessing(
        single=f"{decoder[sot]} $A {decoder[eot]}", special_tokens=[(decoder[sot], sot), (decoder[eot], eot)]
    )
    return tok.to_str()


def bpe_text_tokenizer(tokenizer_json: str, context_length: int, clean: str) -> TokenizersTextTokenizer:
    from tokenizers import Tokenizer  # noqa: PLC0415

    tok = Tokenizer.from_str(tokenizer_json)
    return TokenizersTextTokenizer(
        tok, max_length=context_length, pad_id=0, pad_token=tok.id_to_token(0), fixed_length=True,
        input_names=("input_ids",), clean=clean_function(clean),
        settings={"kind": "bpe", "context_length": context_length, "clean": clean},
    )


class NativeTextTokenizer:
    """open_clip's own tokenizer (imports torch), for models whose tokenizer is not converted."""

    input_names = ("input_ids",)

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        return {"input_ids": self.tokenizer(list(texts)).numpy().astype(np.int64)}


# -- resolving the name ----------------------------------------------------------------------------------------------


def parse_argument(argument: str) -> tuple[str, str | None]:
    """"ARCH[:CKPT]" -> (ARCH, CKPT or None); "hf-hub:ID" and "local-dir:PATH" stay whole (CKPT None)."""
    if argument.startswith(("hf-hub:", "local-dir:")):
        return argument, None
    arch, sep, checkpoint = argument.partition(":")
    if not arch:
        raise ValueError("open_clip: needs an architecture, e.g. open_clip:ViT-B-32:/path/to/weights.safetensors")
    return arch, (checkpoint or None) if sep else None


def _url_cache_file(url: str) -> Path:
    return Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)


def _open_clip():
    """The open_clip module; ModelNotAvailableError naming the extra that brings it (and torch) when it is missing."""
    require("open_clip: models", ["open_clip", "torch"], CLIP_EXTRA)
    import open_clip  # noqa: PLC0415

    return open_clip


def _resolve(argument: str) -> dict[str, Any]:
    """How to build the model: open_clip.create_model keyword arguments, resolved to local files only."""
    arch, checkpoint = parse_argument(argument)
    if arch.startswith(("hf-hub:", "local-dir:")):
        schema, _, ident = arch.partition(":")
        located = locate(ident, OPENCLIP_REPO_NEEDS, kind="OpenCLIP model")
        weights = next(located.folder / n for n in OPENCLIP_WEIGHTS if (located.folder / n).is_file())
        return {"model_name": f"local-dir:{located.folder}", "pretrained": None, "checkpoint": str(weights),
                "display": located.display, "create": {}}

    open_clip = _open_clip()

    known = open_clip.list_models()
    if arch.replace("/", "-") not in known:
        raise ModelNotAvailableError(
            f"open_clip has no architecture {arch!r} (register a config with open_clip.add_model_config, or use one "
            f"of open_clip.list_models())"
        )
    arch = arch.replace("/", "-")
    if checkpoint is None:
        raise ModelNotAvailableError(
            f"open_clip:{arch} needs weights: open_clip:{arch}:/path/to/checkpoint or open_clip:{arch}:TAG "
            f"(tags: {', '.join(open_clip.list_pretrained_tags_by_model(arch)) or 'none'})"
        )
    path = Path(os.path.expanduser(checkpoint))
    if path.is_file():
        return {"model_name": arch, "pretrained": str(path.resolve()), "checkpoint": str(path.resolve()),
                "display": f"{arch}:{path.name}", "create": {}}
    cfg = open_clip.get_pretrained_cfg(arch, checkpoint)
    if not cfg:
        raise ModelNotAvailableError(
            f"open_clip:{arch}:{checkpoint}: no such file, and not a pretrained tag of {arch} (tags: "
            f"{', '.join(open_clip.list_pretrained_tags_by_model(arch)) or 'none'})"
        )
    weights = _tag_weights(arch, checkpoint, cfg)
    preprocess = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode", "fill_color") if cfg.get(k)}
    create = {"force_preprocess_cfg": preprocess}
    if cfg.get("quick_gelu"):
        create["force_quick_gelu"] = True  # the weights were trained with QuickGELU: running them with GELU is wrong
    return {"model_name": arch, "pretrained": str(weights), "checkpoint": str(weights),
            "display": f"{arch}:{checkpoint}", "create": create}


def _tag_weights(arch: str, tag: str, cfg: dict[str, Any]) -> Path:
    if cfg.get("file") and Path(cfg["file"]).is_file():
        return Path(cfg["file"])
    if cfg.get("hf_hub"):
        # open_clip's convention: "org/name/" (default file names) or "org/name/file.bin".
        repo_id, filename = os.path.split(cfg["hf_hub"])
        names = (filename,) if filename else OPENCLIP_WEIGHTS
        if filename.endswith((".bin", ".pth")):
            names = (filename[:-4] + ".safetensors", filename)
        located = locate(repo_id, (Need("weights", names),), kind=f"open_clip {arch} weights ({tag})")
        return next(located.folder / n for n in names if (located.folder / n).is_file())
    if cfg.get("url"):
        target = _url_cache_file(cfg["url"])
        if target.is_file():
            return target
        raise ModelNotAvailableError(
            f"open_clip {arch} weights ({tag}) are not cached: {target} is missing. On a connected machine: "
            f"curl -L -o {target.name} {cfg['url']} (then copy it to {target.parent})"
        )
    raise ModelNotAvailableError(f"open_clip tag {arch}:{tag} names no weights")


# -- the model -------------------------------------------------------------------------------------------------------


class OpenClipModel:
    """An OpenCLIP checkpoint: the TowerSource of DualTowerEmbedder, built from a manifest (see module docstring)."""

    text_dynamic_length = False

    def __init__(self, manifest: dict[str, Any], cache_dir: Path):
        self.manifest = manifest
        self.cache_dir = cache_dir
        self.name = manifest["name"]
        self.family = manifest["family"]
        self.dims = int(manifest["dims"])
        self.model_id = manifest["model_id"]
        self.recipe = PixelRecipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in manifest["recipe"].items()})
        self.onnx_stem = f"openclip-{slug(manifest['display'])}"
        self.onnx_sources = [Path(manifest["checkpoint"]["path"])]
        self.capabilities = ModelCapabilities.joint_space(name=self.name, family=self.family, dims=self.dims,
                                                          model_id=self.model_id, files=self.onnx_sources)
        self._model = None

    def text_tokenizer(self, cache_dir: Path):
        tok = self.manifest["tokenizer"]
        if tok["kind"] == "bpe":
            return bpe_text_tokenizer(Path(tok["json"]).read_text(encoding="utf-8"), tok["context_length"],
                                      tok["clean"])
        return NativeTextTokenizer(self._open_clip_tokenizer())

    def _open_clip_tokenizer(self):
        open_clip = _open_clip()

        _register_arch(self.manifest, self.cache_dir)
        return open_clip.get_tokenizer(self.manifest["load"]["model_name"])

    def torch_towers(self):
        model = self.torch_model()
        return _image_tower(model), _text_tower(model)

    def torch_model(self):
        """The open_clip model (fp32, eval), built exactly as the manifest says."""
        if self._model is None:
            self._model = _create_model(self.manifest, self.cache_dir)
        return self._model


def _create_model(manifest: dict[str, Any], cache_dir: Path):
    force_offline_env()
    open_clip = _open_clip()

    _register_arch(manifest, cache_dir)
    load = manifest["load"]
    model = open_clip.create_model(load["model_name"], pretrained=load["pretrained"], device="cpu",
                                   precision="fp32", **load["create"])
    return model.eval()


def _register_arch(manifest: dict[str, Any], cache_dir: Path) -> None:
    """Re-register a run-time architecture config in this process (open_clip.add_model_config, from the copy
    kept in the cache) when open_clip does not know it."""
    name = manifest["load"]["model_name"]
    if name.startswith("local-dir:"):
        return
    open_clip = _open_clip()

    if name not in open_clip.list_models():
        path = Path(cache_dir) / "open_clip" / "configs" / f"{name}.json"
        write_text_atomically(path, json.dumps(manifest["model_cfg"]))
        open_clip.add_model_config(path)


def _image_tower(model):
    return torch_tower(model, lambda inner, pixel_values: inner.encode_image(pixel_values))


def _text_tower(model):
    return torch_tower(model, lambda inner, input_ids: inner.encode_text(input_ids))


# -- manifests -------------------------------------------------------------------------------------------------------


def _manifest_path(cache_dir: Path, argument: str) -> Path:
    key = hashlib.sha256(argument.encode()).hexdigest()[:16]
    return Path(cache_dir) / "open_clip" / f"{slug(argument)}-{key}.json"


def _stat(path: Path) -> dict[str, int]:
    st = Path(path).stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _valid_manifest(manifest: dict[str, Any], argument: str) -> bool:
    try:
        ckpt = manifest["checkpoint"]
        tok = manifest["tokenizer"]
        return (
            manifest.get("version") == MANIFEST_VERSION
            and manifest.get("argument") == argument
            and manifest.get("open_clip") == open_clip_version()
            and _stat(Path(ckpt["path"])) == {"size": ckpt["size"], "mtime_ns": ckpt["mtime_ns"]}
            and (tok["kind"] != "bpe" or Path(tok["json"]).is_file())
        )
    except (KeyError, TypeError, OSError):
        return False


def build_manifest(argument: str, cache_dir: Path) -> dict[str, Any]:
    """Resolve the name, read the model's configs, convert and verify its tokenizer; imports open_clip (torch)."""
    force_offline_env()
    resolved = _resolve(argument)
    open_clip = _open_clip()

    model_name = resolved["model_name"]
    if model_name.startswith("local-dir:"):
        folder = Path(model_name.partition(":")[2])
        config = json.loads((folder / "open_clip_config.json").read_text())
        model_cfg = config["model_cfg"]
    else:
        model_cfg = open_clip.get_model_config(model_name)
    # The preprocess config as create_model computes it, without building the model: defaults, then the tag's or
    # the repo's settings, then the vision tower's image size.
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict  # noqa: PLC0415
    from dataclasses import asdict  # noqa: PLC0415

    preprocess = asdict(PreprocessCfg())
    if model_name.startswith("local-dir:"):
        preprocess = merge_preprocess_dict(preprocess, config.get("preprocess_cfg", {}))
    preprocess = merge_preprocess_dict(preprocess, resolved["create"].get("force_preprocess_cfg", {}))
    preprocess["size"] = model_cfg["vision_cfg"].get("image_size", preprocess["size"])
    recipe = open_clip_recipe(preprocess)
    text_cfg = model_cfg.get("text_cfg", {})
    context_length = int(text_cfg.get("context_length", 77))
    family = "siglip" if "siglip" in model_name.lower() else "clip"

    checkpoint = Path(resolved["checkpoint"])
    manifest: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "argument": argument,
        "open_clip": open_clip_version(),
        "name": f"open_clip:{argument}",
        "display": resolved["display"],
        "family": family,
        "dims": int(model_cfg["embed_dim"]),
        "model_cfg": model_cfg,
        "preprocess_cfg": preprocess,
        "recipe": recipe.as_dict(),
        "checkpoint": {"path": str(checkpoint), **_stat(checkpoint)},
        "load": {"model_name": model_name, "pretrained": resolved["pretrained"], "create": resolved["create"]},
    }
    manifest["tokenizer"] = _tokenizer_entry(manifest, cache_dir, context_length, text_cfg)
    manifest["model_id"] = f"{family}:{resolved['display']}@" + digest_of([
        family, file_digest(checkpoint, cache_dir), model_cfg, recipe.as_dict(), manifest["load"]["create"],
        {k: v for k, v in manifest["tokenizer"].items() if k != "json"},
    ])[:12]
    return manifest


def _tokenizer_entry(manifest: dict[str, Any], cache_dir: Path, context_length: int, text_cfg: dict) -> dict:
    """Convert open_clip's SimpleTokenizer to a cached tokenizers JSON, verified id for id; other tokenizers are
    used natively (recorded as such)."""
    open_clip = _open_clip()

    _register_arch(manifest, cache_dir)
    native = open_clip.get_tokenizer(manifest["load"]["model_name"])
    if not isinstance(native, open_clip.SimpleTokenizer) or getattr(native, "reduction_fn", None) is not None:
        return {"kind": "native", "type": type(native).__name__}
    clean = str(text_cfg.get("tokenizer_kwargs", {}).get("clean", "lower"))
    try:
        converted = convert_simple_tokenizer(native)
        digest = hashlib.sha256(converted.encode()).hexdigest()
        candidate = bpe_text_tokenizer(converted, context_length, clean)
        want = native(list(TOKENIZER_CHECK_TEXTS), context_length=context_length).numpy()
        got = candidate.encode(TOKENIZER_CHECK_TEXTS)["input_ids"]
        if got.shape != want.shape or not np.array_equal(got, want):
            bad = [t for t, a, b in zip(TOKENIZER_CHECK_TEXTS, got, want) if not np.array_equal(a, b)]
            raise ExportError(f"converted tokenizer differs from open_clip's on {bad[:3]!r}")
    except ExportError as exc:
        log.warning("open_clip tokenizer of %s not converted (%s); text will use open_clip's (torch)",
                    manifest["name"], exc)
        return {"kind": "native", "type": type(native).__name__}
    path = Path(cache_dir) / "open_clip" / f"tokenizer-{digest[:16]}.json"
    if not path.is_file():
        write_text_atomically(path, converted)
    return {"kind": "bpe", "json": str(path), "sha256": digest, "context_length": context_length, "clean": clean}


def load_manifest(argument: str, cache_dir: Path) -> dict[str, Any]:
    """The cached manifest when still valid (torch-free), else a new one (imports open_clip), cached."""
    path = _manifest_path(cache_dir, argument)
    try:
        manifest = json.loads(path.read_text())
        if _valid_manifest(manifest, argument):
            return manifest
    except (OSError, ValueError):
        pass
    manifest = build_manifest(argument, cache_dir)
    write_text_atomically(path, json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def capabilities(argument: str, cache_dir: Path) -> ModelCapabilities:
    """Registry declaration of `open_clip:...`: from the model's cached manifest (JSON; see the module docstring).
    A name never resolved on this machine is resolved first, which imports open_clip (and with it torch) to read
    its configs and convert its tokenizer, but never builds the model (the checkpoint is only hashed, once, for the
    model id)."""
    cache_dir = Path(cache_dir)
    force_offline_env()
    return OpenClipModel(load_manifest(argument, cache_dir), cache_dir).capabilities


def load(argument: str, cache_dir: Path, *, backend: str = "auto", threads: int | None = None,
         device: str | Device | None = "auto", max_batch: int | None = None) -> DualTowerEmbedder:
    """Registry factory for `open_clip:ARCH[:CHECKPOINT_FILE_OR_TAG]` (and hf-hub:/local-dir: names).

    backend: "auto" | "onnx" | "onnx-int8" | "torch", device: "auto" | "cpu" | "cuda" (see onnx_towers). The first load of a name imports open_clip
    to resolve it (and converts its tokenizer); later processes read the cached manifest without torch.
    """
    cache_dir = Path(cache_dir)
    force_offline_env()
    source = OpenClipModel(load_manifest(argument, cache_dir), cache_dir)
    return DualTowerEmbedder(source, cache_dir, backend=backend, threads=threads, device=device,
                             max_batch=max_batch)
