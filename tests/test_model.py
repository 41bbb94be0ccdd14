"""PromptedCLIP against open_clip itself and against a hand-written, loop-based reference forward."""

import pytest
import torch
import torch.nn.functional as F
from conftest import TASKS, images_for

from mmap_ray.model import PromptedCLIP, count_parameters
from mmap_ray.prompts import MmAPConfig

PARTITION = "Art+Clipart|Product+RealWorld"
NO_PROMPTS = MmAPConfig(layers=())


def _randomise(model: PromptedCLIP, seed: int = 0) -> None:
    """Give every prompt parameter distinct, non-trivial values (factors start at ones)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.bank.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


# ---- no alignment layers: exactly open_clip --------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny", "vitb16"])
def test_no_prompts_reproduces_open_clip_exactly(name, request):
    backbone = request.getfixturevalue(name)
    clip = backbone.model
    model = PromptedCLIP(backbone, TASKS, NO_PROMPTS, PARTITION, truncate_context=False)
    images = images_for(backbone, 2)
    with torch.no_grad():
        assert (model.encode_image(images) - clip.encode_image(images)).abs().max().item() == 0.0
        assert model.text_tokens.shape[1] == 77
        got = model.encode_text(model.text_tokens)
        assert (got - clip.encode_text(model.text_tokens)).abs().max().item() == 0.0
        # the full multi-task forward with no prompts is CLIP zero-shot with the template
        assert model.bank(torch.tensor([0])).vision is None


@pytest.mark.parametrize("name", ["tiny", "vitb16"])
def test_truncated_context_within_1e6(name, request):
    backbone = request.getfixturevalue(name)
    model = PromptedCLIP(backbone, TASKS, NO_PROMPTS, PARTITION, truncate_context=True)
    tokens = model.text_tokens
    assert tokens.shape[1] < 77 and bool((tokens[:, -1] != 0).any())  # cut at the longest prompt
    full = F.pad(tokens, (0, 77 - tokens.shape[1]))
    with torch.no_grad():
        got, ref = model.encode_text(tokens), backbone.model.encode_text(full)
    # Different sequence lengths change matmul blocking, so agreement is to float32 rounding: 1e-6 on the
    # unit-norm features the logits use, and about 1e-6 relative to the features' scale on the raw ones
    # (ViT-B-16 with random weights, 2 threads: 3.3e-6 on features of magnitude 3.1).
    assert (F.normalize(got, dim=-1) - F.normalize(ref, dim=-1)).abs().max().item() <= 1e-6
    assert (got - ref).abs().max().item() <= 2e-6 * ref.abs().max().item()


def test_class_prompts_match_the_tokenizer(tiny):
    model = PromptedCLIP(tiny, TASKS, MmAPConfig(n_tokens=3), PARTITION, truncate_context=False)
    ref = tiny.tokenizer(["X X X X X X " + c + "." for t in TASKS for c in TASKS[t]])
    assert torch.equal(model.text_tokens, ref)
    zs = PromptedCLIP(tiny, TASKS, NO_PROMPTS, PARTITION, truncate_context=False)
    assert torch.equal(zs.text_tokens, tiny.tokenizer([f"a photo of a {c}." for t in TASKS for c in TASKS[t]]))


# ---- with prompts: a loop-based reference --------------------------------------------------------------


def _ref_prompts(model: PromptedCLIP, tower: str, task: int) -> dict[int, torch.Tensor]:
    """Per layer, task `task`'s combined prompt built with torch.kron and explicit group lookup."""
    bank, cfg = model.bank, model.cfg
    group = model.partition.group_index()[task]
    layers = bank.layers.text if tower == "text" else bank.layers.vision
    out = {}
    for li, layer in enumerate(layers):
        u = bank.layers.union.index(layer)
        parts = []
        for gen, row in ((bank.groups, group), (bank.task_specific, task)):
            factor = gen.text_factor if tower == "text" else gen.vision_factor
            parts.append(torch.kron(gen.source[row, u], factor[row, li]))  # A: (t=1, d/d_s)
        out[layer] = torch.cat(parts, 0) if cfg.combine.value == "concat" else parts[0] + parts[1]
    return out


def _ref_image(model: PromptedCLIP, image: torch.Tensor, prompts: dict[int, torch.Tensor]) -> torch.Tensor:
    v = model.clip.visual
    x = v._embeds(image[None])
    n0 = x.shape[1]
    for i, blk in enumerate(v.transformer.resblocks):
        if i in prompts:
            x = torch.cat([x[:, :n0], prompts[i][None]], 1)
        x = blk(x)
    return v.ln_post(x[:, 0]) @ v.proj


