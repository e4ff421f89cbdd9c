"""User-facing errors: each is printed as one line by the CLI, with a non-zero exit."""


class NeuligError(Exception):
    """A mistake in the user's input or environment, explained in one line with the fix."""


def unreadable(what: str, err: BaseException, hint: str) -> NeuligError:
    """The one-line error for a file a reader could not read: ``<what> cannot be read (<Type>: <first line>);
    <hint>``. Every reader's failure (truncation, corruption, a foreign format) means the same to the user."""
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return NeuligError(f"{what} cannot be read ({type(err).__name__}: {reason}); {hint}")


def first_line(err: BaseException, limit: int = 200) -> str:
    """``<Type>: <first line of the message>`` (the line cut at ``limit`` characters), or the type alone."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:limit]}" if text else type(err).__name__
