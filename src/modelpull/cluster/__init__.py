"""Cluster pull: every node of a job gets the model, each byte fetched from the store once.

``pull_distributed`` runs on every rank of a job started by torchrun (or any launcher
that sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``); see
``docs/cluster.md``. Importing this package does not import torch: a missing torch is
reported by the pull, as :class:`~modelpull.errors.BackendUnavailableError`.
"""

from modelpull.cluster.options import ClusterOptions
from modelpull.cluster.run import pull_distributed
from modelpull.errors import ClusterError
from modelpull.results import ClusterPullResult

__all__ = ["ClusterError", "ClusterOptions", "ClusterPullResult", "pull_distributed"]
