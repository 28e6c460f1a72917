"""Datasets: specs, the Arrow cache, and the built-in dataset plugins."""

from shala_bench.data.spec import DatasetSpec, ModalitySpec, Split, LoadedDataset

__all__ = ["DatasetSpec", "ModalitySpec", "Split", "LoadedDataset"]
