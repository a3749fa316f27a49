"""The packaged MindSpore MobileNetV2 trainer (MindCV-compatible)."""

__version__ = "0.1.0"
