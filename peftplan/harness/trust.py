"""Custom model code runs only when the person running peftplan says so, never because a file says so."""

from __future__ import annotations

from peftplan.errors import BadInputError
from peftplan.harness.suite import LoadedSuite


def require_trust_flag(loaded: LoadedSuite, flag: bool, *, where: str = "this suite") -> None:
    """A suite (or a study's published suite) with `model.trust_remote_code: true` needs `--trust-remote-code`.

    Raises:
        BadInputError: the suite asks for custom code and the flag was not given.
    """
    if loaded.suite.model.trust_remote_code and not flag:
        raise BadInputError(
            f"model.trust_remote_code: {where} asks to run the model's custom code; pass --trust-remote-code "
            "to allow it"
        )
