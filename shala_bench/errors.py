"""One exception type per kind of user mistake; the CLI prints each as one line."""


class ShalaBenchError(Exception):
    """Base class: anything the user can fix. Printed as one line, exit code 2."""


class UnknownNameError(ShalaBenchError):
    """A model, dataset, metric or profile name that is not registered."""


class ProtocolError(ShalaBenchError):
    """A bad `--set key=value` override or an inconsistent protocol."""


class CheckpointError(ShalaBenchError):
    """A checkpoint that cannot be read or does not match the run."""


class DataError(ShalaBenchError):
    """A dataset source that is missing, malformed or not prepared."""


class RecordError(ShalaBenchError):
    """A run record or results folder that cannot be read."""


def close_matches(name: str, choices) -> str:
    import difflib

    choices = sorted(choices)
    near = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    return f"{hint}; known: {', '.join(choices)}"
