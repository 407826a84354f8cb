"""One exception type for mistakes in the user's input.

The CLI catches :class:`UserError` and prints its message as a single line with a non-zero exit, so a
user's mistake never ends in a raw traceback. Our own bugs raise anything else and keep their traceback.
"""


class UserError(ValueError):
    """A bad value supplied by the user. The message names the value and what is allowed."""
