"""Independent references: derivative checks, the theorems, the errata, the model run along a path, the
experiments' own routes, heads read from stored tensors, and checkpoint fixtures written without refimpl."""
