"""A request to a backend and its response back (L1), nginx's upstream module.

``pool`` bounds live connections per backend behind a FIFO queue of bounded
depth, whatever the protocol (``UpstreamConn``); ``connect`` opens streams (one
address parser, ``config.addresses``); ``exchange`` is the policy every
transport shares (retry only if safe, spool or stream, a streamed body that
holds its slot until closed); ``fastcgi`` is the php-fpm transport, with
``cgi`` parsing PHP's response head; ``php_fpm_status`` reads php-fpm's own
pages. An HTTP/1.1 transport will sit beside ``fastcgi``. It never imports
``front``.
"""
