"""A tiny motion dataset (real video files) and a tiny SlowFast config shared by the engine tests."""

from pathlib import Path

import pytest

from lateral.config import write_config


@pytest.fixture(scope="session")
def motion_data(tmp_path_factory) -> Path:
    from lateral.data.synthetic import make_motion_dataset

    root = tmp_path_factory.mktemp("motion")
    make_motion_dataset(root, num_train_per_class=2, num_test_per_class=1, num_frames=16, size=32, seed=0)
    return root


def tiny_run_config(data: Path, epochs: int = 2, lr: float = 0.01, ann_train: str = "train_list.txt") -> dict:
    num_classes = len((data / "label_map.txt").read_text().split())
    train_pipeline = [
        dict(type="PyAVInit"),
        dict(type="SampleFrames", clip_len=8, frame_interval=2, num_clips=1),
        dict(type="PyAVDecode"),
        dict(type="RandomResizedCrop", area_range=(0.7, 1.0)),
        dict(type="Resize", scale=(32, 32), keep_ratio=False),
        dict(type="FormatShape", input_format="NCTHW"),
        dict(type="PackActionInputs"),
    ]
    test_pipeline = [
        dict(type="PyAVInit"),
        dict(type="SampleFrames", clip_len=8, frame_interval=2, num_clips=2, test_mode=True),
        dict(type="PyAVDecode"),
        dict(type="Resize", scale=(-1, 32)),
        dict(type="CenterCrop", crop_size=32),
        dict(type="FormatShape", input_format="NCTHW"),
        dict(type="PackActionInputs"),
    ]

    def dataset(ann, pipeline, test):
        return dict(
            type="VideoDataset",
            ann_file=str(data / ann),
            data_prefix=dict(video=str(data)),
            pipeline=pipeline,
            test_mode=test,
        )

    return dict(
        model=dict(
            type="Recognizer3D",
            backbone=dict(
                type="ResNet3dSlowFast",
                resample_rate=4,
                speed_ratio=4,
                channel_ratio=4,
                slow_pathway=dict(
                    type="resnet3d",
                    depth=18,
                    base_channels=4,
                    lateral=True,
                    conv1_kernel=(1, 7, 7),
                    inflate=(0, 0, 1, 1),
                ),
                fast_pathway=dict(type="resnet3d", depth=18, base_channels=1, lateral=False, conv1_kernel=(5, 7, 7)),
            ),
            cls_head=dict(type="SlowFastHead", in_channels=32 + 8, num_classes=num_classes, dropout_ratio=0.0),
            data_preprocessor=dict(type="ActionDataPreprocessor", mean=[127.5] * 3, std=[64.0] * 3),
            test_cfg=dict(average_clips="prob"),
        ),
        label_map=str(data / "label_map.txt"),
        test_pipeline=test_pipeline,
        train_dataloader=dict(batch_size=4, num_workers=0, dataset=dataset(ann_train, train_pipeline, False)),
        val_dataloader=dict(batch_size=4, num_workers=0, dataset=dataset("test_list.txt", test_pipeline, True)),
        test_dataloader=dict(batch_size=4, num_workers=0, dataset=dataset("test_list.txt", test_pipeline, True)),
        train_cfg=dict(max_epochs=epochs, val_interval=1),
        optim_wrapper=dict(
            optimizer=dict(type="SGD", lr=lr, momentum=0.9, weight_decay=1e-4), clip_grad=dict(max_norm=10)
        ),
        param_scheduler=[
            dict(type="LinearLR", start_factor=0.5, begin=0, end=1),
            dict(type="CosineAnnealingLR", T_max=epochs, begin=0, end=epochs),
        ],
        default_hooks=dict(logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=5)),
        randomness=dict(seed=0),
    )


@pytest.fixture
def run_config(motion_data):
    return tiny_run_config(motion_data)


@pytest.fixture
def config_file(tmp_path, run_config) -> Path:
    path = tmp_path / "tiny_config.py"
    write_config(run_config, path)
    return path
