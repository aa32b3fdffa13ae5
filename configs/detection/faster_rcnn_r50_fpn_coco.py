"""Faster R-CNN ResNet-50-FPN exactly as torchvision's ``fasterrcnn_resnet50_fpn`` (frozen BN, 91 COCO classes,
short side 800 / long side 1333 resized inside the model): its released checkpoint loads with strict=True.

    lateral detect test configs/detection/faster_rcnn_r50_fpn_coco.py fasterrcnn_resnet50_fpn_coco-258fb6c6.pth

Point the ``*_dataloader`` datasets at any COCO-format dataset (annotation json + image folder). To fine-tune on your own categories,
set ``model.num_classes`` to their number + 1 or remove it to take it from the training annotations.
"""

data_root = "data/coco"

model = dict(
    type="FasterRCNN",
    backbone=dict(type="ResNetFPN", depth=50, style="torchvision"),
    num_classes=91,
    min_size=800,
    max_size=1333,
)

train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    sampler=dict(type="DefaultSampler", shuffle=True),
    dataset=dict(
        type="CocoDataset",
        data_root=data_root,
        ann_file="annotations/instances_train2017.json",
        data_prefix=dict(img="train2017"),
        pipeline=[dict(type="RandomFlip", flip_ratio=0.5)],
        labels_are_category_ids=True,  # torchvision's COCO checkpoints predict the COCO category id as the label
    ),
)
val_dataloader = dict(
    batch_size=2,
    num_workers=2,
    dataset=dict(
        type="CocoDataset",
        data_root=data_root,
        ann_file="annotations/instances_val2017.json",
        data_prefix=dict(img="val2017"),
        pipeline=[],
        labels_are_category_ids=True,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="CocoMetric", metric="bbox")

optim_wrapper = dict(optimizer=dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=1e-4))
param_scheduler = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=1000),
    dict(type="MultiStepLR", by_epoch=False, milestones=[60000, 80000], gamma=0.1),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=90000, val_interval=5000)
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=5000, by_epoch=False, max_keep_ckpts=3))
work_dir = "work_dirs/faster_rcnn_r50_fpn_coco"
randomness = dict(seed=0)
