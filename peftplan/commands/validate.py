"""`peftplan validate SUITE`: check a bench suite (schema, files, model, methods) without running it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def validate_command(
    suite: Annotated[Path, typer.Argument(help="The suite YAML file (schema: docs/harness.md, \"The suite\").",
                                          show_default=False)],
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code",
                                                    help="Allow the model's custom code (the suite must ask too).")]
    = False,
) -> None:
    """Check a bench suite without training anything; exit 2 with the field path on the first problem.

    The suite schema, every section and key with an annotated example, is in docs/harness.md
    (sections "The suite" and "Tasks"); the shipped suites/quick.yaml and suites/smoke.yaml are
    working examples, and peftplan/harness/suite.py holds the models that enforce it.
    """
    from peftplan.harness.checks import check_suite
    from peftplan.harness.suite import load_suite
    from peftplan.harness.trust import require_trust_flag

    loaded = load_suite(suite)
    require_trust_flag(loaded, trust_remote_code)
    if loaded.suite.storage.url is not None:  # its form only: validate stays offline
        from peftplan.storage_url import normalize_storage_url

        normalize_storage_url(loaded.suite.storage.url, option="storage.url")
    notes = check_suite(loaded)
    s = loaded.suite
    trials = sum(s.trials_for(entry) for entry in s.methods)
    methods = ", ".join(entry.key for entry in s.methods)
    print(f"{suite}: valid suite {s.name!r} (hash {loaded.hash}): {trials} trials over {methods}")
    for note in notes:
        print(f"  {note}")
