"""Tiny diffusers pipelines built from configs, saved with safetensors into a folder.

No hub access: the CLIP tokenizer's vocabulary (byte-level BPE, bytes only, a handful of
merges) is written here. ``save_tiny_text_pipeline(folder)`` gives a Stable Diffusion
pipeline (16x16 images) that runs a step in milliseconds on a CPU; HTTP tests reuse it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

MERGES = ["c a", "ca t</w>", "d o", "do g</w>", "r e", "re d</w>"]


def _byte_chars() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            chars.append(256 + n)
            n += 1
    return [chr(c) for c in chars]


def write_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """vocab.json and merges.txt of a tiny CLIP tokenizer; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = _byte_chars() + [c + "</w>" for c in _byte_chars()]
    tokens += [m.replace(" ", "") for m in MERGES] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    return folder / "vocab.json", folder / "merges.txt"


def _tiny_vae():  # type: ignore[no-untyped-def]
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        sample_size=16,
    )


def build_tiny_text_pipeline(scratch: Path, seed: int = 0):  # type: ignore[no-untyped-def]
    """A StableDiffusionPipeline of tiny random components (16x16 images, 4 latent channels)."""
    from diffusers import (
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        cross_attention_dim=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=4,
    )
    vae = _tiny_vae()
    vocab, merges = write_tokenizer_files(scratch / "tokenizer-src")
    tokenizer = CLIPTokenizer(vocab=str(vocab), merges=str(merges), model_max_length=16)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_text_pipeline(folder: Path, seed: int = 0) -> Path:
    """Build the tiny text-to-image pipeline and save it (safetensors) into ``folder``."""
    folder = Path(folder)
    pipe = build_tiny_text_pipeline(folder.parent / f"{folder.name}-scratch", seed)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_unet_pipeline(folder: Path, seed: int = 0, num_classes: int | None = None) -> Path:
    """A DDPMPipeline of a tiny random UNet2DModel (16x16, 1 channel), saved into ``folder``."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        num_class_embeds=num_classes,
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=100)).save_pretrained(
        folder, safe_serialization=True
    )
    return Path(folder)


def save_tiny_class_pipeline(folder: Path, seed: int = 0) -> Path:
    """A DiTPipeline (class-conditional latent transformer, no step callback) of tiny random
    components (16x16 images), saved into ``folder``."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=1,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=1000,  # the pipeline's null class is 1000
    )
    DiTPipeline(
        transformer=transformer, vae=_tiny_vae(), scheduler=DDIMScheduler()
    ).save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def save_tiny_lora(pipeline_folder: Path, out_file: Path, seed: int = 0, rank: int = 4) -> Path:
    """A LoRA adapter (diffusers/peft format, safetensors) for the UNet of the tiny text
    pipeline in ``pipeline_folder``: random low-rank updates of the attention projections,
    large enough to change the image at scale 1."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(Path(pipeline_folder) / "unet", use_safetensors=True)
    torch.manual_seed(seed)
    unet.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=rank,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            init_lora_weights="gaussian",
        )
    )
    with torch.no_grad():  # gaussian init leaves B at zero: give it weight too
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    out_file = Path(out_file)
    StableDiffusionPipeline.save_lora_weights(
        out_file.parent, unet_lora_layers=layers, weight_name=out_file.name, safe_serialization=True
    )
    return out_file


def save_tiny_controlnet(pipeline_folder: Path, out_folder: Path, seed: int = 0) -> Path:
    """A ControlNetModel (safetensors folder) for the UNet of the tiny text pipeline in
    ``pipeline_folder``: ``from_unet`` copies its encoder; the zero convolutions that would
    make it a no-op until trained get random weights, so a control image steers the image.
    Its conditioning embedding halves the side once, as the tiny VAE does."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(pipeline_folder) / "unet", use_safetensors=True)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8))
    torch.manual_seed(seed)
    with torch.no_grad():
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.weight.normal_(0, 0.3)
        # the control image's own path, strong enough that two control images differ
        controlnet.controlnet_cond_embedding.conv_out.weight.normal_(0, 3.0)
    controlnet.save_pretrained(out_folder, safe_serialization=True)
    return Path(out_folder)
