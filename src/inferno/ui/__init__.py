"""The web dashboard served by the proxy at ``/ui``.

It imports nothing of the proxy: the gateway builds a :class:`~inferno.api.dashboard.DataSource`
over its own state and mounts :class:`~inferno.ui.app.Dashboard` on its API port.
"""

from inferno.api.dashboard import DataSource, RequestFilter, Viewer
from inferno.ui.app import Dashboard

__all__ = ["Dashboard", "DataSource", "RequestFilter", "Viewer"]
