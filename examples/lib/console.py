"""What the binaries show: results on stdout, progress on stderr.

A run's results (its tables, its accuracies) go to stdout as plain
Markdown, so that `python -m examples.demo > results.md` keeps them and
nothing else; which model of how many is training, and about how long is
left, goes to stderr. Warnings and errors stay with `absl.logging`.
"""

import sys
import time


def print_table(title, table):
    """Prints `title`, a blank line and the Markdown `table` on stdout."""
    print_result(f"{title}\n\n{table}")


def print_result(text):
    """Prints `text` (lines or a table) on stdout at once, then a blank
    line, which ends a Markdown table before what follows."""
    sys.stdout.write(f"{text.rstrip()}\n\n")
    sys.stdout.flush()


class Progress:
    """Tells on stderr which of `total` steps starts, and the time left.

    Each `step(label)` writes a line such as
    `[3/12] SFT, lambda=0.1 ... (about 1 min 40 s left)`: the time left is
    the mean time of the steps done so far times the steps still to run,
    the one starting included (none is given before a step is done).

    Example:

    ```python
    progress = Progress(len(runs))
    for name, run in runs:
        progress.step(name)
        run()
    ```

    Args:
        total: Int, the number of steps.
        clock: Callable returning seconds, for tests. Defaults to
            `time.monotonic`.
    """

    def __init__(self, total, *, clock=time.monotonic):
        self.total = total
        self._clock = clock
        self._started = None
        self._done = 0

    def step(self, label):
        """Writes the line of the next step, called `label`, to stderr."""
        now = self._clock()
        if self._started is None:
            self._started = now
        else:
            self._done += 1
        line = f"[{self._done + 1}/{self.total}] {label} ..."
        if self._done:
            left = (now - self._started) / self._done
            left *= self.total - self._done
            line += f" (about {format_duration(left)} left)"
        sys.stderr.write(f"{line}\n")
        sys.stderr.flush()


def format_duration(seconds):
    """`"45 s"`, `"1 min 40 s"` (to 10 s) or `"2 h 5 min"` (to the minute)."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    tens = 10 * round(seconds / 10)
    if tens < 3600:
        minutes, seconds = divmod(tens, 60)
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
