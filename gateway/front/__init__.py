"""Socket to ``Request`` and back (L1): listeners, accept, the HTTP/1.1 loop.

The front end owns the client: it accepts within ``max_connections``, parks
idle keep-alive connections without a task (``parking``), reads and checks a
request head and body (``h1``, with ``http.head``), calls a handler, and
writes the ``Response`` at the client's pace. It never imports ``upstream``:
what it knows of a backend is the handler it was given.
"""
