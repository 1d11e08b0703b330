"""Errors as the command line shows them: one line that names the file or field.

Why a module of its own: every sub-command (train, evaluate, demo, synth) prints its failures
the same way, and the data layer must not import the engine to do so.
"""

from __future__ import annotations


def one_line_message(err: BaseException) -> str:
    """The error's own message, on one line. An OS error is "file: reason" (its errno form,
    "[Errno 28] No space left on device: 'x'", is for programmers). An error raised in a
    DataLoader worker comes back wrapped in the worker's traceback ("Caught X in DataLoader
    worker process N. Original Traceback ..."); its last line is the original
    ``module.X: message``, and the message is what the user needs."""
    if isinstance(err, OSError) and err.errno is not None and err.strerror:
        files = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
        return f"{files}: {err.strerror}" if files else err.strerror
    text = str(err)
    if "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        text = last.removeprefix(f"{type(err).__module__}.{type(err).__qualname__}: ")
    # One line whatever the message (the protocol explains itself in a list).
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
