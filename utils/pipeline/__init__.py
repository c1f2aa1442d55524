"""The pipeline: ``params`` (each stage's parameters, written once), ``workdir`` (the hand-over folder), ``stages``
(one function per notebook), ``predict`` and ``shards`` (the resumable shard loop), ``report`` (F1 plots, worst
mistakes, the browser), ``run`` (``run_all.sh``). Depends on ``utils.models`` and below."""
