"""What the benchmarks record about the machine they ran on."""

from __future__ import annotations

#: A 1-minute load average above this (on the 2-core development machine) means other jobs ran
#: beside the benchmark's own threads.
LOADED_ABOVE = 2.5


def loaded(*loads: str) -> bool:
    """Whether any recorded load average (a string whose first field is the 1-minute average, as
    the benchmarks write `os.getloadavg()`) exceeded `LOADED_ABOVE`; an unreadable one counts as
    loaded (the table then says its timings carry a shared machine's load)."""
    for text in loads:
        try:
            if float(str(text).split()[0].rstrip(",")) > LOADED_ABOVE:
                return True
        except (ValueError, IndexError):
            return True
    return False
