"""Networks, plain torch: the segmenter F, the translator T (generator, discriminator, image pool, Fourier).
BatchNorm synchronized across processes is in ``adapt.distributed``."""

from adapt.nets.segmenter import Segmenter, build_segmenter

__all__ = ["Segmenter", "build_segmenter"]
