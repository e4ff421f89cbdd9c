"""What a clean run's stderr must not contain: warnings (Python's format, or Lightning's, which drops the
category and keeps ``file.py:line: message``) and progress bars (stderr is a pipe under test)."""
import re

WARNING_LINE = re.compile(r"warn|\.py:\d+: ", re.IGNORECASE)


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if WARNING_LINE.search(line)]


def bar_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "━" in line]
