"""The paper's baselines and the Kronecker readings: each is a configuration of the same model and loop.

Trainable-parameter counts are checked against formulas written from each method's definition, and each
design is checked against a reference written here from its paper (CLIP-Adapter's residual MLP, BitFit's
bias-only training, CoOp's input-only context, the Kronecker and PHM products).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TASKS
from torch import nn

from mmap_ray.backbone import TINY_MODEL, BackboneConfig, load_backbone
from mmap_ray.grouping import Partition
from mmap_ray.model import PromptedCLIP, bias_parameters
from mmap_ray.prompts import MmAPConfig, PromptBank

NAMES = list(TASKS)
TWO_GROUPS = Partition.parse("Art+Clipart|Product+RealWorld", NAMES)
G, T = 2, len(NAMES)  # groups, tasks


def _count(bank: PromptBank) -> int:
    return sum(p.numel() for p in bank.parameters())


@pytest.mark.parametrize("backbone", ["tiny", "vitb16"])
def test_parameter_counts_match_each_designs_formula(backbone, request):
    info = request.getfixturevalue(backbone).info
    dt, dv, E, n = info.text_width, info.vision_width, info.embed_dim, 4
    bank = lambda **kw: PromptBank(MmAPConfig(n_tokens=n, **kw), info, TWO_GROUPS)  # noqa: E731
    # CoOp: one learned context of n tokens at the text input, per group and per task (shared by classes)
    assert _count(bank(projection="coop")) == (G + T) * n * dt
    # CLIP-Adapter: bias-free E -> E/4 -> E per group
    assert _count(bank(projection="clip-adapter")) == G * 2 * E * (E // 4)
    assert _count(bank(projection="bitfit")) == 0  # its trainable set is the backbone's biases (below)
    L = 3  # layers 0-2 in both towers
    ds = 32 if backbone == "tiny" else 256
    for t in (1, 2, 4):  # kron: S (n/t, d_s) shared by both towers, A (t, d/d_s) per tower
        for order in ("SA", "AS"):
            got = _count(bank(projection="kron", layers=(0, 1, 2), kron_tokens=t, kron_order=order, source_dim=ds))
            assert got == (G + T) * (L * (n // t) * ds + L * t * (dt // ds + dv // ds))
    k = 4  # phm: S (n, d_s) per prompt; per layer and tower W = sum_i A_i (k x k) ⊗ B_i (d_s/k x d/k), per generator
    got = _count(bank(projection="phm", layers=(0, 1, 2), phm_rank=k, source_dim=ds))
    per_generator = L * (k**3 + ds * dt // k) + L * (k**3 + ds * dv // k)
    assert got == (G + T) * L * n * ds + 2 * per_generator


def _own(name: str):
    """A backbone of this test's own: BitFit unfreezes biases, which the shared fixtures must never see."""
    torch.manual_seed(0)
    return load_backbone(BackboneConfig(name))


@pytest.mark.parametrize("name", [TINY_MODEL, "ViT-B-16"])
def test_bitfit_trains_every_bias_and_nothing_else(name):
    b = _own(name)
    model = PromptedCLIP(b, TASKS, MmAPConfig(projection="bitfit"), TWO_GROUPS)
    params = model.set_trainable()
    info = b.info
    # per residual block: ln_1, attention in (3d) and out, ln_2, MLP in (4d) and out = 11 d; plus
    # ln_pre and ln_post (vision) and ln_final (text)
    expected = info.vision_layers * 11 * info.vision_width + 2 * info.vision_width
    expected += info.text_layers * 11 * info.text_width + info.text_width
    assert sum(p.numel() for p in params) == expected
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.endswith("bias") for n in names)
    assert {id(p) for p in params} == {id(p) for p in bias_parameters(model.clip)}


def test_bitfit_step_moves_biases_only():
    model = PromptedCLIP(_own(TINY_MODEL), TASKS, MmAPConfig(projection="bitfit"), TWO_GROUPS)
    params = model.set_trainable()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    images, task_ids = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    opt = torch.optim.SGD(params, lr=1.0)
    F.cross_entropy(model(images, task_ids), torch.zeros(4, dtype=torch.long)).backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.endswith("bias") for n in changed)


