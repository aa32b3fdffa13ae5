"""Numerical parity with mmaction2 1.2.0 on the golden cases (weights synthesised from key names)."""

import pytest
import torch

import lateral
from golden import GoldenCase, synth_state_dict
from lateral.checkpoint import CheckpointError
from lateral.config import ConfigError

TOL = dict(rtol=1e-4, atol=1e-4)


def _model(case: GoldenCase) -> torch.nn.Module:
    model = lateral.build_model(case.config).eval()
    lateral.load_checkpoint(model, {"state_dict": case.state_dict()}, strict=True)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", ["slowfast_r50_4x16_seed", "slowfast_r50_8x8"])
def test_slowfast_features_and_logits_match_mmaction2(name):
    case = GoldenCase(name)
    model = _model(case)
    with torch.no_grad():
        slow, fast = model.backbone(case.input())
        logits = model(case.input())
    torch.testing.assert_close(slow, case.expected["slow"], **TOL)
    torch.testing.assert_close(fast, case.expected["fast"], **TOL)
    torch.testing.assert_close(logits, case.expected["logits"], **TOL)
    torch.testing.assert_close(model.predict(case.input()), case.expected["prob"], **TOL)


def test_state_dict_keys_equal_mmaction2_checkpoint_in_order_and_shape():
    case = GoldenCase("slowfast_r50_4x16_seed")
    model = lateral.build_model(case.config)
    own = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert own == [(k["name"], k["shape"]) for k in case.keys]


def test_parameter_counts_match_mmaction2():
    model = lateral.build_model("configs/recognition/slowfast/slowfast_r50_4x16x1_kinetics400.py")
    assert sum(p.numel() for p in model.backbone.parameters()) == 33_557_288
    assert sum(p.numel() for p in model.parameters()) == 34_479_288


def test_slowonly_matches_mmaction2():
    case = GoldenCase("slowonly_r50_8x8")
    model = _model(case)
    with torch.no_grad():
        features = model.backbone(case.input())
        logits = model(case.input())
    torch.testing.assert_close(features, case.expected["features"], **TOL)
    torch.testing.assert_close(logits, case.expected["logits"], **TOL)
    torch.testing.assert_close(model.predict(case.input()), case.expected["prob"], **TOL)


def test_multiview_prob_and_score_averaging_match_mmaction2():
    case = GoldenCase("slowfast_r50_multiview")
    model = _model(case)
    clips = case.input()  # [N=2, V=3, C, T, H, W]
    with torch.no_grad():
        clip_logits = model(clips.flatten(0, 1))
    torch.testing.assert_close(clip_logits, case.expected["clip_logits"], **TOL)
    model.average_clips = "prob"
    torch.testing.assert_close(model.predict(clips), case.expected["average_prob"], **TOL)
    model.average_clips = "score"
    torch.testing.assert_close(model.predict(clips), case.expected["average_score"], **TOL)
    model.average_clips = None
    per_view = model.predict(clips)
    assert per_view.shape == (2, 3, 400)
    torch.testing.assert_close(per_view.flatten(0, 1), case.expected["clip_logits"], **TOL)


def test_max_testing_views_gives_the_same_answer_in_chunks():
    case = GoldenCase("slowfast_r50_multiview")
    model = _model(case)
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    model.max_testing_views = 4
    torch.testing.assert_close(model.predict(case.input()), case.expected["average_prob"], **TOL)
    assert calls == [4, 2]  # 6 clips in chunks of at most 4


