"""ResNet3d / pathway options: shapes, freezing, norm_eval, checkpointing, inflation styles, bad input."""

import pytest
import torch

import lateral
from lateral.models.resnet3d import ResNet3d


def tiny_slowfast(**backbone_overrides) -> dict:
    backbone = dict(
        type="ResNet3dSlowFast",
        resample_rate=4,
        speed_ratio=4,
        channel_ratio=4,
        slow_pathway=dict(
            type="resnet3d",
            depth=18,
            base_channels=8,
            lateral=True,
            conv1_kernel=(1, 7, 7),
            conv1_stride_t=1,
            pool1_stride_t=1,
            inflate=(0, 0, 1, 1),
        ),
        fast_pathway=dict(
            type="resnet3d",
            depth=18,
            base_channels=2,
            lateral=False,
            conv1_kernel=(5, 7, 7),
            conv1_stride_t=1,
            pool1_stride_t=1,
        ),
    )
    backbone.update(backbone_overrides)
    return dict(
        type="Recognizer3D",
        backbone=backbone,
        cls_head=dict(type="SlowFastHead", in_channels=64 + 16, num_classes=5, dropout_ratio=0.0),
        test_cfg=dict(average_clips="prob"),
    )


@pytest.mark.parametrize("depth,channels", [(18, 512), (34, 512), (50, 2048)])
def test_resnet3d_depths_give_expected_feature_shape(depth, channels):
    model = ResNet3d(depth=depth, base_channels=8 if depth < 50 else 8, inflate=(1, 1, 1, 1)).eval()
    out = model(torch.randn(1, 3, 8, 32, 32))
    assert out.shape == (1, channels // 8, 4, 1, 1)  # with_pool2 halves time after stage 1
    assert model.feature_info == [{"name": "layer4", "channels": channels // 8, "spatial_stride": 32}]


def test_depth_101_and_152_stage_blocks():
    assert ResNet3d(depth=101, base_channels=2).stage_blocks == (3, 4, 23, 3)
    assert len(ResNet3d(depth=152, base_channels=2).layer3) == 36


def test_out_indices_return_several_stages():
    model = ResNet3d(depth=18, base_channels=4, out_indices=(0, 1, 2, 3), with_pool2=False).eval()
    outs = model(torch.randn(2, 3, 4, 64, 64))
    assert [o.shape[1] for o in outs] == [4, 8, 16, 32]
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2]


def test_inflate_style_3x3x3_moves_the_temporal_kernel_to_the_3x3_conv():
    a = ResNet3d(depth=50, base_channels=4, inflate_style="3x1x1")
    b = ResNet3d(depth=50, base_channels=4, inflate_style="3x3x3")
    assert a.layer1[0].conv1.conv.kernel_size == (3, 1, 1) and a.layer1[0].conv2.conv.kernel_size == (1, 3, 3)
    assert b.layer1[0].conv1.conv.kernel_size == (1, 1, 1) and b.layer1[0].conv2.conv.kernel_size == (3, 3, 3)


def test_caffe_style_strides_the_first_conv():
    model = ResNet3d(depth=50, base_channels=4, style="caffe")
    assert model.layer2[0].conv1.conv.stride == (1, 2, 2)
    assert model.layer2[0].conv2.conv.stride == (1, 1, 1)


@pytest.mark.slow
def test_frozen_stages_freeze_params_and_keep_bn_statistics():
    model = lateral.build_model(
        tiny_slowfast(
            slow_pathway=dict(
                type="resnet3d",
                depth=18,
                base_channels=8,
                lateral=True,
                frozen_stages=1,
                conv1_kernel=(1, 7, 7),
                inflate=(0, 0, 1, 1),
            )
        )
    )
    slow = model.backbone.slow_path
    assert not any(p.requires_grad for p in slow.conv1.parameters())
    assert not any(p.requires_grad for p in slow.layer1.parameters())
    assert not any(p.requires_grad for p in slow.conv1_lateral.parameters())
    assert not any(p.requires_grad for p in slow.layer1_lateral.parameters())
    assert all(p.requires_grad for p in slow.layer2.parameters())
    model.train()
    assert not slow.layer1[0].conv1.bn.training and slow.layer2[0].conv1.bn.training
    before = slow.layer1[0].conv1.bn.running_mean.clone()
    model.loss(torch.randn(2, 3, 8, 32, 32), torch.tensor([0, 1]))["loss_cls"].backward()
    assert torch.equal(before, slow.layer1[0].conv1.bn.running_mean)


def test_norm_eval_keeps_every_bn_in_eval_mode():
    cfg = tiny_slowfast()
    cfg["backbone"]["fast_pathway"]["norm_eval"] = True
    model = lateral.build_model(cfg).train()
    assert all(not m.training for m in model.backbone.fast_path.modules() if isinstance(m, torch.nn.BatchNorm3d))
    assert model.backbone.slow_path.conv1.bn.training


def test_with_cp_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = lateral.build_model(tiny_slowfast())
    cfg = tiny_slowfast()
    cfg["backbone"]["slow_pathway"]["with_cp"] = True
    cfg["backbone"]["fast_pathway"]["with_cp"] = True
    checkpointed = lateral.build_model(cfg)
    checkpointed.load_state_dict(plain.state_dict())
    x, y = torch.randn(2, 3, 8, 32, 32), torch.tensor([1, 3])
    grads = []
    for model in (plain, checkpointed):
        model.train()
        model.zero_grad()
        model.loss(x, y)["loss_cls"].backward()
        grads.append(model.backbone.slow_path.layer2[0].conv1.conv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_zero_init_residual_zeros_last_bn_of_each_block():
    model = ResNet3d(depth=50, base_channels=4)
    model.init_weights()
    assert torch.count_nonzero(model.layer1[0].conv3.bn.weight) == 0
    assert torch.count_nonzero(model.layer1[0].conv2.bn.weight) > 0
    model = ResNet3d(depth=50, base_channels=4, zero_init_residual=False)
    model.init_weights()
    assert torch.all(model.layer1[0].conv3.bn.weight == 1)


def test_lateral_norm_adds_bn_and_activation_to_lateral_convs():
    cfg = tiny_slowfast()
    cfg["backbone"]["slow_pathway"]["lateral_norm"] = True
    cfg["backbone"]["slow_pathway"]["fusion_kernel"] = 7
    model = lateral.build_model(cfg)
    lat = model.backbone.slow_path.conv1_lateral
    assert lat.bn is not None and lat.conv.kernel_size == (7, 1, 1) and lat.conv.padding == (3, 0, 0)
    assert "backbone.slow_path.layer1_lateral.bn.running_mean" in model.state_dict()


def test_slowfast_output_shapes_and_predict_views():
    model = lateral.build_model(tiny_slowfast()).eval()
    slow, fast = model.backbone(torch.randn(2, 3, 16, 64, 64))
    assert slow.shape == (2, 64, 4, 2, 2) and fast.shape == (2, 16, 16, 2, 2)
    probs = model.predict(torch.randn(2, 3, 3, 16, 64, 64))
    assert probs.shape == (2, 5)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2))


def test_linspace_slow_sampling_takes_pytorchvideo_frames():
    from lateral.models.slowfast import slow_frame_indices

    assert slow_frame_indices(32, 4, "stride").tolist() == [0, 4, 8, 12, 16, 20, 24, 28]
    assert slow_frame_indices(32, 4, "linspace").tolist() == [0, 4, 8, 13, 17, 22, 26, 31]


@pytest.mark.parametrize(
    "shape,message",
    [
        ((2, 3, 16, 32), "5-D tensor"),
        ((2, 1, 16, 32, 32), "expected 3 channels"),
        ((2, 3, 2, 32, 32), "at least 4 frames"),
        ((2, 3, 6, 32, 32), "6 frames, but T must be a multiple of resample_rate=4 \\(e.g. 4 or 8\\)"),
    ],
)
def test_bad_input_shapes_name_the_expected_layout(shape, message):
    model = lateral.build_model(tiny_slowfast()).eval()
    with pytest.raises(ValueError, match=message):
        model(torch.randn(*shape))


def test_six_dim_input_to_forward_points_to_predict():
    model = lateral.build_model(tiny_slowfast()).eval()
    with pytest.raises(ValueError, match="predict"):
        model(torch.randn(1, 2, 3, 8, 32, 32))


@pytest.mark.slow
def test_loss_returns_named_scalars_and_decreases_with_sgd():
    torch.manual_seed(0)
    model = lateral.build_model(tiny_slowfast()).train()
    x, y = torch.randn(4, 3, 8, 32, 32), torch.tensor([0, 1, 2, 3])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    first = None
    for _ in range(8):
        losses = model.loss(x, y)
        assert set(losses) >= {"loss_cls", "top1_acc", "top5_acc"}
        opt.zero_grad()
        losses["loss_cls"].backward()
        opt.step()
        first = first if first is not None else losses["loss_cls"].item()
    assert losses["loss_cls"].item() < first


def test_multi_class_head_uses_bce_and_sigmoid_averaging():
    cfg = tiny_slowfast()
    cfg["cls_head"].update(multi_class=True, loss_cls=dict(type="BCELossWithLogits"), label_smooth_eps=0.1)
    model = lateral.build_model(cfg)
    targets = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.float32)
    loss = model.loss(torch.randn(2, 3, 8, 32, 32), targets)["loss_cls"]
    assert loss.ndim == 0 and loss > 0
    probs = model.eval().predict(torch.randn(2, 2, 3, 8, 32, 32))
    assert (probs > 0).all() and (probs < 1).all() and not torch.allclose(probs.sum(1), torch.ones(2))


