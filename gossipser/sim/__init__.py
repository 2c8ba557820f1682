"""sim: many peers in one process. The simulator delivers every message (with loss, churn and
stragglers) and records metrics; training runs in the pools of `learn`. Imports `gossip`.
"""
