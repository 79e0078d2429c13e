"""A request to a backend and its response back (L1), nginx's upstream module.

``pool`` bounds live connections per backend behind a FIFO queue of bounded
depth; ``connect`` opens them (one address parser, ``config.addresses``);
``fastcgi`` is the php-fpm transport (retry only if safe, read deadlines,
spool or stream) with ``cgi`` parsing PHP's response head; ``php_fpm_status``
reads php-fpm's own pages. It never imports ``front``.
"""
