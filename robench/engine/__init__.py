"""The engine: items, cells, grids, executors, the store, training and benchmarks. It reads
plugins only through the registries and their declarations, never by name."""
