import json

import pytest
import torch

from mmap_ray.cli import main
from mmap_ray.grouping import Partition
from mmap_ray.prompts import Combine, MmAPConfig, Projection, PromptBank, parse_layers

TASKS = ["Art", "Clipart", "Product", "RealWorld"]
TWO_GROUPS = Partition.parse("Art+Clipart|Product+RealWorld", TASKS)


def test_parse_layers():
    assert parse_layers("0-3,8") == (0, 1, 2, 3, 8)
    assert parse_layers("none") == () and parse_layers("") == ()
    assert parse_layers(None) is None
    with pytest.raises(ValueError, match="'a-b' is not valid"):
        parse_layers("a-b")


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"n_tokens": 0}, "n_tokens=0 must be an integer >= 1"),
        ({"projection": "kronecker"}, "projection='kronecker' is not valid; choose one of 'kron', 'linear'"),
        ({"combine": "mul"}, "combine='mul' is not valid; choose one of 'concat', 'add'"),
        ({"layers": (0, -1)}, "layers=(0, -1) must hold block indices >= 0"),
        ({"vision_layers": (1, 1)}, "vision_layers=(1, 1) repeats a layer"),
        ({"template": "a photo"}, "must contain '{}'"),
    ],
)
def test_config_errors_name_field_value_and_valid(kwargs, needle):
    with pytest.raises(ValueError) as e:
        MmAPConfig(**kwargs)
    assert needle in str(e.value)


def test_config_accepts_strings_and_sorts_layers():
    cfg = MmAPConfig(projection="linear", combine="add", layers="3,0-1")
    assert cfg.projection is Projection.LINEAR and cfg.combine is Combine.ADD
    assert cfg.layers == (0, 1, 3)


def test_layer_beyond_depth_names_valid_range(tiny):
    with pytest.raises(ValueError) as e:
        MmAPConfig(layers=(0, 4)).resolve(tiny.info)
    assert "MmAPConfig.layers=[0, 4] has [4] beyond" in str(e.value) and "valid block indices are 0..3" in str(e.value)
    with pytest.raises(ValueError, match=r"text_layers=\[7\].*0\.\.3"):
        MmAPConfig(text_layers=(7,)).resolve(tiny.info)


def test_source_dim_must_divide_both_widths(tiny, vitb16):
    with pytest.raises(ValueError) as e:
        MmAPConfig(source_dim=48).resolve(vitb16.info)
    assert "source_dim=48 does not divide ViT-B-16's text width 512" in str(e.value) and "256]" in str(e.value)
    # not a kron config: no constraint
    MmAPConfig(source_dim=48, projection="independent").resolve(vitb16.info)
    assert MmAPConfig().resolve(tiny.info).source_dim == 32  # gcd(64, 96)


def test_default_layers_and_tower_overrides(vitb16):
    r = MmAPConfig().resolve(vitb16.info)
    assert r.text == r.vision == tuple(range(11))
    r = MmAPConfig(text_layers=(0, 1), vision_layers=(1, 5)).resolve(vitb16.info)
    assert (r.text, r.vision, r.union) == ((0, 1), (1, 5), (0, 1, 5))
    assert MmAPConfig(projection="text").resolve(vitb16.info).vision == ()
    assert MmAPConfig(projection="visual").resolve(vitb16.info).text == ()


def test_kron_generator_is_the_kronecker_product(tiny):
    torch.manual_seed(0)
    cfg = MmAPConfig(n_tokens=3, text_layers=(0, 2), vision_layers=(1, 2))
    bank = PromptBank(cfg, tiny.info, TWO_GROUPS)
    gen = bank.groups
    with torch.no_grad():
        gen.text_factor.normal_()
        gen.vision_factor.normal_()
    text, vision = gen()
    assert text.shape == (2, 2, 3, 64) and vision.shape == (2, 2, 3, 96)
    union = {0: 0, 1: 1, 2: 2}
    for p in range(2):
        for li, layer in enumerate((0, 2)):
            ref = torch.kron(gen.source[p, union[layer]], gen.text_factor[p, li])
            torch.testing.assert_close(text[p, li], ref, rtol=0, atol=0)
        for li, layer in enumerate((1, 2)):
            ref = torch.kron(gen.source[p, union[layer]], gen.vision_factor[p, li])
            torch.testing.assert_close(vision[p, li], ref, rtol=0, atol=0)
    # layer 2 is shared by both towers: one source row generates both prompts
    s = gen.source[0, 2]
    assert torch.equal(text[0, 1][:, ::2], s * gen.text_factor[0, 1, 0, 0])
    assert torch.equal(vision[0, 1][:, ::3], s * gen.vision_factor[0, 1, 0, 0])


