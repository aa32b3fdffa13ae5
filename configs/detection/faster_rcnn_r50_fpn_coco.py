"""Faster R-CNN ResNet-50-FPN exactly as torchvision's ``fasterrcnn_resnet50_fpn`` (frozen BN, 91 COCO classes,
short side 800 / long side 1333 resized inside the model): its released checkpoint loads with strict=True.

    lateral detect test configs/detection/faster_rcnn_r50_fpn_coco.py fasterrcnn_resnet50_fpn_coco-258fb6c6.pth

Point ``data`` at any COCO-format dataset (annotation json + image folder). To fine-tune on your own categories,
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

data = dict(
    train=dict(
        ann_file=f"{data_root}/annotations/instances_train2017.json",
        img_dir=f"{data_root}/train2017",
        pipeline=[dict(type="RandomFlip", flip_ratio=0.5)],
    ),
    val=dict(
        ann_file=f"{data_root}/annotations/instances_val2017.json",
        img_dir=f"{data_root}/val2017",
        pipeline=[],
    ),
    batch_size=2,
    num_workers=2,
    labels_are_category_ids=True,  # torchvision's COCO checkpoints predict the COCO category id as the label
)

optimizer = dict(lr=0.02, momentum=0.9, weight_decay=1e-4)
schedule = dict(max_iters=90000, warmup_iters=1000, milestones=(60000, 80000), gamma=0.1, log_interval=50,
                checkpoint_interval=5000)
work_dir = "work_dirs/faster_rcnn_r50_fpn_coco"
seed = 0
