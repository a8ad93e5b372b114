"""Builders of tiny, randomly initialised CLIP-class checkpoints for tests (no download, a second or two each).

Each builder takes a target folder and returns a `TinyModel`: where the checkpoint is and the registry name to pass
to pixsearch.models.load_embedder. The checkpoints are real ones in miniature: transformers' save_pretrained output
(config.json, model.safetensors, preprocessor_config.json, tokenizer files) or an OpenCLIP config registered at run
time plus a checkpoint file, so the loading code under test is the same as for full-size models.

The text tokenizers are byte-level BPEs in CLIP's format (GPT-2's bytes-to-unicode alphabet, '</w>' ending each
word, <|startoftext|>/<|endoftext|>), with merges learnt here from a few sentences, so tokenisation is non-trivial.
"""
from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CORPUS = (
    "a photo of a cat sitting on a sofa. a photo of a dog on the beach! a red mushroom on green moss, "
    "a cup of coffee on a wooden table; the astronaut in a white space suit. two cats and three dogs "
    "photographs of people, places and things. an old house by the lake at sunset"
)
TINY_CLIP_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      max_position_embeddings=77)
TINY_CLIP_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        image_size=32, patch_size=8)


@dataclass(frozen=True)
class TinyModel:
    path: Path  # checkpoint folder (transformers) or checkpoint file (OpenCLIP)
    name: str  # registry name for load_embedder
    dims: int


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte -> printable character table: printable Latin-1 bytes map to themselves, the other 68
    bytes to code points 256.. in byte order, so no token contains whitespace or control characters."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def learn_bpe(corpus: str, n_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP-format vocab and merges learnt greedily (most frequent pair first) from `corpus`'s words."""
    import regex

    b2u = bytes_to_unicode()
    words = Counter(
        "".join(b2u[b] for b in w.encode("utf-8"))
        for w in regex.findall(r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+", corpus.lower())
    )
    splits = {w: [*w[:-1], w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for w, parts in splits.items():
            for a, b in zip(parts, parts[1:]):
                pairs[a, b] += words[w]
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        for w, parts in splits.items():
            out, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    out.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            splits[w] = out
    alphabet = list(b2u.values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_bpe_files(folder: Path, n_merges: int = 120) -> dict[str, int]:
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = learn_bpe(CORPUS, n_merges)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n",
                                       encoding="utf-8")
    return vocab


def build_tiny_clip(folder: Path, *, seed: int = 0, tokenizer_json: bool = True, image_size: int = 32,
                    processor_size: int | None = None) -> TinyModel:
    """A transformers CLIPModel (2-layer towers of width 32, 16-d joint space) saved with save_pretrained, with
    its CLIPTokenizer and a CLIPImageProcessor (shortest edge = crop = the model's image size unless
    processor_size). tokenizer_json=False leaves only vocab.json + merges.txt, as some older repos have."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    _quiet_transformers()
    folder = Path(folder)
    vocab = write_bpe_files(folder)
    config = CLIPConfig(
        text_config=dict(TINY_CLIP_TEXT, vocab_size=len(vocab), bos_token_id=vocab[BOS], eos_token_id=vocab[EOS],
                         pad_token_id=vocab[EOS]),
        vision_config=dict(TINY_CLIP_VISION, image_size=image_size),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    _randomise_norms(model, seed)
    model.save_pretrained(folder)
    size = processor_size or image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": image_size, "width": image_size}) \
        .save_pretrained(folder)
    if tokenizer_json:
        tok = CLIPTokenizer.from_pretrained(str(folder))
        tok.model_max_length = 77
        tok.save_pretrained(folder)
    return TinyModel(folder, f"clip:{folder.resolve()}", 16)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _randomise_norms(model, seed: int) -> None:
    """LayerNorms start as identity (weight 1, bias 0); give them random values too, so a bug that skips one
    shows up in the outputs."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=g))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=g))


def fake_hf_cache(cache: Path, repo_id: str, checkpoint: Path, revision: str = "0123456789abcdef" * 2 + "01234567"
                  ) -> Path:
    """Lay a checkpoint folder out as huggingface_hub's cache does: blobs named by content hash, a snapshot of
    symlinks, refs/main naming the revision. Returns the snapshot folder."""
    import hashlib

    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for src in sorted(Path(checkpoint).iterdir()):
        if not src.is_file():
            continue
        digest = hashlib.sha256(src.read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        if not blob.exists():
            shutil.copyfile(src, blob)
        link = snapshot / src.name
        link.unlink(missing_ok=True)
        link.symlink_to(Path("../../blobs") / digest)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def sample_images() -> dict[str, "object"]:
    """Real photos (scikit-image's astronaut, chelsea, coffee) plus a non-square crop and a tiny image."""
    from PIL import Image
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())
    return {
        "astronaut": astronaut,
        "chelsea": Image.fromarray(data.chelsea()),
        "coffee": Image.fromarray(data.coffee()),
        "tall": astronaut.crop((100, 0, 260, 512)),
        "tiny": Image.fromarray(data.coffee()).resize((13, 9)),
    }


def random_pixels(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


TINY_OPENCLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def register_tiny_openclip(folder: Path, arch: str = "pixsearch-tiny-ViT", **overrides) -> str:
    """Register a tiny OpenCLIP architecture with open_clip (its supported run-time API, add_model_config) from a
    JSON file written to `folder`; overrides update the config (e.g. vision_cfg image_size). Returns the name."""
    import open_clip

    config = json.loads(json.dumps(TINY_OPENCLIP_CONFIG))
    for key, value in overrides.items():
        if isinstance(value, dict):
            config[key].update(value)
        else:
            config[key] = value
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{arch}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return arch


def build_tiny_openclip(folder: Path, *, seed: int = 0, arch: str = "pixsearch-tiny-ViT",
                        preprocess: dict | None = None, **overrides) -> TinyModel:
    """A tiny OpenCLIP model (registered config, open_clip's bundled BPE tokenizer with its real 49408-token
    vocab) saved as a safetensors checkpoint. `preprocess` (e.g. {"resize_mode": "longest"}) goes into the
    config's preprocess_cfg... as open_clip has no per-arch preprocessing outside tags, it is applied by
    registering the config under `arch` and is returned for the test to pass to open_clip."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    register_tiny_openclip(folder, arch, **overrides)
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None)
    _randomise_norms(model, seed)
    path = folder / f"{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return TinyModel(path, f"open_clip:{arch}:{path.resolve()}", int(TINY_OPENCLIP_CONFIG["embed_dim"]))


def siglip_unigram_tokenizer_json(corpus: str = CORPUS) -> str:
    """A SentencePiece-style Unigram tokenizer (tokenizers JSON) like SigLIP's: <pad>=0, </s>=1, <unk>=2, '▁'-prefixed
    word pieces and single characters scored by log frequency, lower-casing, '</s>' appended. Built with the
    `tokenizers` library because SigLIP's own tokenizer needs sentencepiece."""
    import math

    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    words = Counter(corpus.lower().replace(",", " ").replace(".", " ").split())
    chars = Counter(c for w in words for c in w)
    total = sum(words.values()) + sum(chars.values())
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", math.log(0.05))]
    pieces += [("▁" + w, math.log(n / total)) for w, n in words.most_common()]
    pieces += [(c, math.log(n / total) - 2.0) for c, n in chars.most_common()]
    tok = Tokenizer(Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Strip()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return tok.to_str()


def build_tiny_siglip(folder: Path, *, seed: int = 0, image_size: int = 32) -> TinyModel:
    """A transformers SiglipModel (2-layer towers of width 32, so a 32-d joint space) with a SiglipImageProcessor
    (fixed-size resize, mean/std 0.5) and a tokenizers-built Unigram tokenizer.json (see
    siglip_unigram_tokenizer_json), padded to max_length 16."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    _quiet_transformers()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_json = siglip_unigram_tokenizer_json()
    (folder / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    vocab_size = len(json.loads(tokenizer_json)["model"]["vocab"])
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"model_max_length": 16, "pad_token": "</s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    config = SiglipConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=1, eos_token_id=1,
                         bos_token_id=None),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
    )
    torch.manual_seed(seed)
    model = SiglipModel(config).eval()
    _randomise_norms(model, seed)
    model.save_pretrained(folder)
    SiglipImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return TinyModel(folder, f"clip:{folder.resolve()}", 32)


def build_tiny_openclip_repo(folder: Path, *, seed: int = 0, preprocess_cfg: dict | None = None) -> TinyModel:
    """A tiny OpenCLIP model laid out as an open_clip hub repo: open_clip_config.json (model_cfg + preprocess_cfg)
    and open_clip_model.safetensors, for the local-dir:/hf-hub: names."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": json.loads(json.dumps(TINY_OPENCLIP_CONFIG)), "preprocess_cfg": preprocess_cfg or {}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
    _randomise_norms(model, seed)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return TinyModel(folder, f"open_clip:local-dir:{folder.resolve()}", int(TINY_OPENCLIP_CONFIG["embed_dim"]))
