"""The data: the challenge tables (load, validate, sample, split, the prompt), image files and their downloader,
and the built-in demo data set. Depends on ``utils.core`` and ``utils.env`` only."""
