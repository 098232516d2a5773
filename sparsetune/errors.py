"""User-facing errors: the CLI prints their message on one line and exits with status 2."""


class UserError(Exception):
    """Bad input from the user (config, files, data, unsupported model). Never shown as a traceback."""


class ConfigError(UserError):
    """An override or recipe that does not fit the schema."""


class DataError(UserError):
    """A missing or malformed data file; the message names the file and line."""


class UnsupportedModelError(UserError):
    """A model whose architecture a component does not know."""


class TrainingDivergedError(UserError):
    """Loss or gradients became NaN/Inf; the last good checkpoint is kept."""
