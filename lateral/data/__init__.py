"""Video data: decoding, mmaction2-compatible sampling and transforms, datasets and batching.

    from lateral.data import build_dataset, build_dataloader
    dataset = build_dataset(dict(type='VideoDataset', ann_file='train_list.txt', data_prefix=dict(video='videos'),
                                 pipeline=[dict(type='DecordInit'), dict(type='SampleFrames', clip_len=32,
                                           frame_interval=2, num_clips=1), dict(type='DecordDecode'), ...]))
    for batch in build_dataloader(dataset, batch_size=8, num_workers=2, shuffle=True):
        batch['inputs']  # [B, V, C, T, H, W]; batch['label']: [B]

See docs/data.md.
"""

from lateral.data.datasets import (
    DATASET_TYPES,
    BaseActionDataset,
    ClassFolderDataset,
    KineticsCSVDataset,
    RawframeDataset,
    VideoDataset,
    build_dataset,
    load_label_map,
)
from lateral.data.decode import (
    DecodeError,
    FrameFolderReader,
    PyAVReader,
    TorchCodecReader,
    VideoInfo,
    open_video,
    probe_video,
    torchcodec_available,
)
from lateral.data.loader import build_dataloader, collate
from lateral.data.pipeline import (
    PIPELINE_STEPS,
    Collect,
    Compose,
    DecordDecode,
    DecordInit,
    OpenCVDecode,
    OpenCVInit,
    PackActionInputs,
    PyAVDecode,
    PyAVInit,
    RawFrameDecode,
    ToTensor,
    VideoDecode,
    VideoInit,
    build_pipeline,
    ensure_inputs,
)
from lateral.data.sampling import DenseSampleFrames, SampleFrames, UniformSample, data_rng, seed_data_rng
from lateral.data.transforms import (
    CenterCrop,
    ColorJitter,
    Flip,
    FormatShape,
    MultiScaleCrop,
    Normalize,
    RandomCrop,
    RandomRescale,
    RandomResizedCrop,
    Resize,
    TenCrop,
    ThreeCrop,
)
from lateral.data.writer import write_video

__all__ = [
    "build_pipeline",
    "build_dataset",
    "build_dataloader",
    "collate",
    "load_label_map",
    "write_video",
    "open_video",
    "probe_video",
    "PyAVReader",
    "TorchCodecReader",
    "FrameFolderReader",
    "VideoInfo",
    "DecodeError",
    "torchcodec_available",
    "data_rng",
    "seed_data_rng",
    "ensure_inputs",
    "Compose",
    "PIPELINE_STEPS",
    "DATASET_TYPES",
    "BaseActionDataset",
    "VideoDataset",
    "RawframeDataset",
    "KineticsCSVDataset",
    "ClassFolderDataset",
    "VideoInit",
    "VideoDecode",
    "DecordInit",
    "DecordDecode",
    "PyAVInit",
    "PyAVDecode",
    "OpenCVInit",
    "OpenCVDecode",
    "RawFrameDecode",
    "SampleFrames",
    "DenseSampleFrames",
    "UniformSample",
    "Resize",
    "RandomRescale",
    "RandomCrop",
    "RandomResizedCrop",
    "MultiScaleCrop",
    "CenterCrop",
    "ThreeCrop",
    "TenCrop",
    "Flip",
    "ColorJitter",
    "Normalize",
    "FormatShape",
    "PackActionInputs",
    "Collect",
    "ToTensor",
]
