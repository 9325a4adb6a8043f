"""The exceptions that carry edgeopt's exit codes (see DESIGN.md, CONTRACT: exit codes).

A UserError is printed as one line without a traceback; anything else is a bug
and keeps its traceback.
"""


class EdgeoptError(Exception):
    """Base of the errors the CLI turns into an exit code and one message line."""

    exit_code = 2


class UserError(EdgeoptError):
    """Bad usage or bad input: the message names the file / field and says how to fix it."""

    exit_code = 2


class CheckFailed(EdgeoptError):
    """A recipe check (latency, size, accuracy gate) failed; nothing is written.

    Carries the run's report document so the CLI can still print it.
    """

    exit_code = 1

    def __init__(self, message: str, doc: dict | None = None):
        super().__init__(message)
        self.doc = doc


class VerificationError(EdgeoptError):
    """A pass produced a model that fails verification; nothing is written."""

    exit_code = 3


class OutOfMemory(UserError):
    """A pass cannot hold what it needs in the memory this process may still take (edgeopt.graph.activations):
    one line and exit 2, instead of a kernel kill. The pipeline lets it through with the pass's name."""

    exit_code = 2
