"""The fleet: signed models (keys.py, manifest.py, trust.py; `[trust]` in trustconfig.py). Later here:
the install job over MQTT and the rollout controller, which call `trust.check_model` like the daemon."""