def _ref_text(model: PromptedCLIP, tokenizer, classname: str, prompts: dict[int, torch.Tensor]) -> torch.Tensor:
    """CoOp / MaPLe: the learned context joins the token embeddings before the positional embedding is
    added; deeper prompts replace the context slots' hidden states."""
    clip, m = model.clip, model.n_text_ctx
    ids = tokenizer(["X " * m + classname + "."])
    x = clip.token_embedding(ids)
    first = min(prompts)
    if first == 0:
        x = torch.cat([x[:, :1], prompts[0][None], x[:, 1 + m :]], 1)
    x = x + clip.positional_embedding
    for i, blk in enumerate(clip.transformer.resblocks):
        if i in prompts and i > 0:
            p = prompts[i] + (clip.positional_embedding[1 : 1 + m] if i == first else 0)
            x = torch.cat([x[:, :1], p[None], x[:, 1 + m :]], 1)
        x = blk(x, attn_mask=clip.attn_mask)
    x = clip.ln_final(x)
    return x[0, ids[0].argmax()] @ clip.text_projection


@pytest.mark.parametrize("combine", ["concat", "add"])
@pytest.mark.parametrize("name", ["tiny", "vitb16"])
def test_prompted_forward_matches_reference(name, combine, request):
    backbone = request.getfixturevalue(name)
    cfg = MmAPConfig(n_tokens=2, text_layers=(0, 2), vision_layers=(1, 2, 3), combine=combine)
    model = PromptedCLIP(backbone, TASKS, cfg, PARTITION)
    _randomise(model)
    task_ids = torch.tensor([2, 0, 3, 0])
    images = images_for(backbone, len(task_ids))
    names = list(TASKS)
    with torch.no_grad():
        logits = model(images, task_ids)
        c_max = max(len(c) for c in TASKS.values())
        assert logits.shape == (4, c_max)
        scale = model.clip.logit_scale.exp()
        for i, t in enumerate(task_ids.tolist()):
            img = _ref_image(model, images[i], _ref_prompts(model, "vision", t))
            got_img = model.encode_image(images[i : i + 1], model.bank(task_ids[i : i + 1]).vision)
            torch.testing.assert_close(got_img, img, rtol=0, atol=1e-6)
            txt = torch.stack(
                [_ref_text(model, backbone.tokenizer, c, _ref_prompts(model, "text", t)) for c in TASKS[names[t]]]
            )
            ref = scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T  # (1, C_t)
            n = len(TASKS[names[t]])
            torch.testing.assert_close(logits[i, :n], ref[0], rtol=0, atol=1e-5)  # logit scale is 14.3
            assert torch.isinf(logits[i, n:]).all() and (logits[i, n:] < 0).all()


@pytest.mark.parametrize("name", ["tiny", "vitb16"])
def test_placeholder_embeddings_as_first_layer_prompts_give_open_clips_text_features(name, request):
    """Prompts equal to the "X" token embeddings at layer 0 are the text "X X ... classname." exactly."""
    backbone = request.getfixturevalue(name)
    clip = backbone.model
    model = PromptedCLIP(backbone, TASKS, MmAPConfig(n_tokens=2, layers=(0,)), PARTITION, truncate_context=False)
    m = model.n_text_ctx
    x_id = backbone.tokenizer.encode("X")[0]
    with torch.no_grad():
        x_emb = clip.token_embedding(torch.tensor([x_id]))  # (1, d_text)
        prompts = x_emb.expand(len(model.text_tokens), 1, m, -1)  # (R, 1 layer, m, d_text)
        got = model.encode_text(model.text_tokens, prompts)
        ref = clip.encode_text(model.text_tokens)  # "SOT X X X X classname. EOT" through open_clip
    assert (got - ref).abs().max().item() <= 1e-6


def _maple_image(visual, images: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    """MaPLe's first-layer vision injection, from its formulation: the visual context (B, m, d) is appended
    to the class and patch embeddings (positional embedding added), then ln_pre runs on all tokens."""
    x = visual.conv1(images).flatten(2).transpose(1, 2)  # (B, grid**2, d)
    cls = visual.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)  # (B, 1 + grid**2, d)
    x = torch.cat([x, ctx], dim=1)  # (B, 1 + grid**2 + m, d)
    x = visual.transformer(visual.ln_pre(x))
    return visual.ln_post(x[:, 0]) @ visual.proj


@pytest.mark.parametrize("name", ["tiny", "vitb16"])
def test_first_layer_visual_prompts_match_maple(name, request):
    backbone = request.getfixturevalue(name)
    model = PromptedCLIP(backbone, TASKS, MmAPConfig(n_tokens=2, layers=(0,)), PARTITION)
    _randomise(model)
    task_ids = torch.tensor([1, 3])
    images = images_for(backbone, 2)
    with torch.no_grad():
        prompts = model.bank(task_ids).vision  # (B, 1 layer, m, d_vis)
        got = model.encode_image(images, prompts)
        ref = _maple_image(backbone.model.visual, images, prompts[:, 0])
    assert (got - ref).abs().max().item() <= 1e-6 * max(1.0, ref.abs().max().item())


# ---- gradients and the frozen backbone ------------------------------------------------------------------


