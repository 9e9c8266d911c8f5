"""edge-resnet: ONNX ResNets to verified INT8 TFLite, and a device daemon that says what a camera sees."""

__version__ = "0.1.0"
