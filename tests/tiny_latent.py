"""A tiny random Stable-Diffusion-layout pipeline folder for tests (VAE + UNet2DConditionModel +
text encoder + tokenizer + scheduler, built from configs): CLIP where transformers is installed,
else the stand-in text encoder and byte tokenizer defined here, which importing this module
registers with the latent loader (`register_component`) so a folder saved with them loads."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from minority_core.errors import InputError
from minority_core.models.latent import register_component

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
PROMPTS = ["a cat", "red dog"]
IMAGE = (3, 16, 16)  # a 2-block VAE halves 16×16 images to 8×8 latents


# -- stand-in text encoder and tokenizer (no transformers needed) ---------------------------------


class TinyTextEncoder(ModelMixin, ConfigMixin):
    """A small transformer text encoder with the call shape of transformers' CLIPTextModel:
    `encoder(input_ids)[0]` is the last hidden state [B, L, hidden_size]."""

    @register_to_config
    def __init__(self, vocab_size: int = 258, hidden_size: int = 32, max_length: int = 16, num_layers: int = 1, num_heads: int = 4) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, hidden_size)
        self.position_embedding = nn.Embedding(max_length, hidden_size)
        layer = nn.TransformerEncoderLayer(hidden_size, num_heads, dim_feedforward=2 * hidden_size, dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.final_layer_norm = nn.LayerNorm(hidden_size)

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor]:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.token_embedding(input_ids) + self.position_embedding(positions)[None]
        return (self.final_layer_norm(self.layers(hidden)),)


@dataclass
class _Tokens:
    input_ids: torch.Tensor


class ByteTokenizer:
    """UTF-8 bytes as tokens (id = byte + 2; 0 = start, 1 = end and padding), with the call shape
    of a transformers tokenizer: `tok(texts, padding="max_length", max_length=L, truncation=True,
    return_tensors="pt").input_ids`. Saved as `tokenizer_config.json`."""

    config_name = "tokenizer_config.json"
    bos_token_id, eos_token_id, pad_token_id = 0, 1, 1

    def __init__(self, model_max_length: int = 16) -> None:
        if model_max_length < 2:
            raise InputError(f"model_max_length must be ≥ 2, got {model_max_length}")
        self.model_max_length = int(model_max_length)

    def __call__(self, texts, padding="max_length", max_length=None, truncation=True, return_tensors="pt"):
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = int(max_length or self.model_max_length)
        rows = []
        for text in texts:
            ids = [self.bos_token_id] + [b + 2 for b in text.encode("utf-8")][: length - 2 if truncation else None] + [self.eos_token_id]
            rows.append(ids + [self.pad_token_id] * (length - len(ids)))
        return _Tokens(torch.tensor(rows, dtype=torch.long))

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / self.config_name).write_text(json.dumps({"tokenizer_class": type(self).__name__, "model_max_length": self.model_max_length}, indent=2))

    @classmethod
    def from_pretrained(cls, folder: str | Path, subfolder: str | None = None, **_ignored) -> ByteTokenizer:
        path = Path(folder) / (subfolder or "") / cls.config_name
        if not path.is_file():
            raise OSError(f"no {cls.config_name} in {path.parent}")
        return cls(int(json.loads(path.read_text()).get("model_max_length", 16)))


register_component("TinyTextEncoder", TinyTextEncoder)
register_component("ByteTokenizer", ByteTokenizer)


def _clip_parts(folder):
    """A tiny CLIPTextModel + CLIPTokenizer (BPE vocabulary written here)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokens = ["<|startoftext|>", "<|endoftext|>", "a</w>", "c", "a", "t</w>", "at</w>", "cat</w>", "d", "o", "g</w>", "do",
              "dog</w>", "r", "e", "d</w>", "ed</w>", "red</w>"]
    (folder / "bpe").mkdir()
    (folder / "bpe" / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "bpe" / "merges.txt").write_text("#version: 0.2\na t</w>\nc at</w>\nd o\ndo g</w>\ne d</w>\nr ed</w>\n")
    tokenizer = CLIPTokenizer(str(folder / "bpe" / "vocab.json"), str(folder / "bpe" / "merges.txt"), model_max_length=8)
    config = CLIPTextConfig(vocab_size=len(tokens), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                            max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPTextModel(config), tokenizer, ["transformers", "CLIPTextModel"], ["transformers", "CLIPTokenizer"]


def _own_parts(folder):
    encoder = TinyTextEncoder(vocab_size=258, hidden_size=32, max_length=12)
    return encoder, ByteTokenizer(model_max_length=12), ["minority_core", "TinyTextEncoder"], ["minority_core", "ByteTokenizer"]


def build_tiny_pipeline(folder, text: str = "clip", prediction_type: str = "epsilon") -> str:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
    )
    encoder, tokenizer, encoder_entry, tokenizer_entry = (_clip_parts if text == "clip" else _own_parts)(folder)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type=prediction_type, clip_sample=False)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    encoder.save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    scheduler.save_pretrained(folder / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1", "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "text_encoder": encoder_entry, "tokenizer": tokenizer_entry,
             "scheduler": ["diffusers", "DDIMScheduler"], "safety_checker": [None, None], "feature_extractor": [None, None]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return str(folder)
