"""Errors the CLI prints on one line (never a traceback), each with its own exit status.

| status | class | meaning |
|---|---|---|
| 2 | `UserError` (ConfigError, DataError, UnsupportedModelError, RunFolderBusyError, ...) | bad input, refused before anything is written |
| 3 | `TrainingDivergedError` | non-finite loss or weights, or a loss stuck at chance with zero gradient |
| 4 | `RunFolderGoneError` | the run folder was deleted or moved while the run wrote it |
| 5 | `WriteFaultError` | the disk refused a write (full disk, quota, I/O error) |
| 130 / 143 | `RunInterrupted` | Ctrl-C (SIGINT) / SIGTERM stopped the run |
"""


class UserError(Exception):
    """Bad input from the user (config, files, data, unsupported model). Never shown as a traceback."""

    exit_code = 2


class ConfigError(UserError):
    """An override or recipe that does not fit the schema."""


class DataError(UserError):
    """A missing or malformed data file; the message names the file and line."""


class UnsupportedModelError(UserError):
    """A model whose architecture a component does not know."""


class RunFolderBusyError(UserError):
    """Another process holds the run folder's lock: one writer per run folder."""


class TrainingDivergedError(UserError):
    """Loss or weights became NaN/Inf, or the loss sat at chance with zero gradient; no bad checkpoint
    is written and the last good one is kept."""

    exit_code = 3


class RunFault(Exception):
    """A fault of the environment while a run was writing (not bad input): one line, its own status."""

    exit_code = 1


class RunFolderGoneError(RunFault):
    """The run folder disappeared (or moved) mid-run; nothing is recreated."""

    exit_code = 4


class WriteFaultError(RunFault):
    """A write into the run folder failed (ENOSPC, EDQUOT, EIO, ...); nothing half-written is left."""

    exit_code = 5


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a run after its write in progress finished (or was abandoned, on a
    second Ctrl-C). A KeyboardInterrupt, so no `except Exception` on the way swallows it."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code
