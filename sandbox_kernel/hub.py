"""JupyterHub hooks: give each user's single-user server (a rootless supervisor under
LocalProcessSpawner) a cgroup of its own, so its kernels get real memory and pids caps.

In ``jupyterhub_config.py`` (the Hub runs as root)::

    from sandbox_kernel.hub import delegate_cgroups, undelegate_cgroups
    c.Spawner.pre_spawn_hook = delegate_cgroups
    c.Spawner.post_stop_hook = undelegate_cgroups
"""

from __future__ import annotations

import logging

from .launch.cgroup import delegate, undelegate

__all__ = ["delegate_cgroups", "undelegate_cgroups"]

log = logging.getLogger(__name__)


def delegate_cgroups(spawner) -> None:
    """``Spawner.pre_spawn_hook``: ``sandbox-kernel delegate --user <the user>``."""
    name = spawner.user.name
    for path in delegate(name):
        log.info("cgroup %s delegated to %s", path, name)


def undelegate_cgroups(spawner) -> None:
    """``Spawner.post_stop_hook``: remove the user's delegated cgroup and anything left in it."""
    for path in undelegate(spawner.user.name):
        log.info("cgroup %s removed", path)
