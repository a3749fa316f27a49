"""mnv2-operator: train MobileNetV2 with MindSpore on Kubernetes."""

__version__ = "0.1.0"
