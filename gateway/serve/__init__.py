"""Wiring (L3): one process (``process``: pools, app, listeners, monitor,
shutdown), the master of several (``master``), and the php-fpm supervisor
(``php_fpm``). The only package that knows every other one.
"""
