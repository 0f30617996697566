"""The gateway (`fnctl serve`): the HTTP app, routing (weights, pinning, stickiness), authentication, the instance pools and their scaling, metrics, the invocation audit, cron, and the client `fnctl invoke` uses to go through a running gateway.
"""
