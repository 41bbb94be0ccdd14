"""Pretrain the tiny toy CLIP on captioned toy images, like web-scale CLIP but in about a minute on a CPU.

Why: a randomly initialised CLIP has chance zero-shot accuracy and gives prompts nothing to align, so the
embedded default could not show MmAP's behaviour. We pretrain `mmap-ViT-Tiny-8` contrastively on
captioned images drawn mostly from the photo-like RealWorld domain (like web data), so zero-shot is
clearly above chance but weaker on the illustration domains: the gap that prompt tuning should close.
For `toy2` and `toy3` (the grouping benchmarks) the recipe is `TOY2_RECIPE`: every domain equally, so what the
backbone saw crosses the planted groups.

One backbone on every CPU: the two shipped recipes' weights are package files (`weights/*.safetensors`,
15.4 MB each), built once with `python -m mmap_ray.toyclip --write` and checked against their SHA-256
whenever they are loaded. Rebuilding them is not an option for identical weights: the pretraining's
floating-point results depend on the CPU's vector instructions and on MKL's code path per vendor (measured:
an Intel Xeon with AVX-512, an AMD EPYC with AVX2 and one with AVX-512 each built other weights, and so does
`ATEN_CPU_CAPABILITY=default` on one machine), while a 15 MB file costs nothing to check (about 50 ms) and
saves the 45-55 s pretraining on first use. Any other recipe (tests, experiments) is built on first use and
cached as safetensors under a content key (config + seed + code version + the architecture's JSON), so a
changed recipe never reuses a stale model; the write is atomic.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .backbone import TINY_MODEL, quiet_random_init
from .cache import cache_dir
from .data.toy import CLASSES, DOMAINS, MEAN, STD, _seed, render
from .engine import warmup_cosine

# Bump when the pretraining or rendering code changes what a cached checkpoint would contain.
CODE_VERSION = 4  # 4: cached as safetensors; 3: threads pinned (a Ray worker's 1 thread built other weights)
# The weights depend on how many threads split each reduction, not on the machine's cores: pinned, so a
# driver and a Ray worker (OMP_NUM_THREADS=1) build the same checkpoint on one machine.
PRETRAIN_THREADS = 2
WEIGHTS_DIR = Path(__file__).parent / "weights"
CAPTIONS = ("a photo of a {}.", "a {}.", "a photo of the {}.", "a picture of a {}.", "an image of a {}.")


@dataclass(frozen=True)
class ToyCLIPConfig:
    """Recipe of the tiny CLIP's contrastive pretraining."""

    steps: int = 400
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: int = 100
    # Share of pretraining images per domain: mostly photo-like, like web-scale data.
    domain_mix: tuple[tuple[str, float], ...] = (("RealWorld", 1.0),)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError(f"ToyCLIPConfig needs steps >= 1 and batch_size >= 2, got {self.steps}, {self.batch_size}")
        bad = [d for d, _ in self.domain_mix if d not in DOMAINS]
        if bad or not self.domain_mix or any(w <= 0 for _, w in self.domain_mix):
            raise ValueError(f"ToyCLIPConfig.domain_mix={self.domain_mix!r}: domains from {DOMAINS}, weights > 0")

    def key(self) -> str:
        arch = open_clip.get_model_config(TINY_MODEL)
        blob = json.dumps({"cfg": asdict(self), "arch": arch, "code": CODE_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


TOY2_RECIPE = ToyCLIPConfig(domain_mix=tuple((d, 1.0) for d in DOMAINS))


@dataclass(frozen=True)
class Shipped:
    """A recipe's weights as shipped in the package: the file below WEIGHTS_DIR, the SHA-256 of its bytes,
    and the `state_digest` of the tensors it holds (what the docs name a backbone by)."""

    file: str
    sha256: str
    digest: str


# Built with `python -m mmap_ray.toyclip --write` on an AMD EPYC with AVX-512 (torch 2.14.1), 2026-12-05.
SHIPPED = {
    ToyCLIPConfig(): Shipped(
        file="toy-clip-toy.safetensors",
        sha256="82caefa63cc43252e040248918a4b95f080359567ed34e1fe9668ee6084621f0",
        digest="27d2a46a31e59381",
    ),
    TOY2_RECIPE: Shipped(
        file="toy-clip-toy2.safetensors",
        sha256="ba826cf80d77d159159f5ad48877425d0232fa43d484d9009aa3df69c6c4dcc5",
        digest="0370c283543469e5",
    ),
}


def recipe_for(dataset: str) -> ToyCLIPConfig:
    """The pretraining recipe of the tiny CLIP a toy benchmark uses ('toy2', 'toy3', 'family': every domain;
    else RealWorld)."""
    return TOY2_RECIPE if dataset in ("toy2", "toy3", "family") else ToyCLIPConfig()


def _caption_tokens(tokenizer) -> torch.Tensor:
    """(templates, classes, L) caption tokens, truncated to the longest caption."""
    tokens = tokenizer([t.format(c) for t in CAPTIONS for c in CLASSES])
    tokens = tokens[:, : int((tokens != 0).sum(1).max())]
    return tokens.view(len(CAPTIONS), len(CLASSES), -1)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """A short SHA-256 of a state dict's names and tensor bytes: equal weights, equal digest."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def pretrain(cfg: ToyCLIPConfig, progress: bool = True) -> dict[str, torch.Tensor]:
    """Contrastive pretraining from scratch, on PRETRAIN_THREADS threads whatever the caller's setting;
    returns the model's state dict."""
    saved = torch.get_num_threads()
    torch.set_num_threads(PRETRAIN_THREADS)
    try:
        return _pretrain(cfg, progress)
    finally:
        torch.set_num_threads(saved)


def _pretrain(cfg: ToyCLIPConfig, progress: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(cfg.seed)
    with quiet_random_init():  # random weights are what pretraining starts from
        model = open_clip.create_model(TINY_MODEL)
    model.train()
    size = model.visual.image_size[0]
    captions = _caption_tokens(open_clip.get_tokenizer(TINY_MODEL))
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    domains = [d for d, _ in cfg.domain_mix]
    weights = torch.tensor([w for _, w in cfg.domain_mix])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup, cfg.steps))
    g = torch.Generator().manual_seed(_seed(cfg.seed, "toyclip"))
    for _ in tqdm(range(cfg.steps), desc="pretraining tiny CLIP", disable=not progress, mininterval=2):
        labels = torch.randint(len(CLASSES), (cfg.batch_size,), generator=g)  # (B,)
        which = torch.multinomial(weights, cfg.batch_size, replacement=True, generator=g)  # (B,)
        images = torch.empty(cfg.batch_size, 3, size, size)
        for d, name in enumerate(domains):
            sel = (which == d).nonzero().flatten()
            if len(sel):
                images[sel] = render(labels[sel], name, size, g).float() / 255
        images = (images - mean) / std
        template = torch.randint(len(CAPTIONS), (cfg.batch_size,), generator=g)
        text = captions[template, labels]  # (B, L)
        img = F.normalize(model.encode_image(images), dim=-1)  # (B, E)
        txt = F.normalize(_encode_text(model, text), dim=-1)  # (B, E)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T  # (B, B)
        same = (labels[:, None] == labels[None]).float()  # duplicates of a class are all positives
        target = same / same.sum(1, keepdim=True)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.state_dict()


def _encode_text(model, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's encode_text on truncated tokens (the causal mask sliced to match)."""
    L = tokens.shape[1]
    x = model.token_embedding(tokens) + model.positional_embedding[:L]
    x = model.transformer(x, attn_mask=model.attn_mask[:L, :L])
    x = model.ln_final(x)
    return x[torch.arange(len(tokens)), tokens.argmax(-1)] @ model.text_projection


def shipped_weights(cfg: ToyCLIPConfig) -> Path:
    """The package file of a shipped recipe's weights, its SHA-256 checked (ValueError naming the file if not)."""
    shipped = SHIPPED[cfg]
    path = WEIGHTS_DIR / shipped.file
    if not path.is_file():
        raise ValueError(
            f"the tiny CLIP's weights file {path} is missing from the installed package; reinstall mmap-ray"
        )
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    if sha != shipped.sha256:
        raise ValueError(
            f"the tiny CLIP's weights file {path} has SHA-256 {sha[:16]}..., not the shipped {shipped.sha256[:16]}...: "
            f"the file was changed or damaged; reinstall mmap-ray (or rebuild it: python -m mmap_ray.toyclip --write)"
        )
    return path


def pretrained_toy_clip(cfg: ToyCLIPConfig | None = None, progress: bool = True) -> Path:
    """Path of the tiny CLIP's weights for `cfg`: the shipped file (checked) for a shipped recipe, else the
    cached build, pretraining it first if needed."""
    cfg = cfg or ToyCLIPConfig()
    if cfg in SHIPPED:
        return shipped_weights(cfg)
    path = cache_dir() / f"toy-clip-{cfg.key()}.safetensors"
    if not path.is_file():
        write_weights(pretrain(cfg, progress=progress), path)
    return path


def write_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """Save a state dict as safetensors, atomically (readers see no file or the whole file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """Maintainers: rebuild the shipped weights (`--write`), or check whether this CPU reproduces them."""
    parser = argparse.ArgumentParser(prog="python -m mmap_ray.toyclip", description=main.__doc__)
    parser.add_argument("--write", action="store_true", help=f"write the rebuilt files into {WEIGHTS_DIR}")
    args = parser.parse_args(argv)
    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}")
    same = True
    for cfg, shipped in SHIPPED.items():
        state = pretrain(cfg)
        digest = state_digest(state)
        same &= digest == shipped.digest
        print(
            f"{shipped.file}: state digest {digest} ({'same as' if digest == shipped.digest else 'differs from'} "
            f"the shipped {shipped.digest})"
        )
        if args.write:
            path = WEIGHTS_DIR / shipped.file
            write_weights(state, path)
            print(f"  wrote {path}, sha256 {hashlib.sha256(path.read_bytes()).hexdigest()} (paste into SHIPPED)")
    return 0 if same or args.write else 1


if __name__ == "__main__":
    sys.exit(main())
