"""The ``ocr`` backend: ``engine`` (rapidocr with a disk cache and a process pool), ``candidates`` (every
number-and-unit mention that fits the entity), ``ranker`` (features, models, thresholds, the backend)."""
