"""Where the time goes (L3): the monitor's samples, the verdict, the admin
endpoints (/status, /metrics), the multi-process merge and the CLI views.

``diagnosis`` is pure (observations in, verdict out); ``monitor`` samples the
front end's and the pools' counters once a second.
"""
