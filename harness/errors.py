"""The exception tree of the harness.

Every error the harness raises on purpose derives from :class:`HarnessError` and carries a
message that says what went wrong *and what to do about it* (a ``hint``). The CLI turns any
``HarnessError`` into one line on stderr and exit code 2 (bad input) or 1 (the job or a rung
failed); anything else is a bug and keeps its traceback.

::

    HarnessError
    ├── UsageError            bad input: exit 2
    │   ├── JobSpecError      a job file or request that does not validate
    │   └── RecordError       a run-record directory that cannot be read
    ├── RungUnavailable       a rung cannot run on this machine (skipped, with the reason)
    │   ├── NoRungCanRun      not one rung of a ladder can
    │   └── RequiredRungUnavailable   a rung given to --require cannot
    ├── ImageError            an image could not be built or found
    ├── CheckpointError       a checkpoint cannot be read for a tensor-level diff
    ├── RungFailed            a rung broke down while running (not the job failing)
    │   (defined beside the code that raises them:)
    ├── S3Error               harness.spec.s3: an S3 transfer around the job failed
    ├── LocalStackError       harness.runtime.localstack: LocalStack could not be installed or started
    ├── ArchiveRefused        harness.record.archives: an archive over the caps (also a tarfile.TarError)
    └── InstallFailed         harness.runtime.requirements: pip could not install requirements.txt (the
                              rungs record it as the job failing; the hint is in the rung fact)

tests/test_errors.py checks that every exception class of the package (but for the code that runs
alone, in the job or a container) is in this tree.
"""

from __future__ import annotations


class HarnessError(Exception):
    """Root of every error the harness raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\nHint: {hint}")


class UsageError(HarnessError):
    """The user gave input the harness cannot act on; nothing was run."""

    exit_code = 2


class JobSpecError(UsageError):
    """A job spec (YAML, Python or CreateTrainingJob request) does not validate."""


class RecordError(UsageError):
    """A path given as a run record is not one, or is from an unknown format version."""


class RungUnavailable(HarnessError):
    """A rung cannot run here (no GPU, no Docker engine, no SDK); the ladder skips it."""

    def __init__(self, rung: str, reason: str, *, hint: str | None = None) -> None:
        self.rung, self.reason = rung, reason
        super().__init__(f"rung {rung!r} cannot run here: {reason}", hint=hint)


class NoRungCanRun(RungUnavailable):
    """Not one rung of a ladder can run here; ``skipped`` holds each one's reason."""

    def __init__(self, skipped: dict[str, str]) -> None:
        self.skipped = dict(skipped)
        reasons = "; ".join(f"{rung}: {why}" for rung, why in skipped.items())
        HarnessError.__init__(self, f"no rung of the ladder can run here: {reasons}", hint="see `harness doctor`")
        self.rung, self.reason = ",".join(skipped), reasons


class RequiredRungUnavailable(RungUnavailable):
    """A rung the caller required (``--require``) cannot run here: the ladder does not start,
    since a verdict without it would not be the one asked for."""

    def __init__(self, rung: str, reason: str) -> None:
        super().__init__(
            rung, reason, hint="run where it can (`harness doctor` says what it needs), or drop it from --require"
        )
        self.message = f"required rung {rung!r} cannot run here: {reason}"


class ImageError(HarnessError):
    """A container image could not be built, bootstrapped or found."""


class RungFailed(HarnessError):
    """The harness itself could not carry a rung through (as opposed to the job failing)."""


class CheckpointError(HarnessError):
    """A checkpoint cannot be loaded for a tensor-level comparison (format, torch missing)."""
