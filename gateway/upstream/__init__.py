"""A request to a backend and its response back (L1), nginx's upstream module.

``pool`` bounds live connections per backend behind a FIFO queue of bounded
depth, whatever the protocol (``UpstreamConn``); ``connect`` opens streams (one
address parser, ``config.addresses``); ``exchange`` is the policy every
transport shares (retry only if safe, spool or stream, a streamed body that
holds its slot until closed); ``fastcgi`` is the php-fpm transport, with
``cgi`` parsing PHP's response head; ``http1`` is the HTTP/1.1 transport
(h11's client role) beside it; ``checks`` asks a group's addresses whether
they are up; ``php_fpm_status`` reads php-fpm's own pages. It never imports
``front``.
"""