def test_inflating_a_2d_resnet_matches_mmaction2(tmp_path):
    case = GoldenCase("inflate_slowfast_r50_seed")
    resnet2d = synth_state_dict(case.keys)
    path = tmp_path / "resnet50.pth"
    torch.save(resnet2d, path)
    backbone_cfg = dict(case.config["backbone"])
    backbone_cfg["slow_pathway"] = dict(backbone_cfg["slow_pathway"], pretrained=str(path))
    backbone = lateral.build_model(backbone_cfg)
    report = backbone.init_weights()["slow_path"]
    assert report["unused"] == ["fc.bias", "fc.weight"]
    assert report["skipped"] == []
    digest = torch.load(case.dir / "inflated_digest.pt", weights_only=True)
    own = backbone.state_dict()
    assert len(report["loaded"]) == len(digest) == 318
    for name, expected in digest.items():
        t = own[name].double()
        got = torch.cat([torch.stack([t.sum(), (t * t).sum()]), t.flatten()[:8]])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=name)
    # everything that was not inflated (fast pathway, lateral convs) is synthesised from its own name
    rest = [
        {"name": k, "shape": list(v.shape), "dtype": "int64" if v.dtype == torch.int64 else "float32"}
        for k, v in own.items()
        if k not in digest
    ]
    backbone.load_state_dict(synth_state_dict(rest), strict=False)
    backbone.eval()
    with torch.no_grad():
        slow, fast = backbone(case.input())
    torch.testing.assert_close(slow, case.expected["slow"], **TOL)
    torch.testing.assert_close(fast, case.expected["fast"], **TOL)


def test_inflated_kernel_is_2d_kernel_spread_over_time(tmp_path):
    case = GoldenCase("inflate_slowfast_r50_seed")
    resnet2d = synth_state_dict(case.keys)
    torch.save({"state_dict": resnet2d}, tmp_path / "r50.pth")  # mmcv-style wrapper is unwrapped too
    cfg = dict(case.config["backbone"])
    cfg["slow_pathway"] = dict(cfg["slow_pathway"], pretrained=str(tmp_path / "r50.pth"))
    backbone = lateral.build_model(cfg)
    backbone.init_weights()
    w3d = backbone.slow_path.layer3[0].conv1.conv.weight  # [256, 512 + 128 lateral, 3, 1, 1]
    w2d = resnet2d["layer3.0.conv1.weight"]  # [256, 512, 1, 1]
    assert w3d.shape == (256, 640, 3, 1, 1)
    torch.testing.assert_close(w3d[:, :512].sum(dim=2), w2d)
    assert torch.count_nonzero(w3d[:, 512:]) == 0  # lateral channels start at zero
    # lateral convs were not touched by inflation: still Kaiming-initialised, not zero, not 2D weights
    assert backbone.slow_path.layer1_lateral.conv.weight.abs().sum() > 0


def _slowonly(**backbone):
    return dict(
        type="Recognizer3D",
        backbone=dict(type="ResNet3dSlowOnly", depth=50, **backbone),
        cls_head=dict(type="I3DHead", in_channels=2048, num_classes=5),
    )


def test_pretrained_2d_checkpoints_load_through_every_mmaction2_spelling(tmp_path):
    """A torchvision ResNet-50 reaches the slow-only network as ``pretrained``, as mmaction2 1.x
    ``init_cfg=dict(type='Pretrained')``, and inside a classifier checkpoint with ``backbone.`` keys."""
    case = GoldenCase("inflate_slowfast_r50_seed")
    resnet2d = synth_state_dict(case.keys)
    torch.save(resnet2d, tmp_path / "r50.pth")
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in resnet2d.items()}}, tmp_path / "tsn.pth")
    expected = resnet2d["layer2.0.conv1.weight"]
    for backbone in (
        dict(pretrained=str(tmp_path / "r50.pth")),
        dict(init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "r50.pth"))),
        dict(pretrained=str(tmp_path / "tsn.pth")),
    ):
        model = lateral.build_model(_slowonly(**backbone))
        torch.testing.assert_close(model.backbone.layer2[0].conv1.conv.weight[:, :, 0], expected, msg=str(backbone))


