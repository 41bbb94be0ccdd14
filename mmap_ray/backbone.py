"""Load a frozen open_clip CLIP backbone and read its geometry from the loaded model.

MmAP prompts both towers of a ViT CLIP, so we need an image tower that is open_clip's
`VisionTransformer` and a text tower built into the `CLIP` class (token embedding, causal transformer,
`ln_final`, projection) with the CLIP BPE tokenizer. Everything the prompt code needs (widths, depths,
context length, special token ids) is read here from the loaded model, never hard-coded, so that any
such backbone works: ViT-B-16, ViT-B-32, ViT-L-14, ViT-M-16, or our tiny toy CLIP.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import VisionTransformer
from torch import nn

from .config import NO_WEIGHTS, TINY_MODEL  # noqa: F401  (the names callers know)

# Our own architectures (the tiny toy CLIP), registered with open_clip so they load by name.
MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")

SUPPORTED = (
    "open_clip CLIP models with a ViT image tower (open_clip.transformer.VisionTransformer, no attentional "
    "pooler), the built-in causal text transformer and the CLIP BPE tokenizer, e.g. ViT-B-16, ViT-B-32, "
    "ViT-L-14, ViT-M-16, ViT-S-16"
)


@dataclass(frozen=True)
class BackboneConfig:
    """Which open_clip model to load and with which weights.

    model: an open_clip model name (`open_clip.list_models()`), e.g. "ViT-B-16".
    pretrained: None (or "none", as on the command line) for random weights, an open_clip pretrained tag
        (e.g. "openai", needs the model hub or a populated cache), or a path to a local checkpoint file.
    """

    model: str = "ViT-B-16"
    pretrained: str | None = None

    def __post_init__(self) -> None:
        if self.pretrained in NO_WEIGHTS:
            object.__setattr__(self, "pretrained", None)
        known = open_clip.list_models()
        if self.model not in known:
            vit = [m for m in known if m.startswith("ViT-")][:12]
            raise ValueError(
                f"BackboneConfig.model={self.model!r} is not an open_clip model name; "
                f"valid names come from open_clip.list_models(), e.g. {', '.join(vit)}"
            )
        if self.pretrained is not None:
            tags = open_clip.list_pretrained_tags_by_model(self.model)
            if self.pretrained not in tags and not Path(self.pretrained).is_file():
                looks_like_path = os.sep in self.pretrained or self.pretrained.endswith(WEIGHT_SUFFIXES)
                raise ValueError(
                    f"BackboneConfig.pretrained={self.pretrained!r}: no such file"
                    f"{'' if looks_like_path else f' and not a pretrained tag of {self.model}'}; "
                    f"give a weights file ({', '.join(WEIGHT_SUFFIXES)}), an open_clip pretrained tag of "
                    f"{self.model} ({', '.join(tags) or 'none for this model'}), or None for random weights"
                )


@dataclass(frozen=True)
class BackboneInfo:
    """Geometry of a loaded backbone: what prompt shapes and validation depend on."""

    name: str
    text_width: int
    vision_width: int
    text_layers: int
    vision_layers: int
    embed_dim: int
    context_length: int
    sot_token_id: int
    eot_token_id: int
    num_params: int


def check_promptable(model: nn.Module, tokenizer: object, name: str = "backbone") -> None:
    """Raise ValueError unless `model` is a CLIP whose two towers we know how to prompt."""
    problems = []
    if not isinstance(model, CLIP):
        problems.append(
            f"its class is {type(model).__name__}, not open_clip.model.CLIP (custom text towers are not supported)"
        )
    else:
        if not isinstance(model.visual, VisionTransformer):
            problems.append(f"its image tower is {type(model.visual).__name__}, not a VisionTransformer")
        elif model.visual.attn_pool is not None:
            problems.append("its image tower pools with an attentional pooler")
        if not (model.transformer.batch_first and getattr(model.visual, "transformer", model.transformer).batch_first):
            problems.append("its transformers are not batch-first")
    if not isinstance(tokenizer, SimpleTokenizer):
        problems.append(f"its tokenizer is {type(tokenizer).__name__}, not the CLIP BPE SimpleTokenizer")
    if problems:
        raise ValueError(f"cannot prompt {name!r}: {'; '.join(problems)}. Supported: {SUPPORTED}")


def backbone_info(model: CLIP, tokenizer: SimpleTokenizer, name: str) -> BackboneInfo:
    """Read the geometry we depend on from a loaded (promptable) model."""
    return BackboneInfo(
        name=name,
        text_width=model.transformer.width,
        vision_width=model.visual.transformer.width,
        text_layers=len(model.transformer.resblocks),
        vision_layers=len(model.visual.transformer.resblocks),
        embed_dim=model.text_projection.shape[-1] if model.text_projection is not None else model.transformer.width,
        context_length=model.context_length,
        sot_token_id=tokenizer.sot_token_id,
        eot_token_id=tokenizer.eot_token_id,
        num_params=sum(p.numel() for p in model.parameters()),
    )


def freeze(model: nn.Module) -> nn.Module:
    """Freeze every parameter and put the model in eval mode (no dropout, no patch dropout)."""
    model.requires_grad_(False)
    return model.eval()


@dataclass
class Backbone:
    """A loaded, frozen CLIP with its tokenizer, geometry and preprocessing transforms."""

    model: CLIP
    tokenizer: SimpleTokenizer
    info: BackboneInfo
    preprocess_train: object = None
    preprocess_val: object = None


def load_backbone(cfg: BackboneConfig, device: str | torch.device = "cpu") -> Backbone:
    """Create the open_clip model named by `cfg`, load its weights, check it can be prompted, freeze it."""
    pretrained = cfg.pretrained or None
    local = pretrained is not None and Path(pretrained).is_file()  # else a tag open_clip downloads or caches
    # open_clip's "No pretrained weights loaded ... initialized randomly" is wrong when we load a local file
    # next, and noise when random weights are what was asked for
    with quiet_random_init(local or pretrained is None):
        model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
            cfg.model, pretrained=None if local else pretrained, device=device
        )
    if local:
        load_weights_file(model, Path(pretrained), cfg.model)
    tokenizer = open_clip.get_tokenizer(cfg.model)
    check_promptable(model, tokenizer, cfg.model)
    freeze(model)
    return Backbone(
        model=model,
        tokenizer=tokenizer,
        info=backbone_info(model, tokenizer, cfg.model),
        preprocess_train=preprocess_train,
        preprocess_val=preprocess_val,
    )


@contextmanager
def quiet_random_init(active: bool = True) -> Iterator[None]:
    """Drop open_clip's "... Model initialized randomly" log line while creating a model (when `active`)."""
    quiet = logging.Filter()
    quiet.filter = lambda record: "initialized randomly" not in record.getMessage()  # type: ignore[method-assign]
    if active:
        logging.getLogger().addFilter(quiet)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(quiet)


