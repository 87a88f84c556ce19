"""The runtime's backends, one module each, in the order ``backend="auto"`` tries them:

    tensorrt        a built engine of the bundle (sidecar checked against this GPU and TensorRT)
    ort-tensorrt    onnxruntime with its TensorRT provider
    ort-cuda        onnxruntime with its CUDA provider
    ort-cpu         onnxruntime on the CPU
    openvino        OpenVINO on the CPU, f32 inference precision (optional extra)
    openvino-bf16   OpenVINO on the CPU, bf16 (AMX/AVX-512 BF16 CPUs; OpenVINO's own default there)

Importing the package registers them all (``base``: the registry, ``load_runner``). Each
backend's library is imported only when it is checked or loaded: a device needs only the one it runs.
"""

from exporter.runtime.backends import openvino, ort, tensorrt  # noqa: F401 - each registers its backends