def test_pretrained_files_that_fill_nothing_are_errors_not_silence(tmp_path):
    case = GoldenCase("inflate_slowfast_r50_seed")
    torch.save(synth_state_dict(case.keys), tmp_path / "r50.pth")
    torch.save({"state_dict": {"blocks.0.weight": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="holds a 2D ResNet .*set pretrained2d=True"):
        lateral.build_model(_slowonly(pretrained=str(tmp_path / "r50.pth"), pretrained2d=False))
    with pytest.raises(CheckpointError, match="nothing could be inflated.*no torchvision-layout 2D ResNet keys"):
        lateral.build_model(_slowonly(pretrained=str(tmp_path / "other.pth")))
    with pytest.raises(CheckpointError, match="lateral does not download weights.*torchvision.models.resnet50"):
        lateral.build_model(_slowonly(pretrained="torchvision://resnet50"))
    with pytest.raises(CheckpointError, match="init_cfg.checkpoint: not one tensor of .*other.pth fits Recognizer3D"):
        lateral.build_model(dict(_slowonly(), init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "other.pth"))))
    with pytest.raises(ConfigError, match="unknown type 'Pretrainde'. Did you mean 'Pretrained'"):
        lateral.build_model(_slowonly(init_cfg=dict(type="Pretrainde", checkpoint="x.pth")))
    with pytest.raises(ConfigError, match="both pretrained=.* and init_cfg"):
        lateral.build_model(_slowonly(pretrained="a.pth", init_cfg=dict(type="Pretrained", checkpoint="b.pth")))


def test_whole_model_init_cfg_loads_a_recognizer_checkpoint_and_warns_about_gaps(tmp_path):
    source = lateral.build_model(_slowonly())
    torch.save({"state_dict": source.state_dict()}, tmp_path / "full.pth")
    model = lateral.build_model(
        dict(_slowonly(), init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "full.pth")))
    )
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in source.state_dict().items())
    backbone_only = {k: v for k, v in source.state_dict().items() if k.startswith("backbone.")}
    torch.save(backbone_only, tmp_path / "backbone.pth")
    with pytest.warns(
        UserWarning,
        match=r"filled \d+ of \d+ tensors of Recognizer3D; 2 keep their initialisation "
        r"\(cls_head.fc_cls.weight, cls_head.fc_cls.bias\)",
    ):
        lateral.build_model(
            dict(_slowonly(), init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "backbone.pth")))
        )


def test_a_child_init_cfg_checkpoint_survives_the_recognizer_initialisation(tmp_path):
    """The head's (or a prefixed backbone's) init_cfg checkpoint is loaded when the child is built; the recognizer's
    own init_weights afterwards must not replace it with a fresh random initialisation."""
    source = lateral.build_model(_slowonly())
    torch.save({"state_dict": source.state_dict()}, tmp_path / "full.pth")
    torch.save({f"model.{k}": v for k, v in source.state_dict().items()}, tmp_path / "wrapped.pth")
    for prefix in ("cls_head.", "cls_head"):  # mmengine adds the missing dot
        head = dict(
            type="I3DHead",
            in_channels=2048,
            num_classes=5,
            init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "full.pth"), prefix=prefix),
        )
        model = lateral.build_model(dict(_slowonly(), cls_head=head))
        assert torch.equal(model.cls_head.fc_cls.weight, source.cls_head.fc_cls.weight)
    model = lateral.build_model(
        _slowonly(init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "wrapped.pth"), prefix="model.backbone."))
    )
    assert all(torch.equal(v, source.backbone.state_dict()[k]) for k, v in model.backbone.state_dict().items())


def test_a_2d_resnet_of_other_widths_inflates_nothing_and_says_why(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")  # 64 wide
    narrow = dict(type="ResNet3dSlowOnly", depth=18, base_channels=4, pretrained=str(tmp_path / "r18.pth"))
    with pytest.raises(CheckpointError, match="nothing could be inflated, because none of its tensors fits"):
        lateral.build_model(narrow).init_weights()  # a bare backbone loads its pretrained file here, as mmaction2's
