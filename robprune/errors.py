"""User-facing errors and warnings. The CLI prints an error's ``str(err)`` on one line and exits with code 2; a
:class:`DataWarning` lets the run go on and is recorded in metrics.json ``warnings``."""


class RobpruneError(Exception):
    """An error caused by the user's input (config, files); its message names the key or file and the fix."""

    kind = "Error"

    def __init__(self, message: str = "", *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key  # the config key the error is about, where one is (robprune.compose.fit_experiment reads it)

    def __str__(self) -> str:  # one readable line: "ConfigError: prune.channel_ratio must be ..."
        return f"{self.kind}: {super().__str__()}"


class ConfigError(RobpruneError):
    kind = "ConfigError"


class DataError(RobpruneError):
    kind = "DataError"


class CheckpointError(RobpruneError):
    kind = "CheckpointError"


class ExportError(RobpruneError):
    """``robprune export`` cannot write or check the file (an op without a mapping, a package missing, a failed check)."""

    kind = "ExportError"


class DataWarning(UserWarning):
    """A fault in the data that a run accepts (an image converted, a test example also in training): one line
    naming the files and what was done. ``build_data`` collects them (robprune.data.faults); the run logs them
    and records them in metrics.json ``warnings``."""
