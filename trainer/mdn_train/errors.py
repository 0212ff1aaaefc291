"""The trainer's one user-facing error: the CLIs print its message and exit non-zero."""


class TrainerError(Exception):
    """A problem the user can fix (bad data, bad config, missing files); never a bug."""
