"""The exception types for problems a user can fix (bad config, missing data, a full disk, ...)."""


class UserError(Exception):
  """A problem the user can fix; its message says what is wrong and what to do.

  `cifar_jax.main` prints the message as one line, without a traceback, and
  exits with status 1.
  """


class WriteError(UserError):
  """A checkpoint or summary could not be written (disk full, folder removed or read-only).

  Orbax's background threads of a failed asynchronous save keep waiting (up
  to its 10-minute timeout) for signals that will not come, which would hold
  the process at exit; `cifar_jax.main` therefore leaves at once after the
  error line.
  """
