"""Networks: the segmenter F, the translator T (generator, discriminator, image pool, Fourier), sync BatchNorm."""

from adapt.nets.segmenter import Segmenter, build_segmenter

__all__ = ["Segmenter", "build_segmenter"]
