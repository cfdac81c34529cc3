"""voicelm service."""
