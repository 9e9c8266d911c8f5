"""The fleet: signed models (keys.py, manifest.py, trust.py), the install job over MQTT (job.py,
ledger.py, fetch.py, health.py, install.py, swap.py, agent.py) and the rollout controller
(controller.py, view.py, status.py, artifact.py). Their config tables, `[trust]` and `[fleet]`, live
beside the others (edge_resnet/trustconfig.py, edge_resnet/fleetconfig.py): config loading stays pure."""
