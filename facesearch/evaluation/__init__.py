"""Measure accuracy, one module per protocol, all on the embedding ``who`` answers with.

- :mod:`~facesearch.evaluation.common`: the model and its random-weights baseline, photos to embeddings
  (:func:`~facesearch.evaluation.common.embed_photos`), the results file;
- :mod:`~facesearch.evaluation.verification`: the LFW pairs protocol (``facesearch evaluate pairs``);
- :mod:`~facesearch.evaluation.identification`: open-set identification (``facesearch evaluate open-set``);
- :mod:`~facesearch.evaluation.closed_set`: a classifier's test split (``facesearch evaluate closed-set``);
- :mod:`~facesearch.evaluation.calibrate`: the gallery's unknown-threshold from data (``facesearch calibrate``);
- :mod:`~facesearch.evaluation.metrics`: the scores (ROC, equal error, rank-k, bootstrap intervals);
- :mod:`~facesearch.evaluation.plots`: their figures.

Importing this package loads nothing heavy; the GPU script imports these modules directly.
"""
