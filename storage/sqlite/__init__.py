"""The embedded store: one SQLite file, shared safely by several processes on one machine.

`connection` is the plumbing (one thread per store, transactions, busy retries, background
upkeep), `changelog` the MongoDB-shaped change log and its stream, `store` the `Store`.
"""
