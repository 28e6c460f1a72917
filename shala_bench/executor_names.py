"""The executor names, in a module that imports nothing: the CLI offers them as `--executor` choices while it
builds its parser, and `shala-bench --help` (or `leaderboard`, `status`) should not wait seconds for torch."""

EXECUTORS = ("inline", "local", "slurm")
