"""Mixup / cutmix blending of training batches (mmaction2 data_preprocessor.blending)."""

import pytest
import torch

from lateral.config import ConfigError
from lateral.data.blending import CutmixBlending, MixupBlending, RandomBatchAugment, build_blending


def _batch(batch_size=4, num_classes=5):
    clips = torch.arange(batch_size, dtype=torch.float32).view(-1, 1, 1, 1, 1, 1).expand(batch_size, 2, 3, 4, 8, 8)
    return clips.contiguous(), torch.arange(batch_size) % num_classes


def test_mixup_mixes_clips_and_labels_with_the_same_weight():
    # sample i's clip is the constant i and its label is class i, so a blend's value must equal the label-weighted
    # mean of the classes: sum_c c * soft[i, c]
    clips, labels = _batch()
    torch.manual_seed(0)
    mixed, soft = MixupBlending(num_classes=5, alpha=0.4)(clips, labels)
    assert mixed.shape == clips.shape and soft.shape == (4, 5)
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(4))
    assert soft[:, 4].sum() == 0  # no sample has class 4
    for i in range(4):
        assert torch.all(mixed[i] == mixed[i].flatten()[0])  # a whole-clip blend, no region differs
        assert float(mixed[i].flatten()[0]) == pytest.approx(float((soft[i] * torch.arange(5.0)).sum()), abs=1e-5)
    assert not torch.equal(mixed, clips)  # with this seed, the batch was blended


def test_cutmix_pastes_a_box_and_weights_labels_by_its_area():
    clips, labels = _batch()
    torch.manual_seed(3)
    mixed, soft = CutmixBlending(num_classes=5, alpha=1.0)(clips, labels)
    for i in range(4):
        frame = mixed[i, 0, 0, 0]  # [8, 8]
        foreign = frame != i
        share = float(foreign.float().mean())
        if share:  # the pasted values form one axis-aligned box from one partner
            rows, cols = foreign.any(dim=1).nonzero(), foreign.any(dim=0).nonzero()
            assert int(foreign.sum()) == len(rows) * len(cols)
            assert torch.all(mixed[i, :, :, :, foreign] == frame[foreign][0])
        torch.testing.assert_close(soft[i].sum(), torch.tensor(1.0))
        # the label weights are the area shares: the frame's mean value is their class-weighted mean
        assert float(frame.mean()) == pytest.approx(float((soft[i] * torch.arange(5.0)).sum()), abs=1e-5)
    assert not torch.equal(mixed, clips)


def test_random_batch_augment_and_bad_configs():
    clips, labels = _batch()
    none_chosen = RandomBatchAugment([dict(type="MixupBlending", num_classes=5)], probs=[0.0])
    same, soft = none_chosen(clips, labels)
    assert torch.equal(same, clips) and torch.equal(soft, torch.nn.functional.one_hot(labels, 5).float())
    both = build_blending(
        dict(
            type="RandomBatchAugment",
            augments=[dict(type="MixupBlending", num_classes=5), dict(type="CutmixBlending", num_classes=5)],
        )
    )
    assert both.probs == [0.5, 0.5]
    with pytest.raises(
        ConfigError, match="data_preprocessor.blending: unknown type 'MixUpBlending'. Did you mean 'MixupBlending'"
    ):
        build_blending(dict(type="MixUpBlending", num_classes=5))
    with pytest.raises(ConfigError, match=r"data_preprocessor.blending \(MixupBlending\): unknown key 'alpah'"):
        build_blending(dict(type="MixupBlending", num_classes=5, alpah=0.2))
    with pytest.raises(ConfigError, match="probs must be 2 non-negative numbers summing to at most 1"):
        RandomBatchAugment([dict(type="MixupBlending", num_classes=5)] * 2, probs=[0.7, 0.7])
    with pytest.raises(ConfigError, match="disagree on num_classes"):
        RandomBatchAugment([dict(type="MixupBlending", num_classes=5), dict(type="CutmixBlending", num_classes=4)])
    with pytest.raises(ValueError, match="labels must lie in 0..4"):
        MixupBlending(num_classes=5)(clips, torch.tensor([0, 1, 7, 2]))
