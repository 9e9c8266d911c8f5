"""One exception hierarchy; the CLI turns each into one line and a documented exit code."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes, documented in the README. systemd's RestartPreventExitStatus lists CONFIG."""

    OK = 0
    FAILURE = 1  # unexpected error (a bug: please report it)
    USAGE = 2  # bad command-line arguments (argparse's own code)
    CONFIG = 3  # invalid configuration file or value
    MODEL = 4  # missing, corrupt or unusable model / labels
    INPUT = 5  # unreadable image, empty or missing data folder
    HARDWARE = 6  # camera or Edge TPU missing
    DEPENDENCY = 7  # an optional package or tool is not installed
    VERIFY = 8  # a converted model failed its fidelity gate
    PROBLEMS = 9  # `doctor` found problems


class EdgeResnetError(Exception):
    """Base error. The message is one line that names the thing and the fix."""

    exit_code: ExitCode = ExitCode.FAILURE


class ConfigError(EdgeResnetError):
    exit_code = ExitCode.CONFIG


class ModelError(EdgeResnetError):
    exit_code = ExitCode.MODEL


class LabelsError(ModelError):
    pass


class InputError(EdgeResnetError):
    exit_code = ExitCode.INPUT


class HardwareError(EdgeResnetError):
    exit_code = ExitCode.HARDWARE


class EdgeTpuUnavailable(HardwareError):
    pass


class DependencyError(EdgeResnetError):
    exit_code = ExitCode.DEPENDENCY


class VerificationError(EdgeResnetError):
    exit_code = ExitCode.VERIFY
