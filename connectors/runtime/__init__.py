"""What every connector process shares, so a connector is only its source: the stop on
SIGINT/SIGTERM (:mod:`.stop`), the error taxonomy (:mod:`.errors`), the one back-off
(:mod:`.backoff`), the runner that owns publish -> flush -> checkpoint (:mod:`.runner`) and the
process around it (:mod:`.process`: topics, health, signals, exit codes)."""