def test_cross_entropy_class_weight_and_loss_weight():
    from lateral.models.heads import CrossEntropyLoss

    scores, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    plain = torch.nn.functional.cross_entropy(scores, labels, weight=torch.tensor([1.0, 2.0, 3.0]))
    loss = CrossEntropyLoss(loss_weight=0.5, class_weight=[1.0, 2.0, 3.0])(scores, labels)
    torch.testing.assert_close(loss, 0.5 * plain)
    soft = torch.nn.functional.one_hot(labels, 3).float()
    torch.testing.assert_close(CrossEntropyLoss()(scores, soft), torch.nn.functional.cross_entropy(scores, labels))
    with pytest.raises(ValueError, match="out of range"):
        CrossEntropyLoss()(scores, torch.tensor([0, 1, 2, 0, 1, 7]))


def test_slowfast_head_window_pooling_matches_pytorchvideo_semantics():
    """PyTorchVideo: AvgPool3d(kernel, stride=1) per pathway, linear layer per position, mean over positions."""
    from lateral.models.heads import SlowFastHead

    torch.manual_seed(0)
    head = SlowFastHead(num_classes=4, in_channels=6, dropout_ratio=0.0, pool_kernels=((2, 7, 7), (8, 7, 7))).eval()
    slow, fast = torch.randn(2, 4, 2, 8, 8), torch.randn(2, 2, 8, 8, 8)
    pooled_slow = torch.nn.functional.avg_pool3d(slow, (2, 7, 7), stride=1)  # [2, 4, 1, 2, 2]
    pooled_fast = torch.nn.functional.avg_pool3d(fast, (8, 7, 7), stride=1)
    per_position = torch.cat((pooled_fast, pooled_slow), dim=1).permute(0, 2, 3, 4, 1)  # [2, 1, 2, 2, 6]
    expected = head.fc_cls(per_position).mean(dim=(1, 2, 3))
    torch.testing.assert_close(head((slow, fast)), expected)
    # on a 7x7 map (224 crops) the window is the whole map: the same as global pooling
    glob = SlowFastHead(num_classes=4, in_channels=6, dropout_ratio=0.0).eval()
    glob.load_state_dict(head.state_dict())
    small = (torch.randn(1, 4, 2, 7, 7), torch.randn(1, 2, 8, 7, 7))
    torch.testing.assert_close(head(small), glob(small))
    assert not torch.allclose(head((slow, fast)), glob((slow, fast)))
