import json

import open_clip
import pytest
import torch

from mmap_ray.backbone import TINY_MODEL, BackboneConfig, check_promptable, load_backbone


def test_tiny_backbone_is_frozen_eval_and_geometry_read_from_model(tiny):
    m = tiny.model
    assert not any(p.requires_grad for p in m.parameters())
    assert not m.training and not m.visual.training
    info = tiny.info
    assert (info.text_width, info.vision_width) == (m.transformer.width, m.visual.transformer.width) == (64, 96)
    assert (info.text_layers, info.vision_layers) == (4, 4)
    assert info.context_length == 77 and info.embed_dim == 64
    assert (info.sot_token_id, info.eot_token_id) == (49406, 49407)
    assert info.num_params == sum(p.numel() for p in m.parameters())


def test_vitb16_geometry(vitb16):
    info = vitb16.info
    assert (info.text_width, info.vision_width, info.text_layers, info.vision_layers) == (512, 768, 12, 12)
    assert info.num_params == 149_620_737


def test_local_checkpoint_file_loads_exactly(tmp_path, tiny):
    torch.manual_seed(123)
    src = open_clip.create_model(TINY_MODEL)
    path = tmp_path / "tiny.pt"
    torch.save(src.state_dict(), path)
    loaded = load_backbone(BackboneConfig(TINY_MODEL, pretrained=str(path)))
    for (name, a), b in zip(src.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in loaded.model.parameters())
    # and it differs from the random-weight fixture, so the file was really used
    assert not torch.equal(loaded.model.visual.proj, tiny.model.visual.proj)


def test_unknown_model_and_missing_file_are_named():
    with pytest.raises(ValueError, match=r"model='ViT-Nope'.*open_clip.list_models"):
        BackboneConfig("ViT-Nope")
    with pytest.raises(ValueError, match=r"pretrained='/no/such/ckpt.pt'.*no such file"):
        BackboneConfig(TINY_MODEL, pretrained="/no/such/ckpt.pt")


def test_resnet_tower_rejected_with_supported_list(tmp_path):
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (tmp_path / "mmap-test-RN.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "mmap-test-RN.json")
    with pytest.raises(ValueError) as e:
        load_backbone(BackboneConfig("mmap-test-RN"))
    msg = str(e.value)
    assert "ModifiedResNet, not a VisionTransformer" in msg and "Supported:" in msg and "ViT-B-16" in msg


def test_custom_text_tower_rejected(tiny):
    model = open_clip.create_model(TINY_MODEL, force_custom_text=True)
    with pytest.raises(ValueError, match="CustomTextCLIP.*custom text towers are not supported"):
        check_promptable(model, tiny.tokenizer, TINY_MODEL)
