"""The engines ``optimize`` builds, one file each: ``torch`` (the fused, frozen graph),
``onnxruntime`` (``torch.onnx.export`` + ONNX Runtime) and ``openvino``
(``openvino.convert_model`` + its CPU plugin)."""
