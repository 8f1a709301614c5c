"""The web dashboard served by the proxy at ``/ui``.

It imports nothing of the proxy: the gateway builds a :class:`~inferno.ui.source.DataSource`
over its own state and mounts :class:`~inferno.ui.app.Dashboard` on its API port.
"""

from inferno.ui.app import Dashboard
from inferno.ui.source import DataSource, RequestFilter, Viewer

__all__ = ["Dashboard", "DataSource", "RequestFilter", "Viewer"]