def test_linear_generator_projects_text_prompts(tiny):
    torch.manual_seed(0)
    bank = PromptBank(MmAPConfig(projection="linear", n_tokens=2), tiny.info, TWO_GROUPS)
    gen = bank.groups
    text, vision = gen()
    for layer in range(3):
        ref = text[:, layer] @ gen.proj_weight[layer] + gen.proj_bias[layer]
        torch.testing.assert_close(vision[:, layer], ref)


@pytest.mark.parametrize("projection", [p.value for p in Projection])
@pytest.mark.parametrize("combine", ["concat", "add"])
def test_bank_shapes_and_indexing(tiny, projection, combine):
    cfg = MmAPConfig(n_tokens=2, projection=projection, combine=combine)
    bank = PromptBank(cfg, tiny.info, TWO_GROUPS)
    m = 4 if combine == "concat" else 2
    task_ids = torch.tensor([3, 0, 0, 2, 1])
    per_task = bank.per_task()
    out = bank(task_ids)
    text_layers = {"visual-deep": 0, "clip-adapter": 0, "bitfit": 0, "coop": 1}.get(projection, 3)
    vision_layers = 0 if projection in ("text-deep", "coop", "clip-adapter", "bitfit") else 3
    if text_layers == 0:
        assert out.text is None
    else:
        assert out.text.shape == (4, text_layers, m, 64)
    if vision_layers == 0:
        assert out.vision is None
    else:
        assert out.vision.shape == (5, 3, m, 96)
        assert torch.equal(out.vision, per_task.vision[task_ids])
    if not text_layers and not vision_layers:
        return  # a baseline without prompts
    ref = per_task.text if per_task.text is not None else per_task.vision
    # tasks in the same group share the group half of the prompt; other groups do not
    if combine == "concat":
        assert torch.equal(ref[0, :, :2], ref[1, :, :2]) and not torch.equal(ref[0, :, :2], ref[2, :, :2])
        assert not torch.equal(ref[0, :, 2:], ref[1, :, 2:])


def test_no_task_prompts_gives_group_prompts_only(tiny):
    bank = PromptBank(MmAPConfig(n_tokens=2, task_prompts=False), tiny.info, TWO_GROUPS)
    assert bank.task_specific is None and bank.tokens_per_task == 2
    text = bank.per_task().text
    assert torch.equal(text[0], text[1]) and torch.equal(text[2], text[3])


def test_default_vitb16_budget_matches_design(vitb16):
    """DESIGN.md's worked example: d_s=256, n=8, 11 layers, 6 prompts (2 groups + 4 tasks)."""
    bank = PromptBank(MmAPConfig(), vitb16.info, TWO_GROUPS)
    trainable = sum(p.numel() for p in bank.parameters())
    sources = 6 * 11 * 8 * 256
    factors = 6 * 11 * (512 // 256 + 768 // 256)
    assert sources == 135_168
    assert trainable == sources + factors == 135_498
    assert trainable / (vitb16.info.num_params + trainable) <= 0.001


def test_params_cli_prints_exact_count(capsys):
    argv = ["params", "--model", "ViT-B-16", "--tasks", ",".join(TASKS), "--partition", str(TWO_GROUPS)]
    assert main(argv + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trainable_params"] == 135_498
    assert report["total_params"] == 149_620_737 + 135_498
    assert report["trainable_percent"] == pytest.approx(100 * 135_498 / (149_620_737 + 135_498))
    assert main(argv) == 0
    assert "135,498" in capsys.readouterr().out


def test_params_cli_reports_bad_input(capsys):
    argv = ["params", "--model", "ViT-B-16", "--tasks", "A,B", "--partition", "A", "--layers", "0-3"]
    assert main(argv) == 2
    assert "misses tasks ['B']" in capsys.readouterr().err
    assert main(["params", "--model", "ViT-B-16", "--tasks", "A,B", "--layers", "0-12"]) == 2
    assert "valid block indices are 0..11" in capsys.readouterr().err
