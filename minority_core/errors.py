"""The one error hierarchy: a `UserError` is something the user can fix (bad input, unreachable or
corrupt storage, a sample that went non-finite), and its message is one line naming the problem
and the fix. The CLI prints it and exits 2; any other exception is a bug and keeps its traceback.

Each class also derives from the builtin a caller would naturally catch (`ValueError`,
`FileNotFoundError`, ...), so library code that catches those keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """Base of every error whose cause is outside the code: bad input, storage, data."""


class InputError(UserError, ValueError):
    """A value, option, config field or file content is invalid."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or object the user named (model, weights, dataset file, run) does not exist."""


class StorageError(UserError, RuntimeError):
    """A storage operation failed; the message is one line naming the URL and a likely fix."""


class CorruptShardError(StorageError):
    """A stored shard does not match its manifest record (hash, size or rows) or does not parse."""


class NonFiniteSampleError(UserError, FloatingPointError):
    """Sampling produced NaN or inf: raised instead of ever returning a corrupt sample."""


def one_line(err: BaseException) -> str:
    """`Type: message` squeezed to one line: these end up in CLI output and logs."""
    text = " ".join(str(err).split()) or "(no message)"
    return f"{type(err).__name__}: {text}"


class LeaseHeldError(UserError, RuntimeError):
    """Another writer holds the output's lease: one writer per output."""


class LeaseLostError(StorageError):
    """This writer lost the output's lease (taken over, or not renewed in time): it must not commit."""
