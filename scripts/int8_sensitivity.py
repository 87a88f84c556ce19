"""Which layers cost INT8 agreement? Quantise one group of a variant's matmuls at a time.

    python scripts/int8_sensitivity.py BUNDLE --variant p32 --calib-dir DIR [--check 64]
    python scripts/int8_sensitivity.py bundles/flexivit-demo --variant p16   # the demo's own digits

Uses the build's own quantiser (exporter.build.precision.to_int8) and the build's split of DIR: the
first --check images (sorted by name) are judged, the next 64 calibrate. Groups follow timm's
node names: the patch-embedding Conv, qkv, the two activation-by-activation attention matmuls,
proj, fc1, fc2, the head; "all" quantises every one, "build" is what `build --precision int8`
writes (exporter.build.precision.int8_float_nodes float, and the matmuls whose input error on the
calibration images exceeds MAX_INPUT_ERROR). Per group: p99 |Δ| of
the logits against the bundle's fp32 ONNX, lowest cosine, top-1 agreement, and the fp32
top-1/top-2 logit margins of the images whose top-1 changed, next to the median margin: with
nearly tied logits (a random-weight model) any quantised layer flips some images.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx

from exporter.build.inputs import InputPlan
from exporter.build.precision import MAX_INPUT_ERROR, QUANTIZED_OPS, int8_float_nodes, to_int8
from exporter.build.recheck import record_spec
from exporter.build.runners import ort_runner
from exporter.bundle.door import read_manifest
from exporter.core.precision import Precision
from exporter.parity.compare import compare_outputs, tolerance_for
from exporter.runtime.images import load_images
from exporter.source.demo import DEMO_NAME, digits_to_pixels, load_demo_digits
from exporter.source.load import preprocessing_from

GROUPS = {
    "patch conv": "/patch_embed/",
    "qkv": "/attn/qkv/",
    "attention matmuls": "/attn/MatMul",
    "proj": "/attn/proj/",
    "fc1": "/mlp/fc1/",
    "fc2": "/mlp/fc2/",
    "head": "/head/",
}


def run_batches(path: Path, x: np.ndarray, threads: int | None) -> np.ndarray:
    run = ort_runner(path, threads)
    return np.concatenate([run(x[i : i + 8]) for i in range(0, len(x), 8)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--variant", default="p16")
    parser.add_argument("--calib-dir", type=Path, help="images (the demo bundle: its own digits when omitted)")
    parser.add_argument("--check", type=int, default=64, help="images judged (the first N, sorted)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    manifest = read_manifest(args.bundle)
    record = next(v for v in manifest.variants if v.label == args.variant)
    fp32 = args.bundle / record.onnx["path"]
    pre = preprocessing_from(manifest.preprocessing, "bundle")
    if args.calib_dir is not None:
        check = load_images(args.calib_dir, record.img_size, pre, args.check)
    elif manifest.name == DEMO_NAME:
        check = digits_to_pixels(load_demo_digits("test")[0][: args.check], record.img_size[0])
    else:
        parser.error("--calib-dir is needed for any bundle but the demo's")
    # Calibrated as the build calibrates: the images after the checked ones, or the demo's split.
    demo = manifest.name == DEMO_NAME
    plan = InputPlan(args.check, precision=Precision.INT8, calib_dir=args.calib_dir, demo=demo, preprocessing=pre)
    calib, _ = plan.calibration(record_spec(record))
    ref = run_batches(fp32, check, args.threads)
    top2 = np.sort(ref, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    span = float(np.mean(ref.max(1) - ref.min(1)))
    print(
        f"{manifest.name} {args.variant}: {len(check)} checked, {len(calib)} calibrate; logit range {span:.3f}, "
        f"top-1/top-2 margin median {np.median(margin):.4f}, min {margin.min():.5f}"
    )
    nodes = [n.name for n in onnx.load(str(fp32), load_external_data=False).graph.node if n.op_type in QUANTIZED_OPS]
    tol = tolerance_for("int8", "onnxruntime")
    with tempfile.TemporaryDirectory() as tmp:
        kept_float = set(int8_float_nodes(fp32))
        for group, key in {"all": "", "build": "", **GROUPS}.items():
            chosen = [n for n in nodes if key in n and (group != "build" or n not in kept_float)]
            if not chosen:
                print(f"{group:>18}: no node names contain {key!r}")
                continue
            dst = Path(tmp) / "q.onnx"
            # Each group exactly as chosen; "build" with the build's calibration screen as well.
            screen = MAX_INPUT_ERROR if group == "build" else None
            to_int8(fp32, dst, calib, exclude=[n for n in nodes if n not in chosen], max_input_error=screen)
            out = run_batches(dst, check, args.threads)
            cmp = compare_outputs(ref, out, tol)
            flipped = np.sort(margin[ref.argmax(1) != out.argmax(1)])
            print(
                f"{group:>18}: {len(chosen):3d} nodes  p99|Δ| {cmp.p99_abs:.4f}  cos {cmp.min_cosine:.5f}  "
                f"top-1 {cmp.top1_agreement:6.1%}  flipped at margins {' '.join(f'{m:.4f}' for m in flipped) or '-'}"
            )


if __name__ == "__main__":
    main()
