"""The one exception type users see: a message that names the problem and the fix."""


class SemsimError(Exception):
    """Bad input or an unmet requirement. The CLI prints ``error: <message>`` on one line and exits with 2."""


class MetricUnavailable(SemsimError):
    """Raised when a metric cannot be built here (e.g. pretrained weights missing); the message says the fix.

    The scoring pipeline skips such a metric with a warning instead of stopping; nothing is filled in for it.
    """
