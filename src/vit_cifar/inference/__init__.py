"""Running a trained network: devices and input specs, the torch / ONNX / safetensors runtimes, timm interop,
export formats (prediction is the command vit_cifar.predict)."""
