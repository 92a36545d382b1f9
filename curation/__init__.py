"""vividhead curation: raw web videos -> VividHead-style WebDataset shards on Ray."""

__version__ = "0.1.0"
