"""Other downloaders' settings, mapped onto modelpull's one config object.

- :mod:`modelpull.compat.tos`: TOS endpoints (native and S3), the ``TOS_*`` variables,
  and the TOS Python SDK's ``TosClientV2(...)`` / ``download_file(...)`` keywords.
- :mod:`modelpull.compat.aibrix`: AIBrix's ``DOWNLOADER_*`` variables, its
  ``--download-extra-config`` and the folder layout its downloader leaves behind.

``docs/tos-mapping.md`` is the table of what each setting becomes. A setting modelpull
cannot honour as given is never dropped in silence: it raises :class:`CompatWarning`
(once per distinct message, as Python's default warning filter does).

The submodules are imported on demand, so ``import modelpull`` costs nothing here.
"""

from __future__ import annotations

__all__ = ["CompatWarning"]


class CompatWarning(UserWarning):
    """A setting from the TOS SDK or AIBrix that modelpull honours differently, or not at all."""