class PaperAdapter(nn.Module):
    """CLIP-Adapter as its code writes it: Linear(c, c/4, bias=False), ReLU, Linear(c/4, c, bias=False), ReLU."""

    def __init__(self, c: int, reduction: int = 4):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(c, c // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(c // reduction, c, bias=False),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.fc(x)


def test_clip_adapter_matches_the_papers_residual_mlp(tiny):
    torch.manual_seed(0)
    model = PromptedCLIP(tiny, TASKS, MmAPConfig(projection="clip-adapter"), TWO_GROUPS)
    adapter, ratio = model.bank.adapter, model.cfg.adapter_ratio
    images, task_ids = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        got = model.image_embedding(images, task_ids, None)
        f = model.clip.encode_image(images)  # no prompts: open_clip's own image features
        for i, task in enumerate(task_ids.tolist()):
            g = TWO_GROUPS.group_index()[task]
            ref = PaperAdapter(f.shape[1])
            ref.fc[0].weight.copy_(adapter.w1[g].T)
            ref.fc[2].weight.copy_(adapter.w2[g].T)
            expected = ratio * ref(f[i : i + 1]) + (1 - ratio) * f[i : i + 1]  # image_features = ratio*x + ...
            torch.testing.assert_close(got[i : i + 1], expected, rtol=1e-5, atol=1e-6)
    assert model.n_text_ctx == 0  # the text side is CLIP's hand-written template, as in CLIP-Adapter


def test_coop_prompts_the_text_input_only(tiny):
    r = MmAPConfig(projection="coop").resolve(tiny.info)
    assert (r.text, r.vision) == ((0,), ())
    with pytest.raises(ValueError, match=r"MmAPConfig.layers=\[0, 1\] has no effect with projection 'coop'"):
        MmAPConfig(projection="coop", layers=(0, 1)).resolve(tiny.info)
    model = PromptedCLIP(tiny, TASKS, MmAPConfig(projection="coop", n_tokens=3), TWO_GROUPS)
    assert model.bank.per_task().vision is None and model.bank.per_task().text.shape[1] == 1


@pytest.mark.parametrize("t, order", [(1, "SA"), (2, "SA"), (2, "AS"), (4, "AS")])
def test_kron_readings_are_torch_kron(tiny, t, order):
    torch.manual_seed(0)
    cfg = MmAPConfig(n_tokens=4, layers=(0, 1), kron_tokens=t, kron_order=order, source_dim=16)
    gen = PromptBank(cfg, tiny.info, TWO_GROUPS).groups
    with torch.no_grad():
        gen.text_factor.normal_()
        gen.vision_factor.normal_()
    text, vision = gen()
    assert text.shape == (2, 2, 4, tiny.info.text_width) and vision.shape == (2, 2, 4, tiny.info.vision_width)
    for p in range(2):
        for li in range(2):
            s = gen.source[p, li]  # (n/t, d_s)
            for out, a in ((text, gen.text_factor[p, li]), (vision, gen.vision_factor[p, li])):
                ref = torch.kron(s, a) if order == "SA" else torch.kron(a, s)
                torch.testing.assert_close(out[p, li], ref, rtol=0, atol=0)


def test_phm_prompts_are_the_source_times_a_sum_of_kronecker_products(tiny):
    torch.manual_seed(0)
    cfg = MmAPConfig(projection="phm", n_tokens=3, layers=(0, 2), phm_rank=4, source_dim=16)
    gen = PromptBank(cfg, tiny.info, TWO_GROUPS).groups
    text, vision = gen()
    for out, a, b in ((text, gen.text_a, gen.text_b), (vision, gen.vision_a, gen.vision_b)):
        for li in range(2):
            w = sum(torch.kron(a[li, i], b[li, i]) for i in range(4))  # (d_s, d)
            for p in range(2):
                torch.testing.assert_close(out[p, li], gen.source[p, li] @ w, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"MmAPConfig.phm_rank=5 must divide"):
        MmAPConfig(projection="phm", phm_rank=5).resolve(tiny.info)


def test_old_design_names_still_read():
    assert MmAPConfig(projection="text").projection.value == "text-deep"
    assert MmAPConfig(projection="visual").projection.value == "visual-deep"


@pytest.mark.parametrize("design", ["coop", "clip-adapter", "bitfit", "phm"])
def test_each_design_trains_and_evaluates_through_the_cli(design, tmp_path, capsys):
    """The same loop and run folder for every design: train one epoch, then `eval --run` reloads it."""
    import json

    from mmap_ray.cli import main

    out = tmp_path / design
    common = ["--pretrained", "none", "--n-tokens", "2", "--shots", "2"]
    train = ["train", *common, "--projection", design, "--epochs", "1", "--batch-size", "16", "--no-progress"]
    assert main([*train, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trainable_params"] > 0
    capsys.readouterr()
    assert main(["eval", "--run", str(out), "--split", "test", "--out", str(tmp_path / "eval.json")]) == 0
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again == pytest.approx(summary["test"], abs=1e-7)  # the saved trainable tensors are all it needs
