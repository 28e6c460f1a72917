"""The method under study, ShaLa (installed as ``shala_bench.plugins``)."""
