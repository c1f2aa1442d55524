"""Shared library behind the notebooks: read product attribute values out of product photos.

One module per concern (see docs/DESIGN.md): units, metrics, sanity, data, images, shards, pipeline,
backends (model/train/infer for PaliGemma, ocr/ranker for the CPU path), tracking, demo, report.
"""

__version__ = "0.1.0"
