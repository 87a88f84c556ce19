"""TensorRT and TensorRT-RTX: libraries and versions, profiles, trtexec scripts, the builder and
runner, sidecars, the preflight and the engine stage. No torch, timm or onnx."""
