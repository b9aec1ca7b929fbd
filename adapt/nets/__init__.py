"""Networks: the segmenter F."""

from adapt.nets.segmenter import ConfigError, Segmenter, build_segmenter

__all__ = ["ConfigError", "Segmenter", "build_segmenter"]
