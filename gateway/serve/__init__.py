"""Wiring (L3): one process (``process``: pools, app, listeners, monitor,
shutdown), the master of several (``master``: workers, reload generations),
the php-fpm supervisor (``php_fpm``), the signal policy (``signals``) and the
watchdog that stops php-fpm and the workers if the master is killed
(``watchdog``). The only package that knows every other one.
"""
