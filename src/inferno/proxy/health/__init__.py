"""Node health: passive outlier detection with circuit breakers, and active checks."""
