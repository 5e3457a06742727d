"""A tiny random Stable-Diffusion-layout pipeline folder for tests (VAE + UNet2DConditionModel +
text encoder + tokenizer + scheduler, built from configs): CLIP where transformers is installed,
else this project's stand-in text encoder and byte tokenizer."""

from __future__ import annotations

import importlib.util
import json

import torch

from minority_core.models.latent import ByteTokenizer, TinyTextEncoder

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
PROMPTS = ["a cat", "red dog"]
IMAGE = (3, 16, 16)  # a 2-block VAE halves 16×16 images to 8×8 latents


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
