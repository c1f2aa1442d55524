"""Read product attribute values out of product photos: the library behind the notebooks.

The packages follow the data's way through (``docs/DESIGN.md`` draws it); imports point one way, down this list:

- ``utils.pipeline``: the stages the notebooks call, the shard loop, the submission, the report, ``run_all.sh``;
- ``utils.models``: the backend interface and its two backends, ``paligemma`` (LoRA fine-tune, GPU) and ``ocr``
  (OCR + learned ranking, CPU);
- ``utils.data``: the challenge tables, images and their downloader, the built-in demo;
- ``utils.core``: units and the cleaning step, the submission format, the sanity check, the metric (no I/O);
- ``utils.env``: where we run (paths, GPUs, secrets), tracking, durable files, console lines.

``python -m utils.sanity``, ``python -m utils.metrics`` and ``python -m utils.images download`` are the commands.
"""

__version__ = "0.2.0"
