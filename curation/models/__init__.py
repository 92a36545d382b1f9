"""Model definitions used by curation stages (architectures only; weights come from the registry)."""
