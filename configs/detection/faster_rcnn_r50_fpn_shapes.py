"""Faster R-CNN, ResNet-50-FPN, on the built-in synthetic shapes (circles, squares, triangles).

Sized to train from scratch in a few minutes on a 2-core CPU: 64-pixel images, a thin pyramid (128 channels) and
box head (256 units) on the full ResNet-50, trainable batch norm (there are no pre-trained weights offline, and
frozen statistics of a random network would normalise nothing), fewer proposals and sampled RoIs than the COCO
setting, and anchors one octave smaller than torchvision's for the small objects.
"""

image_size = 64
data_root = "data/shapes"

model = dict(
    type="FasterRCNN",
    backbone=dict(
        type="ResNetFPN", depth=50, style="torchvision", out_channels=128, body_norm="BN", trainable_layers=5
    ),
    num_classes=4,
    min_size=None,  # the data pipeline resizes
    anchor_sizes=((16,), (32,), (64,), (128,), (256,)),
    rpn_pre_nms_top_n_train=500,
    rpn_post_nms_top_n_train=200,
    rpn_pre_nms_top_n_test=300,
    rpn_post_nms_top_n_test=100,
    rpn_batch_size_per_image=128,
    box_batch_size_per_image=64,
    box_detections_per_img=20,
    representation_size=256,
)

train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    sampler=dict(type="DefaultSampler", shuffle=True),
    dataset=dict(
        type="CocoDataset",
        data_root=f"{data_root}/train",
        ann_file="annotations.json",
        data_prefix=dict(img="images"),
        synthetic=dict(num_images=400, image_size=image_size, seed=0, min_object_size=10),
        pipeline=[
            dict(type="Resize", scale=(image_size, image_size), ratio_range=(0.75, 1.0)),
            dict(type="RandomFlip", flip_ratio=0.5),
        ],
    ),
)
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    dataset=dict(
        type="CocoDataset",
        data_root=f"{data_root}/val",
        ann_file="annotations.json",
        data_prefix=dict(img="images"),
        synthetic=dict(num_images=50, image_size=image_size, seed=1, min_object_size=10),
        pipeline=[dict(type="Resize", scale=(image_size, image_size))],
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="CocoMetric", metric="bbox")

# from scratch, lr 0.02 diverged (NaN at iteration 40); clipping keeps the early box-regression gradients in check
optim_wrapper = dict(optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=1e-4), clip_grad=dict(max_norm=10.0))
param_scheduler = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=50),  # warm-up from lr / 10
    dict(type="MultiStepLR", by_epoch=False, milestones=[160], gamma=0.1),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=200, val_interval=200)  # validates at the end
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=50, by_epoch=False, max_keep_ckpts=3))
work_dir = "work_dirs/faster_rcnn_r50_fpn_shapes"
randomness = dict(seed=0)
