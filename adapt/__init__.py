"""adapt: domain adaptation training framework for semantic segmentation."""

__version__ = "0.1.0"
