"""facesearch: face recognition trained on your own labelled photos.

Stages (one module each): ``facesearch.data`` (prepare), ``facesearch.models`` (VGG16),
``facesearch.train``, ``facesearch.embed``, ``facesearch.gallery``, ``facesearch.search``,
``facesearch.visualize`` (explain), ``facesearch.evaluate``.
Importing this package loads no model and no heavy library.
"""

__version__ = "0.1.0"
