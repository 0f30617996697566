"""Progressive rollouts, decided purely: the state machine of a strategy's steps (`machine`), the timeline derived
from it, the latency histograms and windows analysis decides on (`latency`), the A/B statistics, and what routing
weights say (`weights`: the stable revision, for every layer above).

No store, no engine, no clock here: `fnctl.deploy.rolloutdriver` carries the machine's decisions out. Where a
canary's weight change is written: `deploy.rolloutdriver` writes the weights `rollout.machine` decides
(`Store.set_route`), in the same transaction as the rollout's progress and events.
"""
