"""Ratios between benchmark rows and the Markdown table that shows them.

A row is a dict; rows that share the values of `group` keys (the same
model and settings) are compared with the row of each reference variant
in that group.
"""

import statistics


def with_ratios(rows, *, value, group, references, lower_is_better=False):
    """`rows` with a `vs <reference>` key added to each row.

    Each ratio is the row's speed relative to the reference variant's row
    of its group: `row[value] / reference[value]`, or the inverse when
    `lower_is_better` (`value` is a time). It is None where the group has
    no such reference row.

    Args:
        rows: list of dicts, each with a `variant` key and `value`.
        value: str, the key compared.
        group: tuple of str, the keys that rows compared must share.
        references: tuple of str, the variants compared against.
        lower_is_better: bool, whether `value` is a time rather than a
            speed. Defaults to `False`.

    Returns:
        A list of new dicts, in the order of `rows`.
    """
    by_group = {
        (tuple(row[key] for key in group), row["variant"]): row[value]
        for row in rows
    }
    result = []
    for row in rows:
        ratios = {}
        for reference in references:
            base = by_group.get((tuple(row[key] for key in group), reference))
            if base is None:
                ratios[f"vs {reference}"] = None
            elif lower_is_better:
                ratios[f"vs {reference}"] = base / row[value]
            else:
                ratios[f"vs {reference}"] = row[value] / base
        result.append(row | ratios)
    return result


def paired_ratio(times, reference_times):
    """How fast a variant runs against a reference, paired by round.

    Each round's ratio is `reference_times[i] / times[i]`: the two epochs
    of a round ran back to back, so a slow spell of the machine falls on
    both, which the ratio of two medians does not ensure.

    Args:
        times: list of float, the variant's epoch times, one per round.
        reference_times: list of float, the reference's, in the same
            rounds.

    Returns:
        `(median, first quartile, third quartile)` of the ratios; the
        quartiles are the median for a single round.
    """
    ratios = [
        reference / time
        for time, reference in zip(times, reference_times, strict=True)
    ]
    median = statistics.median(ratios)
    if len(ratios) == 1:
        return median, median, median
    first, _, third = statistics.quantiles(ratios, n=4)
    return median, first, third


def markdown(rows, columns):
    """A Markdown table of `rows`, one line per row, header first.

    Args:
        rows: list of dicts.
        columns: list of `(header, key, format)`; `format` is a
            `str.format` pattern such as `"{:.2f}"`. A missing or None
            value prints `n/a`.

    Returns:
        The table's lines, without line ends.
    """
    lines = [
        "| " + " | ".join(header for header, _, _ in columns) + " |",
        "|" + " --- |" * len(columns),
    ]
    for row in rows:
        cells = [
            "n/a" if row.get(key) is None else pattern.format(row[key])
            for _, key, pattern in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def machine():
    """One line naming where and when the benchmark ran, read from the
    machine: the UTC time, the CPU model and its logical CPUs (with
    `avx512_bf16` where the CPU has it), the accelerators TensorFlow sees,
    the load average and the versions of TensorFlow and Keras."""
    import datetime
    import os
    import platform

    import keras
    import tensorflow as tf

    model, bf16 = platform.processor() or "unknown CPU", False
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    bf16 = "avx512_bf16" in value.split()
    except OSError:
        pass
    gpus = [
        tf.config.experimental.get_device_details(gpu).get(
            "device_name", gpu.name
        )
        for gpu in tf.config.list_physical_devices("GPU")
    ]
    now = datetime.datetime.now(datetime.UTC)
    return (
        f"{now:%Y-%m-%d %H:%M} UTC, {model} ({os.cpu_count()} logical CPUs"
        f"{', avx512_bf16' if bf16 else ''}), "
        f"{', '.join(gpus) if gpus else 'no GPU'}, load average "
        f"{os.getloadavg()[0]:.1f}, TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}"
    )
