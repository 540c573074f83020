"""A chaos soak of the gateway: a deployment like production on one machine, clients of every
kind, producers at a steady rate, faults on a seeded random schedule, and at the end every
client's history checked against the store's log. `python -m chaos --help`; the README's
"Chaos soak" section says what it proves and how it was last run."""
