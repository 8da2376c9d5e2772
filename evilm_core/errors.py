"""Error types. `EvilmError` and its children are user errors: the CLI prints their message
(one paragraph, no traceback) and exits non-zero. Anything else is a bug and keeps its traceback."""


class EvilmError(Exception):
    """A problem with the user's input: a file, a key, a value. The message names it."""


class RecipeError(EvilmError):
    """A recipe (YAML) is malformed: unknown key, wrong type, bad override. `key`: the dotted
    key it concerns where one is known (`optim.lr`), so a `--set` can be named instead of the file."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class ManifestError(EvilmError):
    """A manifest file cannot be read in the format asked for."""


class VideoDecodeError(EvilmError):
    """One clip cannot be used: missing, empty, undecodable or with zero frames.

    `reason` is one of "missing", "corrupt", "short" so callers can count problems by kind.
    Datasets turn this into skip-and-count; it never ends a training run.
    """

    def __init__(self, path: str, reason: str, detail: str = ""):
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


# Exit code of a run stopped by SIGTERM or SIGUSR1 after writing its checkpoint: EX_TEMPFAIL
# ("try again later"), what a SLURM script tests to requeue the job (docs/reliability.md, "Signals").
REQUEUE_EXIT = 75


class TrainingInterrupted(EvilmError):
    """SIGINT/SIGTERM/SIGUSR1 arrived during training; a checkpoint was written and the run
    stopped. `hint` says how to continue; a caller that continues differently (the quickstart)
    rebuilds the message with its own hint through `with_hint`. Exit code: 130 for SIGINT (a
    person pressed Ctrl-C), REQUEUE_EXIT for the signals a cluster sends."""

    def __init__(self, signal: int, step: int, checkpoint: str, hint: str = "continue with --resume"):
        self.signal, self.step, self.checkpoint, self.hint = signal, step, str(checkpoint), hint
        super().__init__(f"stopped by signal {signal} at step {step}; checkpoint {checkpoint}; {hint}")

    @property
    def exit_code(self) -> int:
        return 130 if self.signal == 2 else REQUEUE_EXIT

    def with_hint(self, prefix: str, hint: str) -> "TrainingInterrupted":
        err = TrainingInterrupted(self.signal, self.step, self.checkpoint, hint)
        err.args = (f"{prefix}: {err.args[0]}",)
        return err
