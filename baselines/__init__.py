"""The baseline multimodal VAEs, one readable file each (installed as ``shala_bench.baselines``)."""