def load_weights_file(model: CLIP, path: Path, name: str) -> None:
    """Load a local weights file into `model` without running code from it; mismatches are named.

    Accepts what open_clip's own loader accepts for a CLIP: a state dict, or a dict holding one under
    "state_dict", keys optionally prefixed "module." (DDP), positional embeddings of another resolution.
    """
    from open_clip.model import resize_pos_embed, resize_text_pos_embed

    from .safeload import load_tensor_file

    what = f"pretrained weights file for {name}"
    state = load_tensor_file(path, what)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not (
        isinstance(state, dict)
        and state
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        held = f"a {type(state).__name__}" + (f" with keys {list(state)[:5]}" if isinstance(state, dict) else "")
        raise ValueError(
            f"{what} {path} holds {held}, not a state dict (parameter name -> tensor) of an open_clip "
            f"model; save one with torch.save(model.state_dict(), path)"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    if "logit_scale" in state and state["logit_scale"].ndim != own["logit_scale"].ndim:
        state["logit_scale"] = state["logit_scale"].reshape(own["logit_scale"].shape)
    for key, resize in (
        ("visual.positional_embedding", resize_pos_embed),
        ("positional_embedding", resize_text_pos_embed),
    ):
        if key in state and key in own and state[key].shape[-1] == own[key].shape[-1]:  # same width: other length
            resize(state, model)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        said = [
            f"{len(items)} {kind}: {items[:3]}{' ...' if len(items) > 3 else ''}"
            for kind, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches (file vs model)", shapes),
            )
            if items
        ]
        raise ValueError(
            f"{what} {path} does not match the architecture {name!r}: {'; '.join(said)}. Give the "
            f"weights of {name}, or the --model these weights were saved from"
        )
    model.load_state_dict(state, strict=True)
