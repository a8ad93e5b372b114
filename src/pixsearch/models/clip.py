"""transformers CLIP and SigLIP checkpoints (`clip:PATH_OR_REPO_ID`) from local files, plus the pieces every
CLIP-class family shares: the pixel recipe (Pillow + numpy) and the `tokenizers`-based text tokenizer.

A checkpoint is a folder with config.json, weights (model.safetensors / pytorch_model.bin, or a sharded index),
the image processor's settings (preprocessor_config.json, or transformers 5's processor_config.json) and a tokenizer
(tokenizer.json, or CLIP's vocab.json + merges.txt): a local path, or a repo
id looked up in the local Hugging Face cache, never downloaded unless HF_HUB_OFFLINE=0 (see hub.py).

Everything model-specific comes from those files, nothing is hard-coded per model:
  * pixels: PixelRecipe.from_hf_config reads the image processor config (size as shortest edge / height+width,
    crop_size, do_center_crop, resample, rescale factor, mean/std) and applies it with Pillow + numpy. The result
    equals transformers' PIL image processors (CLIPImageProcessorPil, SiglipImageProcessorPil) to float rounding and
    OpenCLIP's transform exactly; transformers' default (torchvision) processors differ by a fraction of a grey
    level on average (Pillow resamples in fixed point, torchvision in float; same filters and geometry);
  * text: the checkpoint's tokenizer run with the `tokenizers` library (no transformers, no torch); truncation at
    the tokenizer's model_max_length (capped by the text config's max_position_embeddings). CLIP pads to the
    longest text of a batch (its causal attention and EOS pooling make padding irrelevant, so this equals padding
    to 77, at a fraction of the cost for short queries); SigLIP pads to max_length, as it was trained, and is run
    without an attention mask, as in big_vision;
  * the vector field is "clip" (CLIPModel) or "siglip" (SiglipModel), its width the config's projection_dim /
    hidden size, cosine metric; model_id = "<family>:<repo id or folder name>@<12 hex>", the hash covering the
    weights' content, the config, the pixel recipe and the tokenizer files and settings.
Limitation: SigLIP v1 repos (google/siglip-*) ship only a SentencePiece model (spiece.model), which needs the
sentencepiece library; this module needs a tokenizer.json (SigLIP 2 repos ship one) and says so. Running and
export go through onnx_towers.DualTowerEmbedder.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from pixsearch.imaging import to_rgb

from .base import ModelCapabilities, ModelNotAvailableError, Relevance
from .hub import Located, Need, digest_of, file_digest, first_present, force_offline_env, locate
from .device import Device
from .onnx_backend import CLIP_EXTRA, require
from .onnx_towers import DualTowerEmbedder, torch_tower

log = logging.getLogger(__name__)

SIGLIP_MIN_PROBABILITY = 0.01

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)
# Defaults of transformers' image processor classes, for keys a preprocessor_config.json leaves out.
_PROCESSOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "clip": {
        "do_resize": True, "size": {"shortest_edge": 224}, "resample": 3, "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224}, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD,
    },
    "siglip": {
        "do_resize": True, "size": {"height": 224, "width": 224}, "resample": 3, "do_center_crop": False,
        "crop_size": None, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": HALF, "image_std": HALF,
    },
}
# config.json model_type -> (vector field / family, transformers model class, text padding to max_length?)
HF_FAMILIES: dict[str, tuple[str, str, bool]] = {
    "clip": ("clip", "CLIPModel", False),
    "siglip": ("siglip", "SiglipModel", True),
}
WEIGHT_FILES = (
    "model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model")  # spiece.model only for a clear error
# Not required, but they set the tokenizer's pad token and max length: fetched along with the required files.
HF_OPTIONAL = ("tokenizer_config.json", "special_tokens_map.json")
HF_NEEDS = (
    Need("config", ("config.json",)),
    Need("weights", WEIGHT_FILES),
    # transformers 4 saves the image processor alone in preprocessor_config.json; transformers 5 saves the whole
    # processor in processor_config.json, the image processor's settings under "image_processor"
    Need("image preprocessing", ("preprocessor_config.json", "processor_config.json")),
    Need("tokenizer", TOKENIZER_FILES),
)
# Settings that change the tokens, for model ids (a change makes a new id).
TOKENIZER_VERSION = 1


# -- pixels ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelRecipe:
    """How one checkpoint turns an RGB image into its input tensor, applied with Pillow + numpy (no torch).

    resize:  "none"; "shortest_edge" (size=(S,): short side to S, long side int(S*long/short), as transformers and
             torchvision do); "shortest_longest" (size=(S, L): transformers' shortest_edge+longest_edge);
             "fixed" (size=(H, W), aspect ratio not kept); "keep_ratio" (size=(H, W): OpenCLIP's ResizeKeepRatio,
             scale by the short-side ratio (longest=0) or long-side ratio (longest=1), sides rounded).
    crop:    (H, W) centre crop, padding with `fill` first when the image is smaller (transformers and torchvision
             agree on the padding); crop_rounding "floor" (transformers) or "round" (torchvision's CenterCrop).
    scale / scale_by_division: x*scale (transformers' rescale_factor) or x/255 (torchvision's ToTensor).
    """

    resize: str
    size: tuple[int, ...]
    resample: int = Image.Resampling.BICUBIC
    keep_ratio_longest: float = 0.0
    crop: tuple[int, int] | None = None
    crop_rounding: str = "floor"
    fill: int = 0
    scale: float = 1 / 255
    scale_by_division: bool = False
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

    def __post_init__(self):
        if self.resize not in ("none", "shortest_edge", "shortest_longest", "fixed", "keep_ratio"):
            raise ValueError(f"unknown resize mode {self.resize!r}")
        if self.crop is None and self.resize not in ("fixed",):
            raise ValueError("a recipe needs a crop or a fixed resize: batched inputs must have one size")
        if self.crop_rounding not in ("floor", "round"):
            raise ValueError(f"unknown crop rounding {self.crop_rounding!r}")

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the prepared pixels."""
        return tuple(self.crop) if self.crop is not None else (self.size[0], self.size[1])  # type: ignore[return-value]

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step."""
        if self.resize == "none":
            return width, height
        if self.resize == "fixed":
            return self.size[1], self.size[0]
        if self.resize == "keep_ratio":
            th, tw = self.size
            rh, rw = height / th, width / tw
            ratio = max(rh, rw) * self.keep_ratio_longest + min(rh, rw) * (1.0 - self.keep_ratio_longest)
            return round(width / ratio), round(height / ratio)
        if self.resize == "shortest_longest":
            return _shortest_longest(width, height, self.size[0], self.size[1])
        short_side = self.size[0]
        if width <= height:
            return short_side, int(short_side * height / width)
        return int(short_side * width / height), short_side

    def prepare(self, image: Image.Image) -> np.ndarray:
        """RGB image -> float32 (3, H, W), normalised."""
        img = to_rgb(image)
        size = self.resized_size(*img.size)
        if size != img.size:
            img = img.resize(size, resample=Image.Resampling(self.resample))
        arr = np.asarray(img)
        if self.crop is not None:
            arr = center_crop_or_pad(arr, self.crop, fill=self.fill, rounding=self.crop_rounding)
        x = arr.astype(np.float32)
        x = x / np.float32(255.0) if self.scale_by_division else x * np.float32(self.scale)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    @classmethod
    def from_hf_config(cls, config: dict[str, Any], family: str = "clip") -> "PixelRecipe":
        """The recipe of a transformers image processor config (preprocessor_config.json), with the processor
        class's defaults for absent keys. Old configs' integer size/crop_size are read as transformers does."""
        defaults = _PROCESSOR_DEFAULTS.get(family, _PROCESSOR_DEFAULTS["clip"])

        def get(key: str) -> Any:
            value = config.get(key)
            return defaults[key] if value is None else value

        resize, size = "none", (0,)
        if get("do_resize"):
            resize, size = _hf_size(get("size"))
        crop = _hf_crop(get("crop_size")) if get("do_center_crop") else None
        mean, std = (tuple(get("image_mean")), tuple(get("image_std"))) if get("do_normalize") else ((0.0,) * 3,
                                                                                                     (1.0,) * 3)
        return cls(
            resize=resize,
            size=size,
            resample=int(get("resample")),
            crop=crop,
            crop_rounding="floor",
            scale=float(get("rescale_factor")) if get("do_rescale") else 1.0,
            mean=three_channels(mean),
            std=three_channels(std),
        )


def three_channels(values: float | Sequence[float]) -> tuple[float, float, float]:
    """A per-channel mean or std as three values (configs may give one for all channels)."""
    values = (values,) if isinstance(values, (int, float)) else values
    values = tuple(float(v) for v in values)
    return values * 3 if len(values) == 1 else values  # type: ignore[return-value]


def _hf_size(size: Any) -> tuple[str, tuple[int, ...]]:
    if isinstance(size, (int, float)):
        return "shortest_edge", (int(size),)  # CLIP's and SigLIP's processors: default_to_square=False
    if isinstance(size, (list, tuple)):
        return "fixed", (int(size[0]), int(size[-1]))
    if isinstance(size, dict):
        if size.get("height") and size.get("width"):
            return "fixed", (int(size["height"]), int(size["width"]))
        if size.get("shortest_edge") and size.get("longest_edge"):
            return "shortest_longest", (int(size["shortest_edge"]), int(size["longest_edge"]))
        if size.get("shortest_edge"):
            return "shortest_edge", (int(size["shortest_edge"]),)
    raise ValueError(f"unsupported image processor size {size!r}")


def _hf_crop(crop: Any) -> tuple[int, int]:
    if isinstance(crop, (int, float)):
        return int(crop), int(crop)
    if isinstance(crop, dict) and crop.get("height") and crop.get("width"):
        return int(crop["height"]), int(crop["width"])
    if isinstance(crop, (list, tuple)):
        return int(crop[0]), int(crop[-1])
    raise ValueError(f"unsupported crop_size {crop!r}")


def _shortest_longest(width: int, height: int, size: int, max_size: int) -> tuple[int, int]:
    """transformers' get_size_with_aspect_ratio, as (width, height)."""
    short, long = float(min(width, height)), float(max(width, height))
    raw = None
    if long / short * size > max_size:
        raw = max_size * short / long
        size = int(round(raw))
    if (height <= width and height == size) or (width <= height and width == size):
        return width, height
    if width < height:
        return size, int((raw if raw is not None else size) * height / width)
    return int((raw if raw is not None else size) * width / height), size


def center_crop_or_pad(arr: np.ndarray, crop: tuple[int, int], *, fill: int = 0, rounding: str = "floor") -> np.ndarray:
    """Centre crop of an HWC array to crop=(H, W); a smaller image is first padded with `fill` as torchvision pads
    (left/top get the smaller half). rounding: "floor" (transformers) or "round" (torchvision's CenterCrop)."""
    ch, cw = crop
    h, w = arr.shape[:2]
    if ch > h or cw > w:
        top, left = max(ch - h, 0) // 2, max(cw - w, 0) // 2
        padded = np.full((max(h, ch), max(w, cw), arr.shape[2]), fill, dtype=arr.dtype)
        padded[top : top + h, left : left + w] = arr
        arr, (h, w) = padded, padded.shape[:2]
    offset = (lambda d: int(round(d / 2.0))) if rounding == "round" else (lambda d: int(d / 2.0))
    top, left = offset(h - ch), offset(w - cw)
    return arr[top : top + ch, left : left + cw]


# -- text ----------------------------------------------------------------------------------------------------------


@dataclass
class TokenizersTextTokenizer:
    """A `tokenizers.Tokenizer` configured to produce a text tower's inputs (int64 numpy), torch-free.

    clean: optional Python pre-normalisation applied first (OpenCLIP's ftfy/html clean-up, which `tokenizers`
    has no normaliser for). With fixed_length, every row is padded to max_length; otherwise to the batch's longest.
    """

    tokenizer: Any
    max_length: int
    pad_id: int
    pad_token: str
    fixed_length: bool
    input_names: tuple[str, ...] = ("input_ids", "attention_mask")
    clean: Callable[[str], str] | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.tokenizer.enable_padding(
            pad_id=self.pad_id, pad_token=self.pad_token, length=self.max_length if self.fixed_length else None
        )

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        texts = [self.clean(t) for t in texts] if self.clean else list(texts)
        encodings = self.tokenizer.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }
        return {name: feeds[name] for name in self.input_names}


def clip_bpe_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], *, bos: str, eos: str, unk: str,
                       lowercase: bool = True):
    """The CLIP byte-level BPE as a `tokenizers.Tokenizer`: NFC, whitespace runs -> one space, lower case; words,
    single digits, punctuation runs and English contractions split as CLIP's regex does; bytes mapped to GPT-2's
    printable alphabet; BPE with '</w>' ending each word; <bos> ... <eos> around every text."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors  # noqa: PLC0415
    from tokenizers.models import BPE  # noqa: PLC0415

    tok = Tokenizer(BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", continuing_subword_prefix="",
                        unk_token=unk, fuse_unk=False))
    steps = [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " ")]
    if lowercase:
        steps.append(normalizers.Lowercase())
    tok.normalizer = normalizers.Sequence(steps)
    specials = "|".join(re.escape(t) for t in dict.fromkeys((bos, eos)))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(specials + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.add_special_tokens([bos, eos])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
    )
    return tok


def _token_name(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _tokenizer_config(folder: Path) -> dict[str, Any]:
    tok_cfg: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins, as in transformers
        try:
            tok_cfg.update(json.loads((folder / name).read_text()))
        except (OSError, ValueError):
            pass
    return tok_cfg


def hf_tokenizer_settings(folder: Path, family: str, context_length: int, pad_to_max: bool) -> dict[str, Any]:
    """How the checkpoint's text is tokenised, from its files' names and JSON configs only (part of the model id):
    the tokenizer files (tokenizer.json, else CLIP's vocab.json + merges.txt), truncation at model_max_length
    (capped by context_length), the pad token and whether every text is padded to max_length."""
    tok_cfg = _tokenizer_config(folder)
    if (folder / "tokenizer.json").is_file():
        files = ["tokenizer.json"]
    elif (folder / "vocab.json").is_file():
        if not (folder / "merges.txt").is_file():
            raise ModelNotAvailableError(f"{folder} has vocab.json but lacks merges.txt (CLIP's BPE merges)")
        files = ["vocab.json", "merges.txt"]
    else:
        raise ModelNotAvailableError(
            f"{folder} has no tokenizer.json or vocab.json+merges.txt"
            + (": its spiece.model (SigLIP v1's SentencePiece tokenizer) needs the sentencepiece library, which "
               "pixsearch does not use; use a checkpoint that ships tokenizer.json (e.g. SigLIP 2's)"
               if (folder / "spiece.model").is_file() else "")
        )
    default_pad = "<|endoftext|>" if family == "clip" else "</s>"
    model_max = tok_cfg.get("model_max_length")
    max_length = int(model_max) if isinstance(model_max, (int, float)) and 0 < model_max < 100_000 else context_length
    return {"files": files, "max_length": min(max_length, context_length),
            "pad": _token_name(tok_cfg.get("pad_token")) or default_pad, "fixed": pad_to_max,
            "version": TOKENIZER_VERSION}


def hf_text_tokenizer(folder: Path, settings: dict[str, Any], input_names: tuple[str, ...]) -> TokenizersTextTokenizer:
    """The checkpoint's tokenizer as `settings` (hf_tokenizer_settings) describe it, set up like transformers'
    tokenizer call with truncation at model_max_length and the family's padding."""
    from tokenizers import Tokenizer  # noqa: PLC0415

    if settings["files"] == ["tokenizer.json"]:
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    else:
        tok_cfg = _tokenizer_config(folder)
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
        tok = clip_bpe_tokenizer(
            vocab, merges,  # type: ignore[arg-type]
            bos=_token_name(tok_cfg.get("bos_token")) or "<|startoftext|>",
            eos=_token_name(tok_cfg.get("eos_token")) or "<|endoftext|>",
            unk=_token_name(tok_cfg.get("unk_token")) or "<|endoftext|>",
            lowercase=bool(tok_cfg.get("do_lower_case", True)),
        )
    pad_id = tok.token_to_id(settings["pad"])
    if pad_id is None:
        raise ModelNotAvailableError(f"the tokenizer in {folder} has no pad token {settings['pad']!r}")
    return TokenizersTextTokenizer(
        tok, max_length=settings["max_length"], pad_id=pad_id, pad_token=settings["pad"],
        fixed_length=settings["fixed"], input_names=input_names, settings=settings,
    )


# -- the checkpoint ------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(f"cannot read {path}: {exc}") from exc
    if not isinstance(value, dict):
        raise ModelNotAvailableError(f"{path} is not a JSON object")
    return value


def image_processor_config(folder: Path) -> dict[str, Any]:
    """The image processor's settings: preprocessor_config.json (transformers 4, and repos saved by it), else the
    "image_processor" object of processor_config.json (transformers 5's save_pretrained of a CLIPProcessor or
    SiglipProcessor writes only that file)."""
    if (folder / "preprocessor_config.json").is_file():
        return _read_json(folder / "preprocessor_config.json")
    processor = _read_json(folder / "processor_config.json")
    settings = processor.get("image_processor")
    if not isinstance(settings, dict):
        raise ModelNotAvailableError(
            f"{folder} lacks image preprocessing: no preprocessor_config.json, and its processor_config.json has no "
            '"image_processor" object'
        )
    return settings


def weight_files(folder: Path) -> list[Path]:
    """The weights file, or every shard named by a sharded checkpoint's index (ModelNotAvailableError if any lacks)."""
    found = first_present(folder, WEIGHT_FILES)
    if found is None:
        raise ModelNotAvailableError(f"{folder} has no weights ({' or '.join(WEIGHT_FILES)})")
    if not found.name.endswith(".index.json"):
        return [found]
    shards = sorted(set(_read_json(found).get("weight_map", {}).values()))
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing or not shards:
        raise ModelNotAvailableError(
            f"{folder} lacks weight shards {missing or '(empty index)'} listed in {found.name}"
        )
    return [found, *(folder / s for s in shards)]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "model"


class HFCheckpoint:
    """A transformers CLIPModel / SiglipModel checkpoint on disk: the TowerSource of DualTowerEmbedder.

    Constructing one reads the checkpoint's JSON configs and hashes its files (for the model id); it neither builds
    the tokenizer nor loads the weights (SigLIP's two calibration scalars aside, read from the safetensors file).
    """

    def __init__(self, located: Located, registry_name: str, cache_dir: Path):
        self.located = located
        self.folder = located.folder
        self.name = registry_name
        self.config = _read_json(self.folder / "config.json")
        model_type = self.config.get("model_type")
        if model_type not in HF_FAMILIES:
            raise ModelNotAvailableError(
                f"{self.folder}/config.json has model_type {model_type!r}; clip: supports {', '.join(HF_FAMILIES)}"
            )
        self.family, self.model_class, self.pad_to_max = HF_FAMILIES[model_type]
        self.recipe = PixelRecipe.from_hf_config(image_processor_config(self.folder), self.family)
        text_cfg = self.config.get("text_config") or {}
        vision_cfg = self.config.get("vision_config") or {}
        if self.family == "clip":
            self.dims = int(self.config.get("projection_dim") or 512)
            self.context_length = int(text_cfg.get("max_position_embeddings") or 77)
            self.text_input_names: tuple[str, ...] = ("input_ids", "attention_mask")
        else:
            hidden = int(vision_cfg.get("hidden_size") or 768)
            self.dims = int(text_cfg.get("projection_size") or text_cfg.get("hidden_size") or hidden)
            if self.dims != hidden:
                raise ModelNotAvailableError(f"SigLIP towers disagree on width ({self.dims} vs {hidden})")
            self.context_length = int(text_cfg.get("max_position_embeddings") or 64)
            self.text_input_names = ("input_ids",)
        self.text_dynamic_length = not self.pad_to_max
        self.weights = weight_files(self.folder)
        self.tokenizer_settings = hf_tokenizer_settings(self.folder, self.family, self.context_length,
                                                        self.pad_to_max)
        self._tokenizer: TokenizersTextTokenizer | None = None
        self.model_id = f"{self.family}:{located.display}@{self._fingerprint(cache_dir)[:12]}"
        self.onnx_stem = f"{self.family}-{slug(located.display)}"
        self.onnx_sources = [*self.weights, self.folder / "config.json"]
        self.capabilities = ModelCapabilities.joint_space(
            name=self.name, family=self.family, dims=self.dims, model_id=self.model_id,
            relevance=self._siglip_relevance() if self.family == "siglip" else None, files=self.onnx_sources,
        )
        self._model = None

    def _siglip_relevance(self) -> Relevance | None:
        """SigLIP is trained with a sigmoid per image-text pair, p = sigmoid(exp(logit_scale) * cos + logit_bias):
        its own calibration says when a text does not describe an image. Hits with p < 1 % are clearly irrelevant.
        CLIP's softmax training gives no such absolute scale, so CLIP checkpoints have no threshold."""
        safetensors_files = [p for p in self.weights if p.suffix == ".safetensors"]
        if not safetensors_files:
            return None
        from safetensors import safe_open  # noqa: PLC0415 - numpy reader, no torch

        values: dict[str, float] = {}
        for path in safetensors_files:
            with safe_open(str(path), framework="np") as weights:
                for key in ("logit_scale", "logit_bias"):
                    if key in weights.keys():
                        values[key] = float(np.asarray(weights.get_tensor(key)).reshape(-1)[0])
        if len(values) < 2:
            return None
        scale = math.exp(values["logit_scale"])
        threshold = (math.log(SIGLIP_MIN_PROBABILITY / (1 - SIGLIP_MIN_PROBABILITY)) - values["logit_bias"]) / scale
        return Relevance(threshold=threshold, how=f"SigLIP's sigmoid calibration: match probability below "
                                                  f"{SIGLIP_MIN_PROBABILITY:.0%}")

    def _fingerprint(self, cache_dir: Path) -> str:
        config = {k: v for k, v in self.config.items() if k not in ("transformers_version", "_name_or_path")}
        tokenizer_files = [self.folder / f for f in self.tokenizer_settings["files"]]
        return digest_of([
            self.family,
            [file_digest(p, cache_dir) for p in self.weights],
            config,
            self.recipe.as_dict(),
            [file_digest(p) for p in tokenizer_files],
            self.tokenizer_settings,
        ])

    def text_tokenizer(self, cache_dir: Path) -> TokenizersTextTokenizer:
        if self._tokenizer is None:
            self._tokenizer = hf_text_tokenizer(self.folder, self.tokenizer_settings, self.text_input_names)
        return self._tokenizer

    def torch_towers(self):
        """(image, text) torch modules over one fp32, eval-mode model loaded strictly from the local folder."""
        force_offline_env()
        require("clip: models (to export their towers to ONNX once)", ["torch", "transformers"], CLIP_EXTRA)
        import torch  # noqa: PLC0415
        import transformers  # noqa: PLC0415

        try:
            from transformers.utils import logging as hf_logging  # noqa: PLC0415

            hf_logging.disable_progress_bar()
        except (ImportError, AttributeError):
            pass
        cls = getattr(transformers, self.model_class)
        model = cls.from_pretrained(str(self.folder), local_files_only=True, dtype=torch.float32,
                                    attn_implementation="eager").eval()
        self._model = model
        return _hf_image_tower(model), _hf_text_tower(model, self.text_input_names)


def _pooled(output):
    """get_*_features returns a tensor (transformers 4) or an output whose pooler_output is projected (5)."""
    return output if hasattr(output, "dim") else output.pooler_output


def _hf_image_tower(model):
    return torch_tower(model, lambda inner, pixel_values: _pooled(inner.get_image_features(pixel_values=pixel_values)))


def _hf_text_tower(model, input_names: tuple[str, ...]):
    if input_names == ("input_ids", "attention_mask"):
        return torch_tower(model, lambda inner, input_ids, attention_mask: _pooled(
            inner.get_text_features(input_ids=input_ids, attention_mask=attention_mask)))
    return torch_tower(model, lambda inner, input_ids: _pooled(inner.get_text_features(input_ids=input_ids)))


def find_checkpoint(argument: str, cache_dir: Path) -> HFCheckpoint:
    """The checkpoint `clip:ARGUMENT` names, found locally (never downloaded unless HF_HUB_OFFLINE=0)."""
    force_offline_env()
    located = locate(argument, HF_NEEDS, optional=HF_OPTIONAL, kind="CLIP/SigLIP checkpoint")
    name = "clip:" + (argument if located.repo_id else str(located.folder))
    return HFCheckpoint(located, name, Path(cache_dir))


def capabilities(argument: str, cache_dir: Path) -> ModelCapabilities:
    """Registry declaration of `clip:PATH_OR_REPO_ID[@REVISION]`: from the checkpoint's config files, without
    building its tokenizer or loading its weights."""
    return find_checkpoint(argument, cache_dir).capabilities


def load(argument: str, cache_dir: Path, *, backend: str = "auto", threads: int | None = None,
         device: str | Device | None = "auto", max_batch: int | None = None) -> DualTowerEmbedder:
    """Registry factory for `clip:PATH_OR_REPO_ID[@REVISION]`: a transformers CLIP or SigLIP checkpoint.

    backend: "auto" | "onnx" | "onnx-int8" | "torch", device: "auto" | "cpu" | "cuda" (see onnx_towers). Cheap: weights load on first use (the
    weights' content hash for the model id is computed once per file and cached in cache_dir). The tokenizer is
    built now (torch-free), so a broken one is reported here rather than by the first query.
    """
    source = find_checkpoint(argument, cache_dir)
    source.text_tokenizer(Path(cache_dir))
    return DualTowerEmbedder(source, cache_dir, backend=backend, threads=threads, device=device,
                             max_batch=max_batch)
