"""PyTorch-on-CUDA parity for every variant of a bundle: fp32 (TF32 off) and fp16 autocast
against the CPU fp32 reference, with DESIGN.md's tolerances. Also reports whether TensorRT is
usable here. Run on a GPU machine:

    python scripts/gpu_check.py BUNDLE [--samples 64]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from exporter.build.recheck import bundle_source, record_spec
from exporter.build.runners import torch_runner
from exporter.build.variant import make_variant
from exporter.bundle.door import read_manifest
from exporter.bundle.reference import random_inputs
from exporter.parity.compare import TOLERANCES, compare_outputs
from exporter.tensorrt.versions import tensorrt_problem


def cuda_logits(model: torch.nn.Module, x: np.ndarray, fp16: bool) -> np.ndarray:
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
        return model(torch.from_numpy(x).cuda()).float().cpu().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print(f"TensorRT: {tensorrt_problem() or 'available'}")
    manifest = read_manifest(args.bundle)
    source = bundle_source(manifest)
    pre = source.preprocessing
    for record in manifest.variants:
        spec = record_spec(record)
        model = make_variant(source, spec).model
        x = random_inputs(spec.img_size, args.samples, 0, pre.mean, pre.std)
        reference = torch_runner(model)(x)
        model = model.cuda()
        for name, fp16, tol in (("cuda fp32", False, TOLERANCES["trt-fp32"]), ("cuda fp16", True, TOLERANCES["fp16"])):
            print(f"{record.label:>5} {name}: {compare_outputs(reference, cuda_logits(model, x, fp16), tol)}")


if __name__ == "__main__":
    main()
