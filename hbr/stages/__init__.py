"""Stage modules: one per pipeline stage; classify serves stages 2, 3, 5 and 6."""
