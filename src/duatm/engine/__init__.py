"""duatm.engine."""
