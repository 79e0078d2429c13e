"""Where the time goes (L3): the monitor's samples, the verdict, the admin
endpoints (/status, /metrics), the multi-process merge and the CLI views.

``table`` is the one list of metrics: each row says where a value comes from,
where it shows in /status and /metrics and how processes merge it; the
endpoints and the merge only read it. ``diagnosis`` is pure (observations in,
verdict out); ``monitor`` samples the front end's and the pools' counters once
a second.
"""
