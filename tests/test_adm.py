"""ADM UNet: published-checkpoint key names/shapes, counts, save/load, forward, fp16, errors.

The key tables and totals below were written from guided-diffusion's construction rules
(unet.py / script_util.py of openai/guided-diffusion) by an enumeration independent of
minority_core.models.adm; the full-size checks run on the meta device, so they cost no memory.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from minority_core.models.adm import ADM_PRESETS, build_adm, load_adm_state_dict, qkv_attention

PRESETS = ["celeba64", "lsun256", "imagenet64", "imagenet64to256"]

# Published-checkpoint keys ("name dim x dim ...") at full width: time embedding, first conv,
# first resblock, first downsampling resblock, first attention block, last input block, the
# whole middle block, first output block, first upsampling output block, last output block, out.

CELEBA64_KEYS = """
time_embed.0.weight 768x192
time_embed.0.bias 768
time_embed.2.weight 768x768
time_embed.2.bias 768
input_blocks.0.0.weight 192x3x3x3
input_blocks.0.0.bias 192
input_blocks.1.0.in_layers.0.weight 192
input_blocks.1.0.in_layers.0.bias 192
input_blocks.1.0.in_layers.2.weight 192x192x3x3
input_blocks.1.0.in_layers.2.bias 192
input_blocks.1.0.emb_layers.1.weight 384x768
input_blocks.1.0.emb_layers.1.bias 384
input_blocks.1.0.out_layers.0.weight 192
input_blocks.1.0.out_layers.0.bias 192
input_blocks.1.0.out_layers.3.weight 192x192x3x3
input_blocks.1.0.out_layers.3.bias 192
input_blocks.4.0.in_layers.0.weight 192
input_blocks.4.0.in_layers.0.bias 192
input_blocks.4.0.in_layers.2.weight 192x192x3x3
input_blocks.4.0.in_layers.2.bias 192
input_blocks.4.0.emb_layers.1.weight 384x768
input_blocks.4.0.emb_layers.1.bias 384
input_blocks.4.0.out_layers.0.weight 192
input_blocks.4.0.out_layers.0.bias 192
input_blocks.4.0.out_layers.3.weight 192x192x3x3
input_blocks.4.0.out_layers.3.bias 192
input_blocks.5.0.in_layers.0.weight 192
input_blocks.5.0.in_layers.0.bias 192
input_blocks.5.0.in_layers.2.weight 384x192x3x3
input_blocks.5.0.in_layers.2.bias 384
input_blocks.5.0.emb_layers.1.weight 768x768
input_blocks.5.0.emb_layers.1.bias 768
input_blocks.5.0.out_layers.0.weight 384
input_blocks.5.0.out_layers.0.bias 384
input_blocks.5.0.out_layers.3.weight 384x384x3x3
input_blocks.5.0.out_layers.3.bias 384
input_blocks.5.0.skip_connection.weight 384x192x1x1
input_blocks.5.0.skip_connection.bias 384
input_blocks.5.1.norm.weight 384
input_blocks.5.1.norm.bias 384
input_blocks.5.1.qkv.weight 1152x384x1
input_blocks.5.1.qkv.bias 1152
input_blocks.5.1.proj_out.weight 384x384x1
input_blocks.5.1.proj_out.bias 384
input_blocks.15.0.in_layers.0.weight 768
input_blocks.15.0.in_layers.0.bias 768
input_blocks.15.0.in_layers.2.weight 768x768x3x3
input_blocks.15.0.in_layers.2.bias 768
input_blocks.15.0.emb_layers.1.weight 1536x768
input_blocks.15.0.emb_layers.1.bias 1536
input_blocks.15.0.out_layers.0.weight 768
input_blocks.15.0.out_layers.0.bias 768
input_blocks.15.0.out_layers.3.weight 768x768x3x3
input_blocks.15.0.out_layers.3.bias 768
input_blocks.15.1.norm.weight 768
input_blocks.15.1.norm.bias 768
input_blocks.15.1.qkv.weight 2304x768x1
input_blocks.15.1.qkv.bias 2304
input_blocks.15.1.proj_out.weight 768x768x1
input_blocks.15.1.proj_out.bias 768
middle_block.0.in_layers.0.weight 768
middle_block.0.in_layers.0.bias 768
middle_block.0.in_layers.2.weight 768x768x3x3
middle_block.0.in_layers.2.bias 768
middle_block.0.emb_layers.1.weight 1536x768
middle_block.0.emb_layers.1.bias 1536
middle_block.0.out_layers.0.weight 768
middle_block.0.out_layers.0.bias 768
middle_block.0.out_layers.3.weight 768x768x3x3
middle_block.0.out_layers.3.bias 768
middle_block.1.norm.weight 768
middle_block.1.norm.bias 768
middle_block.1.qkv.weight 2304x768x1
middle_block.1.qkv.bias 2304
middle_block.1.proj_out.weight 768x768x1
middle_block.1.proj_out.bias 768
middle_block.2.in_layers.0.weight 768
middle_block.2.in_layers.0.bias 768
middle_block.2.in_layers.2.weight 768x768x3x3
middle_block.2.in_layers.2.bias 768
middle_block.2.emb_layers.1.weight 1536x768
middle_block.2.emb_layers.1.bias 1536
middle_block.2.out_layers.0.weight 768
middle_block.2.out_layers.0.bias 768
middle_block.2.out_layers.3.weight 768x768x3x3
middle_block.2.out_layers.3.bias 768
output_blocks.0.0.in_layers.0.weight 1536
output_blocks.0.0.in_layers.0.bias 1536
output_blocks.0.0.in_layers.2.weight 768x1536x3x3
output_blocks.0.0.in_layers.2.bias 768
output_blocks.0.0.emb_layers.1.weight 1536x768
output_blocks.0.0.emb_layers.1.bias 1536
output_blocks.0.0.out_layers.0.weight 768
output_blocks.0.0.out_layers.0.bias 768
output_blocks.0.0.out_layers.3.weight 768x768x3x3
output_blocks.0.0.out_layers.3.bias 768
output_blocks.0.0.skip_connection.weight 768x1536x1x1
output_blocks.0.0.skip_connection.bias 768
output_blocks.0.1.norm.weight 768
output_blocks.0.1.norm.bias 768
output_blocks.0.1.qkv.weight 2304x768x1
output_blocks.0.1.qkv.bias 2304
output_blocks.0.1.proj_out.weight 768x768x1
output_blocks.0.1.proj_out.bias 768
output_blocks.3.0.in_layers.0.weight 1344
output_blocks.3.0.in_layers.0.bias 1344
output_blocks.3.0.in_layers.2.weight 768x1344x3x3
output_blocks.3.0.in_layers.2.bias 768
output_blocks.3.0.emb_layers.1.weight 1536x768
output_blocks.3.0.emb_layers.1.bias 1536
output_blocks.3.0.out_layers.0.weight 768
output_blocks.3.0.out_layers.0.bias 768
output_blocks.3.0.out_layers.3.weight 768x768x3x3
output_blocks.3.0.out_layers.3.bias 768
output_blocks.3.0.skip_connection.weight 768x1344x1x1
output_blocks.3.0.skip_connection.bias 768
output_blocks.3.1.norm.weight 768
output_blocks.3.1.norm.bias 768
output_blocks.3.1.qkv.weight 2304x768x1
output_blocks.3.1.qkv.bias 2304
output_blocks.3.1.proj_out.weight 768x768x1
output_blocks.3.1.proj_out.bias 768
output_blocks.3.2.in_layers.0.weight 768
output_blocks.3.2.in_layers.0.bias 768
output_blocks.3.2.in_layers.2.weight 768x768x3x3
output_blocks.3.2.in_layers.2.bias 768
output_blocks.3.2.emb_layers.1.weight 1536x768
output_blocks.3.2.emb_layers.1.bias 1536
output_blocks.3.2.out_layers.0.weight 768
output_blocks.3.2.out_layers.0.bias 768
output_blocks.3.2.out_layers.3.weight 768x768x3x3
output_blocks.3.2.out_layers.3.bias 768
output_blocks.15.0.in_layers.0.weight 384
output_blocks.15.0.in_layers.0.bias 384
output_blocks.15.0.in_layers.2.weight 192x384x3x3
output_blocks.15.0.in_layers.2.bias 192
output_blocks.15.0.emb_layers.1.weight 384x768
output_blocks.15.0.emb_layers.1.bias 384
output_blocks.15.0.out_layers.0.weight 192
output_blocks.15.0.out_layers.0.bias 192
output_blocks.15.0.out_layers.3.weight 192x192x3x3
output_blocks.15.0.out_layers.3.bias 192
output_blocks.15.0.skip_connection.weight 192x384x1x1
output_blocks.15.0.skip_connection.bias 192
out.0.weight 192
out.0.bias 192
out.2.weight 6x192x3x3
out.2.bias 6
"""

IMAGENET64_KEYS = "label_emb.weight 1000x768\n" + CELEBA64_KEYS

LSUN256_KEYS = """
time_embed.0.weight 1024x256
time_embed.0.bias 1024
time_embed.2.weight 1024x1024
time_embed.2.bias 1024
input_blocks.0.0.weight 256x3x3x3
input_blocks.0.0.bias 256
input_blocks.1.0.in_layers.0.weight 256
input_blocks.1.0.in_layers.0.bias 256
input_blocks.1.0.in_layers.2.weight 256x256x3x3
input_blocks.1.0.in_layers.2.bias 256
input_blocks.1.0.emb_layers.1.weight 512x1024
input_blocks.1.0.emb_layers.1.bias 512
input_blocks.1.0.out_layers.0.weight 256
input_blocks.1.0.out_layers.0.bias 256
input_blocks.1.0.out_layers.3.weight 256x256x3x3
input_blocks.1.0.out_layers.3.bias 256
input_blocks.3.0.in_layers.0.weight 256
input_blocks.3.0.in_layers.0.bias 256
input_blocks.3.0.in_layers.2.weight 256x256x3x3
input_blocks.3.0.in_layers.2.bias 256
input_blocks.3.0.emb_layers.1.weight 512x1024
input_blocks.3.0.emb_layers.1.bias 512
input_blocks.3.0.out_layers.0.weight 256
input_blocks.3.0.out_layers.0.bias 256
input_blocks.3.0.out_layers.3.weight 256x256x3x3
input_blocks.3.0.out_layers.3.bias 256
input_blocks.10.0.in_layers.0.weight 512
input_blocks.10.0.in_layers.0.bias 512
input_blocks.10.0.in_layers.2.weight 512x512x3x3
input_blocks.10.0.in_layers.2.bias 512
input_blocks.10.0.emb_layers.1.weight 1024x1024
input_blocks.10.0.emb_layers.1.bias 1024
input_blocks.10.0.out_layers.0.weight 512
input_blocks.10.0.out_layers.0.bias 512
input_blocks.10.0.out_layers.3.weight 512x512x3x3
input_blocks.10.0.out_layers.3.bias 512
input_blocks.10.1.norm.weight 512
input_blocks.10.1.norm.bias 512
input_blocks.10.1.qkv.weight 1536x512x1
input_blocks.10.1.qkv.bias 1536
input_blocks.10.1.proj_out.weight 512x512x1
input_blocks.10.1.proj_out.bias 512
input_blocks.17.0.in_layers.0.weight 1024
input_blocks.17.0.in_layers.0.bias 1024
input_blocks.17.0.in_layers.2.weight 1024x1024x3x3
input_blocks.17.0.in_layers.2.bias 1024
input_blocks.17.0.emb_layers.1.weight 2048x1024
input_blocks.17.0.emb_layers.1.bias 2048
input_blocks.17.0.out_layers.0.weight 1024
input_blocks.17.0.out_layers.0.bias 1024
input_blocks.17.0.out_layers.3.weight 1024x1024x3x3
input_blocks.17.0.out_layers.3.bias 1024
input_blocks.17.1.norm.weight 1024
input_blocks.17.1.norm.bias 1024
input_blocks.17.1.qkv.weight 3072x1024x1
input_blocks.17.1.qkv.bias 3072
input_blocks.17.1.proj_out.weight 1024x1024x1
input_blocks.17.1.proj_out.bias 1024
middle_block.0.in_layers.0.weight 1024
middle_block.0.in_layers.0.bias 1024
middle_block.0.in_layers.2.weight 1024x1024x3x3
middle_block.0.in_layers.2.bias 1024
middle_block.0.emb_layers.1.weight 2048x1024
middle_block.0.emb_layers.1.bias 2048
middle_block.0.out_layers.0.weight 1024
middle_block.0.out_layers.0.bias 1024
middle_block.0.out_layers.3.weight 1024x1024x3x3
middle_block.0.out_layers.3.bias 1024
middle_block.1.norm.weight 1024
middle_block.1.norm.bias 1024
middle_block.1.qkv.weight 3072x1024x1
middle_block.1.qkv.bias 3072
middle_block.1.proj_out.weight 1024x1024x1
middle_block.1.proj_out.bias 1024
middle_block.2.in_layers.0.weight 1024
middle_block.2.in_layers.0.bias 1024
middle_block.2.in_layers.2.weight 1024x1024x3x3
middle_block.2.in_layers.2.bias 1024
middle_block.2.emb_layers.1.weight 2048x1024
middle_block.2.emb_layers.1.bias 2048
middle_block.2.out_layers.0.weight 1024
middle_block.2.out_layers.0.bias 1024
middle_block.2.out_layers.3.weight 1024x1024x3x3
middle_block.2.out_layers.3.bias 1024
output_blocks.0.0.in_layers.0.weight 2048
output_blocks.0.0.in_layers.0.bias 2048
output_blocks.0.0.in_layers.2.weight 1024x2048x3x3
output_blocks.0.0.in_layers.2.bias 1024
output_blocks.0.0.emb_layers.1.weight 2048x1024
output_blocks.0.0.emb_layers.1.bias 2048
output_blocks.0.0.out_layers.0.weight 1024
output_blocks.0.0.out_layers.0.bias 1024
output_blocks.0.0.out_layers.3.weight 1024x1024x3x3
output_blocks.0.0.out_layers.3.bias 1024
output_blocks.0.0.skip_connection.weight 1024x2048x1x1
output_blocks.0.0.skip_connection.bias 1024
output_blocks.0.1.norm.weight 1024
output_blocks.0.1.norm.bias 1024
output_blocks.0.1.qkv.weight 3072x1024x1
output_blocks.0.1.qkv.bias 3072
output_blocks.0.1.proj_out.weight 1024x1024x1
output_blocks.0.1.proj_out.bias 1024
output_blocks.2.0.in_layers.0.weight 2048
output_blocks.2.0.in_layers.0.bias 2048
output_blocks.2.0.in_layers.2.weight 1024x2048x3x3
output_blocks.2.0.in_layers.2.bias 1024
output_blocks.2.0.emb_layers.1.weight 2048x1024
output_blocks.2.0.emb_layers.1.bias 2048
output_blocks.2.0.out_layers.0.weight 1024
output_blocks.2.0.out_layers.0.bias 1024
output_blocks.2.0.out_layers.3.weight 1024x1024x3x3
output_blocks.2.0.out_layers.3.bias 1024
output_blocks.2.0.skip_connection.weight 1024x2048x1x1
output_blocks.2.0.skip_connection.bias 1024
output_blocks.2.1.norm.weight 1024
output_blocks.2.1.norm.bias 1024
output_blocks.2.1.qkv.weight 3072x1024x1
output_blocks.2.1.qkv.bias 3072
output_blocks.2.1.proj_out.weight 1024x1024x1
output_blocks.2.1.proj_out.bias 1024
output_blocks.2.2.in_layers.0.weight 1024
output_blocks.2.2.in_layers.0.bias 1024
output_blocks.2.2.in_layers.2.weight 1024x1024x3x3
output_blocks.2.2.in_layers.2.bias 1024
output_blocks.2.2.emb_layers.1.weight 2048x1024
output_blocks.2.2.emb_layers.1.bias 2048
output_blocks.2.2.out_layers.0.weight 1024
output_blocks.2.2.out_layers.0.bias 1024
output_blocks.2.2.out_layers.3.weight 1024x1024x3x3
output_blocks.2.2.out_layers.3.bias 1024
output_blocks.17.0.in_layers.0.weight 512
output_blocks.17.0.in_layers.0.bias 512
output_blocks.17.0.in_layers.2.weight 256x512x3x3
output_blocks.17.0.in_layers.2.bias 256
output_blocks.17.0.emb_layers.1.weight 512x1024
output_blocks.17.0.emb_layers.1.bias 512
output_blocks.17.0.out_layers.0.weight 256
output_blocks.17.0.out_layers.0.bias 256
output_blocks.17.0.out_layers.3.weight 256x256x3x3
output_blocks.17.0.out_layers.3.bias 256
output_blocks.17.0.skip_connection.weight 256x512x1x1
output_blocks.17.0.skip_connection.bias 256
out.0.weight 256
out.0.bias 256
out.2.weight 6x256x3x3
out.2.bias 6
"""

IMAGENET64TO256_KEYS = """
time_embed.0.weight 768x192
time_embed.0.bias 768
time_embed.2.weight 768x768
time_embed.2.bias 768
label_emb.weight 1000x768
input_blocks.0.0.weight 192x6x3x3
input_blocks.0.0.bias 192
input_blocks.1.0.in_layers.0.weight 192
input_blocks.1.0.in_layers.0.bias 192
input_blocks.1.0.in_layers.2.weight 192x192x3x3
input_blocks.1.0.in_layers.2.bias 192
input_blocks.1.0.emb_layers.1.weight 384x768
input_blocks.1.0.emb_layers.1.bias 384
input_blocks.1.0.out_layers.0.weight 192
input_blocks.1.0.out_layers.0.bias 192
input_blocks.1.0.out_layers.3.weight 192x192x3x3
input_blocks.1.0.out_layers.3.bias 192
input_blocks.3.0.in_layers.0.weight 192
input_blocks.3.0.in_layers.0.bias 192
input_blocks.3.0.in_layers.2.weight 192x192x3x3
input_blocks.3.0.in_layers.2.bias 192
input_blocks.3.0.emb_layers.1.weight 384x768
input_blocks.3.0.emb_layers.1.bias 384
input_blocks.3.0.out_layers.0.weight 192
input_blocks.3.0.out_layers.0.bias 192
input_blocks.3.0.out_layers.3.weight 192x192x3x3
input_blocks.3.0.out_layers.3.bias 192
input_blocks.10.0.in_layers.0.weight 384
input_blocks.10.0.in_layers.0.bias 384
input_blocks.10.0.in_layers.2.weight 384x384x3x3
input_blocks.10.0.in_layers.2.bias 384
input_blocks.10.0.emb_layers.1.weight 768x768
input_blocks.10.0.emb_layers.1.bias 768
input_blocks.10.0.out_layers.0.weight 384
input_blocks.10.0.out_layers.0.bias 384
input_blocks.10.0.out_layers.3.weight 384x384x3x3
input_blocks.10.0.out_layers.3.bias 384
input_blocks.10.1.norm.weight 384
input_blocks.10.1.norm.bias 384
input_blocks.10.1.qkv.weight 1152x384x1
input_blocks.10.1.qkv.bias 1152
input_blocks.10.1.proj_out.weight 384x384x1
input_blocks.10.1.proj_out.bias 384
input_blocks.17.0.in_layers.0.weight 768
input_blocks.17.0.in_layers.0.bias 768
input_blocks.17.0.in_layers.2.weight 768x768x3x3
input_blocks.17.0.in_layers.2.bias 768
input_blocks.17.0.emb_layers.1.weight 1536x768
input_blocks.17.0.emb_layers.1.bias 1536
input_blocks.17.0.out_layers.0.weight 768
input_blocks.17.0.out_layers.0.bias 768
input_blocks.17.0.out_layers.3.weight 768x768x3x3
input_blocks.17.0.out_layers.3.bias 768
input_blocks.17.1.norm.weight 768
input_blocks.17.1.norm.bias 768
input_blocks.17.1.qkv.weight 2304x768x1
input_blocks.17.1.qkv.bias 2304
input_blocks.17.1.proj_out.weight 768x768x1
input_blocks.17.1.proj_out.bias 768
middle_block.0.in_layers.0.weight 768
middle_block.0.in_layers.0.bias 768
middle_block.0.in_layers.2.weight 768x768x3x3
middle_block.0.in_layers.2.bias 768
middle_block.0.emb_layers.1.weight 1536x768
middle_block.0.emb_layers.1.bias 1536
middle_block.0.out_layers.0.weight 768
middle_block.0.out_layers.0.bias 768
middle_block.0.out_layers.3.weight 768x768x3x3
middle_block.0.out_layers.3.bias 768
middle_block.1.norm.weight 768
middle_block.1.norm.bias 768
middle_block.1.qkv.weight 2304x768x1
middle_block.1.qkv.bias 2304
middle_block.1.proj_out.weight 768x768x1
middle_block.1.proj_out.bias 768
middle_block.2.in_layers.0.weight 768
middle_block.2.in_layers.0.bias 768
middle_block.2.in_layers.2.weight 768x768x3x3
middle_block.2.in_layers.2.bias 768
middle_block.2.emb_layers.1.weight 1536x768
middle_block.2.emb_layers.1.bias 1536
middle_block.2.out_layers.0.weight 768
middle_block.2.out_layers.0.bias 768
middle_block.2.out_layers.3.weight 768x768x3x3
middle_block.2.out_layers.3.bias 768
output_blocks.0.0.in_layers.0.weight 1536
output_blocks.0.0.in_layers.0.bias 1536
output_blocks.0.0.in_layers.2.weight 768x1536x3x3
output_blocks.0.0.in_layers.2.bias 768
output_blocks.0.0.emb_layers.1.weight 1536x768
output_blocks.0.0.emb_layers.1.bias 1536
output_blocks.0.0.out_layers.0.weight 768
output_blocks.0.0.out_layers.0.bias 768
output_blocks.0.0.out_layers.3.weight 768x768x3x3
output_blocks.0.0.out_layers.3.bias 768
output_blocks.0.0.skip_connection.weight 768x1536x1x1
output_blocks.0.0.skip_connection.bias 768
output_blocks.0.1.norm.weight 768
output_blocks.0.1.norm.bias 768
output_blocks.0.1.qkv.weight 2304x768x1
output_blocks.0.1.qkv.bias 2304
output_blocks.0.1.proj_out.weight 768x768x1
output_blocks.0.1.proj_out.bias 768
output_blocks.2.0.in_layers.0.weight 1536
output_blocks.2.0.in_layers.0.bias 1536
output_blocks.2.0.in_layers.2.weight 768x1536x3x3
output_blocks.2.0.in_layers.2.bias 768
output_blocks.2.0.emb_layers.1.weight 1536x768
output_blocks.2.0.emb_layers.1.bias 1536
output_blocks.2.0.out_layers.0.weight 768
output_blocks.2.0.out_layers.0.bias 768
output_blocks.2.0.out_layers.3.weight 768x768x3x3
output_blocks.2.0.out_layers.3.bias 768
output_blocks.2.0.skip_connection.weight 768x1536x1x1
output_blocks.2.0.skip_connection.bias 768
output_blocks.2.1.norm.weight 768
output_blocks.2.1.norm.bias 768
output_blocks.2.1.qkv.weight 2304x768x1
output_blocks.2.1.qkv.bias 2304
output_blocks.2.1.proj_out.weight 768x768x1
output_blocks.2.1.proj_out.bias 768
output_blocks.2.2.in_layers.0.weight 768
output_blocks.2.2.in_layers.0.bias 768
output_blocks.2.2.in_layers.2.weight 768x768x3x3
output_blocks.2.2.in_layers.2.bias 768
output_blocks.2.2.emb_layers.1.weight 1536x768
output_blocks.2.2.emb_layers.1.bias 1536
output_blocks.2.2.out_layers.0.weight 768
output_blocks.2.2.out_layers.0.bias 768
output_blocks.2.2.out_layers.3.weight 768x768x3x3
output_blocks.2.2.out_layers.3.bias 768
output_blocks.17.0.in_layers.0.weight 384
output_blocks.17.0.in_layers.0.bias 384
output_blocks.17.0.in_layers.2.weight 192x384x3x3
output_blocks.17.0.in_layers.2.bias 192
output_blocks.17.0.emb_layers.1.weight 384x768
output_blocks.17.0.emb_layers.1.bias 384
output_blocks.17.0.out_layers.0.weight 192
output_blocks.17.0.out_layers.0.bias 192
output_blocks.17.0.out_layers.3.weight 192x192x3x3
output_blocks.17.0.out_layers.3.bias 192
output_blocks.17.0.skip_connection.weight 192x384x1x1
output_blocks.17.0.skip_connection.bias 192
out.0.weight 192
out.0.bias 192
out.2.weight 6x192x3x3
out.2.bias 6
"""

KEY_TABLES = {
    "celeba64": CELEBA64_KEYS,
    "imagenet64": IMAGENET64_KEYS,
    "lsun256": LSUN256_KEYS,
    "imagenet64to256": IMAGENET64TO256_KEYS,
}

# (state_dict entries, parameters) of the full models.  ImageNet-64 = CelebA-64 + the 1000x768
# label embedding; 295,904,454 matches the ~295.9M reported for guided-diffusion's 64x64 model.
FULL_TOTALS = {
    "celeba64": (540, 295_136_454),
    "imagenet64": (541, 295_904_454),
    "lsun256": (566, 552_814_086),
    "imagenet64to256": (567, 311_795_910),
}

# Reduced width, same module structure (hence the same key names).  Head width only changes
# how channels are split between heads, never a parameter, so it may shrink with the width.
SMALL = {
    "celeba64": dict(num_channels=32, num_head_channels=32, use_fp16=False),
    "imagenet64": dict(num_channels=32, num_head_channels=32, use_fp16=False),
    "lsun256": dict(num_channels=32, use_fp16=False),
    "imagenet64to256": dict(num_channels=32, use_fp16=False),
}


def parse_table(table: str) -> dict[str, tuple[int, ...]]:
    rows = (line.split() for line in table.splitlines() if line.strip())
    return {name: tuple(int(d) for d in dims.split("x")) for name, dims in rows}


def full_on_meta(preset: str) -> torch.nn.Module:
    with torch.device("meta"):
        return build_adm(preset)


def small(preset: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A reduced-width model with every weight random (the zero-initialised output convs
    would otherwise make every output 0 and every comparison vacuous)."""
    torch.manual_seed(seed)
    model = build_adm(preset, **(SMALL[preset] | overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    return model


def inputs(preset: str, batch: int, size: int | None = None) -> dict[str, torch.Tensor]:
    size = size or ADM_PRESETS[preset]["unet"]["image_size"]
    args = {"x": torch.randn(batch, 3, size, size), "timesteps": torch.arange(batch) * 300 + 7}
    if ADM_PRESETS[preset]["diffusion"]["num_classes"]:
        args["y"] = torch.arange(batch) + 5
    if ADM_PRESETS[preset]["unet"]["super_res"]:
        args["low_res"] = torch.randn(batch, 3, size // 4, size // 4)
    return args


@pytest.mark.parametrize("preset", PRESETS)
def test_full_size_matches_published_keys_and_counts(preset: str) -> None:
    model = full_on_meta(preset)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = parse_table(KEY_TABLES[preset])
    assert len(expected) > 140
    wrong = {k: (shapes.get(k), v) for k, v in expected.items() if shapes.get(k) != v}
    assert not wrong
    n_keys, n_params = FULL_TOTALS[preset]
    assert len(shapes) == n_keys
    assert sum(p.numel() for p in model.parameters()) == n_params


@pytest.mark.parametrize("preset", PRESETS)
def test_reduced_width_keeps_key_names(preset: str) -> None:
    with torch.device("meta"):
        reduced = build_adm(preset, **SMALL[preset])
    assert list(reduced.state_dict()) == list(full_on_meta(preset).state_dict())


def test_presets_separate_architecture_and_diffusion() -> None:
    assert ADM_PRESETS["celeba64"]["diffusion"]["noise_schedule"] == "cosine"
    assert ADM_PRESETS["imagenet64"]["diffusion"]["noise_schedule"] == "cosine"
    assert ADM_PRESETS["lsun256"]["diffusion"]["noise_schedule"] == "linear"
    assert ADM_PRESETS["imagenet64to256"]["diffusion"]["small_size"] == 64
    for preset in PRESETS:
        assert ADM_PRESETS[preset]["diffusion"]["diffusion_steps"] == 1000
        assert ADM_PRESETS[preset]["diffusion"]["learn_sigma"] is True
        assert "diffusion_steps" not in ADM_PRESETS[preset]["unet"]


@pytest.mark.parametrize("preset", PRESETS)
def test_forward_shape(preset: str) -> None:
    model = small(preset)
    args = inputs(preset, batch=2 if preset.endswith("64") else 1)
    with torch.no_grad():
        out = model(**args)
    n, _, h, w = args["x"].shape
    assert out.shape == (n, 6, h, w) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.abs().sum() > 0
    if "y" in args:
        with pytest.raises(ValueError, match="class-conditional"):
            model(**(args | {"y": None}))


def test_super_res_uses_low_res() -> None:
    model = small("imagenet64to256")
    args = inputs("imagenet64to256", batch=1, size=64)  # size only sets this test's cost
    with torch.no_grad():
        a = model(**args)
        b = model(**(args | {"low_res": args["low_res"] + 1.0}))
    assert model.input_blocks[0][0].in_channels == 6
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="low_res"):
        model(args["x"], args["timesteps"], y=args["y"])


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
@pytest.mark.parametrize("preset", PRESETS)
def test_save_and_strict_load_round_trip(preset: str, fmt: str, tmp_path) -> None:
    source, target = small(preset, seed=0), small(preset, seed=1)
    path = tmp_path / f"ckpt.{fmt}"
    if fmt == "pt":
        torch.save(source.state_dict(), path)
    else:
        save_file(source.state_dict(), path)
    load_adm_state_dict(target, path)
    loaded = target.state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded[key], value), key


def test_fp16_torso_float32_io() -> None:
    ref = small("celeba64")
    half = build_adm("celeba64", **(SMALL["celeba64"] | {"use_fp16": True})).eval()
    half.load_state_dict(ref.state_dict())
    assert half.input_blocks[1][0].in_layers[2].weight.dtype == torch.float16
    assert half.middle_block[1].qkv.weight.dtype == torch.float16
    assert half.output_blocks[-1][0].skip_connection.weight.dtype == torch.float16
    assert half.middle_block[1].norm.weight.dtype == torch.float32  # GroupNorm32 stays float32
    assert half.input_blocks[1][0].emb_layers[1].weight.dtype == torch.float32
    assert half.time_embed[0].weight.dtype == torch.float32
    assert half.out[2].weight.dtype == torch.float32
    args = inputs("celeba64", batch=1, size=16)  # CPU float16 convs are slow: a small input
    with torch.no_grad():
        out16, out32 = half(**args), ref(**args)
    assert out16.dtype == torch.float32
    assert (out16 - out32).abs().max() <= 2e-2 * out32.abs().max()


@pytest.mark.parametrize("legacy", [True, False])
def test_attention_orders(legacy: bool) -> None:
    heads, ch, length = 3, 4, 5
    qkv = torch.randn(2, 3 * heads * ch, length)
    if legacy:  # per head: [q | k | v]
        q, k, v = qkv.reshape(2, heads, 3, ch, length).unbind(2)
    else:  # [all q | all k | all v], each split in heads
        q, k, v = qkv.reshape(2, 3, heads, ch, length).unbind(1)
    weights = torch.softmax(torch.einsum("bhct,bhcs->bhts", q, k) / ch**0.5, dim=-1)
    expected = torch.einsum("bhts,bhcs->bhct", weights, v).reshape(2, heads * ch, length)
    torch.testing.assert_close(qkv_attention(qkv, heads, legacy_order=legacy), expected)
    assert not torch.allclose(qkv_attention(qkv, heads, legacy_order=not legacy), expected)


@pytest.mark.parametrize(
    ("saved", "loaded", "overrides", "expect"),
    [
        ("celeba64", "imagenet64", {}, "label_emb.weight.*num_classes"),
        ("imagenet64", "celeba64", {}, "label_emb.weight.*num_classes"),
        ("celeba64", "celeba64", {"learn_sigma": False}, "out.2.weight.*learn_sigma"),
        ("lsun256", "imagenet64to256", {"num_classes": None}, "input_blocks.0.0.weight.*super_res"),
        ("lsun256", "celeba64", {}, "missing.*unexpected.*num_res_blocks or image_size"),
        ("celeba64", "celeba64", {"use_scale_shift_norm": False}, "emb_layers.1.weight.*use_scale_shift_norm"),
    ],
)
def test_wrong_preset_load_is_one_line_error(saved, loaded, overrides, expect, tmp_path) -> None:
    with torch.device("meta"):
        shapes = build_adm(saved, **SMALL[saved]).state_dict()
    path = tmp_path / "wrong.pt"
    torch.save({k: torch.zeros(v.shape) for k, v in shapes.items()}, path)
    target = build_adm(loaded, **(SMALL[loaded] | overrides))
    with pytest.raises(ValueError, match=expect) as err:
        load_adm_state_dict(target, path)
    assert "\n" not in str(err.value)


def test_unknown_names_raise() -> None:
    with pytest.raises(ValueError, match="num_chanels.*valid:.*num_channels") as err:
        build_adm("celeba64", num_chanels=32)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="celeba64"):
        build_adm("celeba128")
