"""Running a role: metrics, status, worker processes, load, reload, logs.

Prometheus metrics (``metrics``) and the HTTP endpoint serving them with the status
(``httpd``, ``statusview``, read back by ``observe``), worker processes (``workers``) and the
load that spreads connections between them (``load``), reloading (``reload``), the process's
run settings (``runtime``), bounded logging (``logonce``, ``loglimit``) and socket errors in
words (``oserrors``).
"""
