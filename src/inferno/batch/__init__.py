"""The Batch and Files API (OpenAI's ``/v1/files`` and ``/v1/batches``) on a persistent queue.

- ``files.py``: content on disk, content-addressed; uploads streamed there as they arrive;
- ``files_api.py`` / ``batches_api.py`` / ``http.py``: the routes, mounted on the proxy;
- ``validate.py``: an input file, line by line, into queue items (or OpenAI's ``errors``);
- ``runner.py``: workers that claim items under a lease and dispatch them;
- ``supervisor.py``: the status machine's background steps (validate, expire, finalise,
  schedules); ``output.py`` writes the output and error files;
- ``remote.py``, ``worker.py``: dispatch over HTTP, for ``inferno batch worker`` processes;
- ``service.py``: the whole of it for one proxy (routes, supervisor, workers).

It imports the store and the wire layer, never the proxy: what it needs from the proxy
(who a request is, running a request as someone) comes in as the callables of
``types.py``, bound in ``inferno.wiring``.
"""
