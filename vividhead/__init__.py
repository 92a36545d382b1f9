"""vividhead: curate VividHead-style talking-head datasets, train and serve streaming talking-head models.

The installed namespace maps the repository's top-level folders::

    vividhead.curation       <- curation/        raw videos -> WebDataset shards + Parquet manifest (Ray)
    vividhead.datasets_card  <- datasets_card/   Hub dataset card and publisher
    vividhead.training       <- training/        models, flow-matching recipe, data loader, trainers
    vividhead.inference      <- inference/       streaming generator, server, sequence parallelism

This root holds only what all of them share: the shard contract (:mod:`vividhead.shard_format`) and
the command line (:mod:`vividhead.cli`).
"""

__version__ = "0.1.0"
