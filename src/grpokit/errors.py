"""The errors grpokit raises for what a user gave it: a config, data, model files, rewards, a judge,
checkpoints, a launch. Each message says what is wrong, where (file, row, key, function,
sample) and what to do, so the command line shows it as one screen without a traceback (exit
code 2; ``--debug`` or ``GRPOKIT_DEBUG=1`` shows the traceback too). Any other exception is a bug
in grpokit and keeps its traceback.

Every class is also a standard exception (``ValueError`` or ``RuntimeError``), so code that
catches those keeps working. This module imports nothing, so the command line can catch these
errors without importing torch.

>>> issubclass(ConfigError, ValueError) and issubclass(ConfigError, GrpokitError)
True
"""

from __future__ import annotations


class GrpokitError(Exception):
    """An error in what the user gave grpokit; the message says what to fix."""


class ConfigError(GrpokitError, ValueError):
    """A config key or value that is not valid; the message names the key and the source."""


class ImportPathError(ConfigError):
    """A ``package.module:function`` reference that cannot be imported or is not callable."""


class MissingDependencyError(ConfigError):
    """A setting needs an optional package that is not installed; the message names the extra."""


class DatasetError(GrpokitError, ValueError):
    """A data file or row that cannot be used; the message names the file and the row."""


class ModelLoadError(GrpokitError, ValueError):
    """A model path that is not a loadable transformers model directory."""


class RewardFunctionError(GrpokitError, ValueError):
    """A reward function that raised, or returned something other than one finite number or None
    per completion; the message names the function and the sample."""


class CheckpointError(GrpokitError, RuntimeError):
    """A checkpoint that cannot be written, found or loaded; the message names the directory."""


class JudgeError(GrpokitError, RuntimeError):
    """The LLM judge's endpoint failed or answered in a way that cannot be scored."""


class RolloutEngineError(GrpokitError, RuntimeError):
    """A rollout engine failed: a rollout server unreachable or refusing a request."""


class NonFiniteError(GrpokitError, RuntimeError):
    """Too many steps in a row had a NaN/Inf loss or gradient norm."""


class StageStopped(GrpokitError, RuntimeError):
    """A pipeline stage ended early (an alert's stop action), so the pipeline halts after it."""


class RunFilesError(GrpokitError, ValueError):
    """A run directory whose files are missing or malformed (for ``grpokit report``)."""


class Terminated(RuntimeError):
    """This process got SIGTERM under torchrun: torchrun stops every process when one fails."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped at a step boundary after SIGINT (Ctrl-C) or SIGTERM, with a checkpoint.

    A ``KeyboardInterrupt``, so ``except Exception`` in user code does not swallow it.
    """

    def __init__(self, stage: str, step: int, max_steps: int, checkpoint, signal_name: str):
        self.stage, self.step, self.max_steps = stage, step, max_steps
        self.checkpoint, self.signal_name = checkpoint, signal_name
        saved = f"saved {checkpoint}" if checkpoint else "no checkpoint could be saved (non-finite weights)"
        super().__init__(f"{stage} interrupted by {signal_name} at step {step} of {max_steps}; {saved}")
