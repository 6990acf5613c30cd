"""Models: the VGG16 identity classifier (``facesearch.models.vgg``)."""

from facesearch.models.vgg import VGG16, VGGConfig

__all__ = ["VGG16", "VGGConfig"]
