"""hundred: a fast, honest workbench for image-classification research at ImageNet-100 scale."""

__version__ = "0.1.0"
