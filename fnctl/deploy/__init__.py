"""Deploying: the desired state of each function (`desired`), the live state (`live`), their diff and the plan (pure), the session a deploy command runs in (store, lock, actor), and the executor that carries a plan out (build, start, health-check, switch traffic, drain), recording each step in the store before it acts.
"""
