"""OpenVINO backend checks, run by tests/test_export.py in a pytest process of their own (see there why).

Not collected by the main suite (the file name does not start with test_).
"""

from __future__ import annotations

import pytest
import torch
from test_export import ATOL, RTOL, golden_model

import lateral
from lateral.inference.exporters import inference_copy
from lateral.inference.optimization import bf16_supported


def test_openvino_backend_golden_parity_views_and_shapes():
    model, case = golden_model("slowfast_r50_multiview")
    opt = lateral.optimize(model, backend="openvino")
    assert opt.backbone.backend == "OpenVinoBackend"
    views = case.input()  # [N, V, C, T, H, W]
    with torch.no_grad():
        torch.testing.assert_close(opt.predict(views), case.expected["average_prob"], atol=ATOL, rtol=RTOL)
        clips = views.reshape(-1, *views.shape[2:])  # predict ran these 6 clips as one batch
        logits = opt(clips[:2])  # another batch size: the same per-sample model, no new conversion
        assert len(opt.backbone._runner._runners) == 1
        opt(clips[:1, :, :, :32, :32])  # another clip size: converted for it
        assert len(opt.backbone._runner._runners) == 2
    expected = case.expected["clip_logits"].reshape(clips.shape[0], -1)[:2]
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=RTOL)
    with pytest.raises(RuntimeError, match="inference copy"):
        opt.backbone.train()
    # one copy of each BN-folded weight (the OpenVINO runner is not a submodule), under the model's own names
    folded = {k.replace("backbone.", "backbone.module.", 1) for k in inference_copy(model).state_dict()}
    assert set(opt.state_dict()) == folded


@pytest.mark.skipif(not bf16_supported("cpu"), reason="OpenVINO runs f32 without native bf16")
def test_openvino_bf16_keeps_top1():
    model, case = golden_model("slowfast_r50_4x16_seed")
    opt = lateral.optimize(model, precision="bf16", backend="openvino")
    with torch.no_grad():
        got = opt(case.input())
    expected = case.expected["logits"]
    assert torch.equal(got.argmax(dim=1), expected.argmax(dim=1))
    assert (got.softmax(dim=1) - expected.softmax(dim=1)).abs().max().item() <= 1e-2


def test_openvino_copy_follows_load_state_dict_and_survives_copies():
    import copy
    import io
    import pickle

    from test_export import randomise_norms, thin_config, thin_input

    def thin(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return randomise_norms(lateral.build_model(thin_config()), seed=seed).eval()

    model_a, model_b = thin(1), thin(2)
    x = thin_input()
    opt = lateral.optimize(model_a, backend="openvino")
    with torch.no_grad():
        before = opt(x)
        torch.testing.assert_close(before, model_a(x), atol=ATOL, rtol=RTOL)
        buffer = io.BytesIO()
        torch.save(opt, buffer)  # pickle protocol 2
        buffer.seek(0)
        for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt)), torch.load(buffer, weights_only=False)):
            torch.testing.assert_close(clone(x), before, atol=1e-6, rtol=1e-6)
        opt.load_state_dict(lateral.optimize(model_b, backend="openvino").state_dict())
        torch.testing.assert_close(opt(x), model_b(x), atol=ATOL, rtol=RTOL)  # converted again for the new weights