def test_only_prompts_get_gradients_and_backbone_is_unchanged(tiny):
    model = PromptedCLIP(tiny, TASKS, MmAPConfig(n_tokens=2), PARTITION)
    model.train()
    assert not model.clip.training  # the frozen backbone stays in eval mode
    before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    task_ids = torch.tensor([0, 1, 2, 3, 0, 1])
    labels = torch.tensor([0, 3, 1, 4, 2, 0])
    loss = F.cross_entropy(model(images_for(tiny, 6), task_ids), labels)
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("clip."):
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    opt.step()
    for k, v in model.clip.state_dict().items():
        assert torch.equal(v, before[k]), k
    trainable, total = count_parameters(model)
    assert trainable == sum(p.numel() for p in model.bank.parameters())
    assert total == trainable + tiny.info.num_params


def test_blocks_below_first_alignment_layer_build_no_graph(tiny):
    model = PromptedCLIP(tiny, TASKS, MmAPConfig(n_tokens=2, layers=(2, 3)), PARTITION)
    seen = {}
    hooks = [  # on each block's first layer norm: the fused path (mmap_ray/block.py) calls it as open_clip does
        blk.ln_1.register_forward_hook(lambda mod, args, out, key=(tower, i): seen.__setitem__(key, out.requires_grad))
        for tower, blocks in (
            ("text", model.clip.transformer.resblocks),
            ("vision", model.clip.visual.transformer.resblocks),
        )
        for i, blk in enumerate(blocks)
    ]
    model(images_for(tiny, 2), torch.tensor([0, 3])).sum().backward()
    for h in hooks:
        h.remove()
    assert seen == {(t, i): i >= 2 for t in ("text", "vision") for i in range(4)}


def test_kron_couples_the_towers_and_independent_does_not(tiny):
    """A step on a text-only loss moves the visual prompts only when one source generates both towers."""
    task_ids = torch.tensor([0, 2])
    for projection, coupled in (("kron", True), ("linear", True), ("independent", False)):
        model = PromptedCLIP(tiny, TASKS, MmAPConfig(n_tokens=2, projection=projection), PARTITION)
        before = model.bank(task_ids).vision.detach().clone()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
        feats, _ = model.text_features(task_ids)
        feats[:, 0].sum().backward()
        opt.step()
        moved = not torch.equal(model.bank(task_ids).vision, before)
        assert moved == coupled, projection


# ---- multi-task isolation ---------------------------------------------------------------------------


def _logits_after(model, images, task_ids, perturb) -> torch.Tensor:
    with torch.no_grad():
        perturb(model.bank)
        return model(images, task_ids)


@pytest.mark.parametrize("projection", ["kron", "linear", "independent", "text", "visual"])
def test_task_prompt_changes_only_its_task(tiny, projection):
    model = PromptedCLIP(tiny, TASKS, MmAPConfig(n_tokens=2, projection=projection), PARTITION)
    _randomise(model)
    task_ids = torch.tensor([0, 1, 2, 3, 1, 0])
    images = images_for(tiny, 6)
    with torch.no_grad():
        base = model(images, task_ids)

    def first_param(gen):
        return next(p for p in gen.parameters() if p.numel() and p.shape[0] > 1)  # (P, ...)

    def bump_task(bank, t=1):
        first_param(bank.task_specific)[t] += 0.3

    after = _logits_after(model, images, task_ids, bump_task)
    changed = (after - base).abs().nan_to_num(0).amax(1) > 0
    assert changed.tolist() == (task_ids == 1).tolist()

    def bump_group(bank, g=1):  # group 1 = Product+RealWorld = tasks 2, 3
        first_param(bank.groups)[g] += 0.3

    after2 = _logits_after(model, images, task_ids, bump_group)
    changed = (after2 - after).abs().nan_to_num(0).amax(1) > 0
    assert changed.tolist() == [t in (2, 3) for t in task_ids.tolist()]


# ---- bad input -------------------------------------------------------------------------------------------


def test_prompt_length_that_does_not_fit_the_context(tiny):
    long = {"A": ["a very long class name " * 8], "B": ["cat"]}
    with pytest.raises(ValueError) as e:
        PromptedCLIP(tiny, long, MmAPConfig(n_tokens=20), "A|B")
    msg = str(e.value)
    assert msg.startswith("MmAPConfig.n_tokens: 40 prompt tokens") and "context of 77 tokens" in msg
    assert "at most 34 prompt tokens fit" in msg
    PromptedCLIP(tiny, long, MmAPConfig(n_tokens=24, combine="add"), "A|B")  # 24 <= 34 fits


def test_bad_tasks_and_partition(tiny):
    with pytest.raises(ValueError, match="misses tasks"):
        PromptedCLIP(tiny, TASKS, MmAPConfig(), "Art+Clipart|Product")
    with pytest.raises(ValueError, match=r"tasks \['B'\] have no class names"):
        PromptedCLIP(tiny, {"A": ["x"], "B": []})
    with pytest.raises(ValueError, match=r"beyond mmap-ViT-Tiny-8's vision tower"):
        PromptedCLIP(tiny, TASKS, MmAPConfig(vision_layers=(5,)))
