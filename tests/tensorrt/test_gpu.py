"""PyTorch-on-CUDA parity of the demo variants (marker ``gpu``; skips without a CUDA GPU)."""

from __future__ import annotations

import pytest
import torch

from exporter.build.inputs import InputPlan
from exporter.build.options import BuildOptions
from exporter.build.plan import plan_variants
from exporter.build.runners import torch_runner
from exporter.build.variant import make_variant
from exporter.parity.compare import compare_outputs
from exporter.parity.tolerance import TOLERANCES
from exporter.source.load import load_source
from exporter.source.model import SourceSpec

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_demo_variants_match_on_cuda_fp32_and_fp16():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    source = load_source(SourceSpec())
    options = BuildOptions(patch_sizes=((8, 8), (16, 16), (32, 32)))
    inputs = InputPlan.for_build(options, source.name).with_source(source)
    for spec in plan_variants(source, options):
        model = make_variant(source, spec).model
        x = inputs.parity(spec).arrays()
        reference = torch_runner(model)(x)
        model = model.cuda()
        with torch.inference_mode():
            fp32 = model(torch.from_numpy(x).cuda()).cpu().numpy()
            with torch.autocast("cuda", dtype=torch.float16):
                fp16 = model(torch.from_numpy(x).cuda()).float().cpu().numpy()
        assert compare_outputs(reference, fp32, TOLERANCES["trt-fp32"])
        assert compare_outputs(reference, fp16, TOLERANCES["fp16"])
