"""User-facing errors: each is printed as one line by the CLI, with a non-zero exit."""


class NeuligError(Exception):
    """A mistake in the user's input or environment, explained in one line with the fix."""
