"""How the agents are chained: the runner that records each stage in the ledger, the stage adapters, the draft stage's research-then-write loop, and the scheduler daemon."""
