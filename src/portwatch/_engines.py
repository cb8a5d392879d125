"""Which engine runs a stage: its compiled extension or its numpy reference.

The capture framing, the decoder and the flow table each have both, chosen
the same way: an argument, else an environment variable (``auto`` is the
compiled one when it was built). A bad value from the environment is an
operator's mistake (one line, exit 2); from an argument, a programming error.
``PORTWATCH_VERBOSE=1`` says once per stage which engine runs, and why the
compiled one cannot.
"""

from __future__ import annotations

import os
import sys

from portwatch.errors import UsageError

__all__ = ["ENGINES", "use_compiled"]

#: The values every stage's setting takes.
ENGINES = ("auto", "compiled", "numpy")


def use_compiled(choice: str | None, *, variable: str, noun: str, stage: str, label: str,
                 built: bool, why_not: str, said: set[str]) -> bool:
    """Whether ``stage`` runs its compiled engine (``label`` names it when it does).

    ``choice=None`` reads ``variable``; ``noun`` words a bad value ("framing
    must be one of ..."); ``built``/``why_not`` say whether the extension
    imported; ``said`` remembers what ``PORTWATCH_VERBOSE=1`` already printed.
    """
    from_env = choice is None
    if choice is None:
        choice = os.environ.get(variable, "auto") or "auto"
    problem = ""
    if choice not in ENGINES:
        problem = f"{noun} must be one of {', '.join(ENGINES)}, not {choice!r}"
    elif choice == "compiled" and not built:
        problem = why_not
    if problem and from_env:  # an operator's setting: one line, exit 2, no traceback
        raise UsageError(f"{variable}: {problem}")
    if problem:
        raise ValueError(problem)
    compiled = built and choice != "numpy"
    if stage not in said and os.environ.get("PORTWATCH_VERBOSE") == "1":
        said.add(stage)
        which = label if compiled else "numpy"
        why = f"; {why_not}" if not built else ""
        print(f"portwatch: {stage}: {which}{why}", file=sys.stderr)
    return compiled
