"""Transitional: the host planner is cms.hostplan now. cms.autoscaler still imports it under
this name until its side of issue 23 switches to cms.hostplan; then this file goes."""

from cms.hostplan import *  # noqa: F401,F403
