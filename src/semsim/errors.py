"""The one exception type users see: a message that names the problem and the fix."""


class SemsimError(Exception):
    """Bad input or an unmet requirement. The CLI prints ``error: <message>`` on one line and exits with 2."""
