"""neulig: multi-level model collaboration (merging vs ensembling) with Neural Ligand."""

__version__ = "0.1.0"
