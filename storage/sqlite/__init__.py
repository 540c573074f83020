"""The embedded store: one SQLite file, shared safely by several processes on one machine.

`connection` is the plumbing (one thread per store, transactions, busy retries, background
upkeep), `changelog` the MongoDB-shaped change log and its stream, `store` the `Store`.
`schema` holds the tables and their migration; `documents`, `leases` (and fences), `eventlog`,
`tokens` (resume tokens) and `idempotency` the SQL of each, as functions of the connection that
`store` runs on its thread. Those keep their leading underscore: private to this package, and
tests pick a store's transactions by function name (`_append`, `_acquire_lease`).
"""
