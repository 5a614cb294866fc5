"""Why a BuildJob cannot go on: one exception per reason a user sees in its status.

Raised anywhere in a reconcile step; `Reconciler.reconcile` is the one place that turns them
into `Failed` with the exception's reason and message.
"""

from . import status as st


class Refusal(Exception):
    """The BuildJob ends Failed with `reason` and this exception's message."""

    reason = st.INVALID_SPEC


class InvalidSpec(Refusal):
    """The spec passed admission but cannot work; the message names the field."""


class ChildLost(Refusal):
    """A child object the BuildJob cannot do without was deleted by someone."""

    reason = st.CHILD_DELETED


class ClassNotFound(Refusal):
    """The BuildJob's EngineClass (or a default one) does not exist."""

    reason = st.ENGINE_CLASS_NOT_FOUND


class ClassRefused(Refusal):
    """The EngineClass does not allow what the BuildJob asks for; the message names the field."""

    reason = st.ENGINE_CLASS_REFUSED


class ForeignObject(Refusal):
    """An object where a child belongs was not made by the operator for this BuildJob: it is
    left alone, and nothing of the BuildJob's (credentials included) goes near it."""

    reason = st.FOREIGN_OBJECT


class NotYet(Exception):
    """A step cannot go on yet, but will soon without anyone's help (say, the job namespace's
    default ServiceAccount appearing): the reconciler tries this BuildJob again after `delay`
    seconds instead of sleeping in a handler."""

    def __init__(self, why: str, delay: float) -> None:
        super().__init__(why)
        self.delay = delay
