"""The suite a distributed study runs, stored in the study itself so that a worker needs only its URL.

`peftplan bench SUITE --storage URL` publishes the resolved suite (every default filled in) and its hash
as user attributes of each method's study. `peftplan worker --storage URL --study NAME` reads it back:
NAME is the suite name (all its methods' studies) or one study `SUITE/METHOD`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from peftplan.errors import BadInputError, UnknownNameError
from peftplan.harness.suite import LoadedSuite, parse_suite, suite_hash

if TYPE_CHECKING:
    import optuna

SUITE_ATTR = "peftplan_suite"
HASH_ATTR = "peftplan_suite_hash"
SOURCE_ATTR = "peftplan_suite_source"


def publish_suite(study: optuna.Study, loaded: LoadedSuite) -> None:
    """Store the suite in the study, once; a study that already holds another suite is refused.

    Raises:
        BadInputError: the study name is taken by a different suite.
    """
    held = study.user_attrs.get(HASH_ATTR)
    if held == loaded.hash:
        return
    if held is not None:
        raise BadInputError(
            f"study {study.study_name!r} in this storage runs a different suite (hash {held}, this one "
            f"{loaded.hash}); rename the suite or use another database"
        )
    study.set_user_attr(SUITE_ATTR, loaded.normalized())
    study.set_user_attr(HASH_ATTR, loaded.hash)
    study.set_user_attr(SOURCE_ATTR, {"file": str(loaded.source), "dir": str(loaded.base_dir)})


def select_studies(names: list[str], wanted: str) -> list[str]:
    """The study names `wanted` means: itself, or every `wanted/<method>` study.

    Raises:
        UnknownNameError: nothing matches (with a did-you-mean over suite and study names).
    """
    if wanted in names:
        return [wanted]
    chosen = sorted(n for n in names if n.startswith(f"{wanted}/"))
    if chosen:
        return chosen
    suites = {n.split("/", 1)[0] for n in names}
    raise UnknownNameError("study", wanted, [*suites, *names],
                           hint=f"This storage holds: {', '.join(sorted(suites)) or 'no studies'}.")


def load_published_suite(storage: optuna.storages.BaseStorage, wanted: str) -> LoadedSuite:
    """The suite published in the studies `wanted` selects.

    Raises:
        UnknownNameError: no such study.
        BadInputError: the study was not started by `peftplan bench`, or its studies disagree.
    """
    import optuna

    names = optuna.get_all_study_names(storage=storage)
    selected = select_studies(names, wanted)
    hashes = set()
    loaded: LoadedSuite | None = None
    for name in selected:
        attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(name))
        if SUITE_ATTR not in attrs:
            raise BadInputError(f"study {name!r} holds no peftplan suite; start it with `peftplan bench SUITE "
                                f"--storage URL` first")
        data = attrs[SUITE_ATTR]
        if suite_hash(data) != attrs.get(HASH_ATTR):
            raise BadInputError(f"study {name!r}: the stored suite does not match its hash")
        hashes.add(attrs[HASH_ATTR])
        source = attrs.get(SOURCE_ATTR) or {}
        suite = parse_suite(data, origin=f"study {name}")
        loaded = LoadedSuite(suite, Path(source.get("file", name)), Path(source.get("dir", ".")))
    if len(hashes) != 1 or loaded is None:
        raise BadInputError(f"the studies of {wanted!r} hold different suites; give one study SUITE/METHOD")
    return loaded
