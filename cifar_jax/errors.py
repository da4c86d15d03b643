"""The one exception type for problems a user can fix (bad config, missing data, ...)."""


class UserError(Exception):
  """A problem the user can fix; its message says what is wrong and what to do.

  `cifar_jax.main` prints the message as one line, without a traceback, and
  exits with status 1.
  """
