"""The one error the lab raises: a sentence a person can act on."""


class LabError(Exception):
    """A lab step failed. ``str(error)`` is a full sentence saying what and why.

    The CLI prints it instead of a traceback; the pytest fixtures use it as the
    skip/fail reason.
    """
