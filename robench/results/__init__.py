"""Results: statistics, transport, tables, plots and the CI check; they read only the store."""
