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

data = dict(
    train=dict(
        ann_file=f"{data_root}/train/annotations.json",
        img_dir=f"{data_root}/train/images",
        synthetic=dict(num_images=400, image_size=image_size, seed=0, min_object_size=10),
        pipeline=[
            dict(type="Resize", scale=(image_size, image_size), ratio_range=(0.75, 1.0)),
            dict(type="RandomFlip", flip_ratio=0.5),
        ],
    ),
    val=dict(
        ann_file=f"{data_root}/val/annotations.json",
        img_dir=f"{data_root}/val/images",
        synthetic=dict(num_images=50, image_size=image_size, seed=1, min_object_size=10),
        pipeline=[dict(type="Resize", scale=(image_size, image_size))],
    ),
    batch_size=4,
    num_workers=0,
)

# from scratch, lr 0.02 diverged (NaN at iteration 40); clipping keeps the early box-regression gradients in check
optimizer = dict(lr=0.01, momentum=0.9, weight_decay=1e-4, grad_clip=10.0)
schedule = dict(max_iters=200, warmup_iters=50, milestones=(160,), gamma=0.1, log_interval=10, checkpoint_interval=50)
work_dir = "work_dirs/faster_rcnn_r50_fpn_shapes"
seed = 0
