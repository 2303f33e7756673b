"""The one error shape backends and volume drivers raise."""


class DSComputeError(Exception):
    """A failure with a message meant for the user.

    ``log_message`` carries the detail for the hub log (e.g. the tail of the
    server's log) when it differs from what the user should see.
    """

    def __init__(self, message, *, log_message=None):
        super().__init__(message)
        self.message = message
        self.log_message = log_message or message
