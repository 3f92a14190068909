"""lm-evaluation-harness's own command line, with the ``flm`` model registered.

    python -m flm.eval.harness --model flm --model_args path=runs/demo --tasks hellaswag --limit 100
    flm eval harness -- --model flm --model_args path=smollm2 --tasks arc_easy

lm-eval 0.4.13 (the newest release) finds models only in its own registry; this wrapper imports the
adapter first. Newer lm-eval versions also load the ``lm_eval.models`` entry point that flm declares, so
there ``lm_eval --model flm ...`` works directly. lm-eval's built-in tasks download their data from the
Hugging Face hub; offline, use ``flm eval bench`` (local data) or ``--include_path`` with local configs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from flm.errors import FlmError
from flm.log import get_logger

log = get_logger(__name__)


def run_harness(argv: Sequence[str]) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        from lm_eval.__main__ import cli_evaluate

        import flm.eval.lm_adapter  # noqa: F401  (registers --model flm)
    except ImportError as e:
        raise FlmError(f"the lm-eval harness is not installed ({e.name} missing): pip install 'flm[eval]'") from None
    saved = sys.argv
    sys.argv = ["lm-eval", *argv]
    try:
        cli_evaluate()
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    except ValueError as e:  # lm-eval's way of refusing its arguments (unknown task, bad model_args, ...)
        raise FlmError(f"lm-eval: {e}") from None
    except ConnectionError as e:  # the datasets library, offline, for a task whose data lives on the hub
        raise FlmError(
            f"lm-eval needs the Hugging Face hub for this task's data ({e}); offline, use `flm eval bench` "
            "(local data) or lm-eval's --include_path with local task configs"
        ) from None
    finally:
        sys.argv = saved
    return 0


def main() -> int:
    try:
        return run_harness(sys.argv[1:])
    except FlmError as e:
        log.error(f"flm eval harness: error: {e}")
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
