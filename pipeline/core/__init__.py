"""What every stage stands on: configuration, the typed records, the clock, the ledger and its schema, the run lock, logs, token budgets, prompt files and article templates."""
